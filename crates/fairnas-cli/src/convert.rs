//! `convert`: a PyTorch checkpoint to a safetensors file with canonical names (shared by
//! `cargo xtask convert` and `fairnas convert`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sha2::{Digest, Sha256};

use crate::model_args::ModelArgs;
use crate::weights::{convert_checkpoint, resolve_location, CheckpointSource};

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// The PyTorch checkpoint (legacy or zip torch.save file), or hf://owner/repo/path.
    #[arg(long, value_name = "FILE")]
    pub input: String,
    /// Where to write the safetensors file (written atomically).
    #[arg(long, value_name = "FILE.safetensors")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub source: CheckpointSource,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let spec = args.model.resolve()?;
    let input = resolve_location(&args.input)?;
    let sha256 = sha256_file(&input)?;
    let converted = convert_checkpoint(&input, &spec, &args.source)?;
    let params: usize = converted
        .tensors
        .iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .map(|(_, t)| t.numel())
        .sum();
    let metadata = HashMap::from([
        ("source".to_string(), input.file_name().unwrap_or_default().to_string_lossy().into_owned()),
        ("source_sha256".to_string(), sha256.clone()),
        ("layout".to_string(), converted.layout.to_string()),
        ("model".to_string(), spec.name.clone()),
        ("converter".to_string(), format!("fairnas-rs {}", env!("CARGO_PKG_VERSION"))),
    ]);
    converted
        .write_safetensors(&args.output, metadata)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", args.output.display()))?;
    if args.json {
        let summary = serde_json::json!({
            "input": input.display().to_string(),
            "output": args.output.display().to_string(),
            "model": spec.name,
            "layout": converted.layout.to_string(),
            "tensors": converted.tensors.len(),
            "dropped_num_batches_tracked": converted.dropped_counters,
            "parameters": params,
            "source_sha256": sha256,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} -> {}: model {}, layout {}, {} tensors ({} learnable parameters), {} num_batches_tracked dropped",
            input.display(),
            args.output.display(),
            spec.name,
            converted.layout,
            converted.tensors.len(),
            params,
            converted.dropped_counters
        );
    }
    Ok(())
}
