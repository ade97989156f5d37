//! `fairnas convert`: a PyTorch checkpoint to a safetensors file with canonical names
//! ([`fairnas_model::weights::convert_file`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::weights::CheckpointSource;
use fairnas_model::selection::ModelSelection;

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// The PyTorch checkpoint (legacy or zip torch.save file), or hf://owner/repo/path.
    #[arg(long, value_name = "FILE")]
    pub input: String,
    /// Where to write the safetensors file (written atomically).
    #[arg(long, value_name = "FILE.safetensors")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelSelection,
    #[command(flatten)]
    pub source: CheckpointSource,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let spec = args.model.resolve()?;
    let c = fairnas_model::weights::convert_file(&args.input, &args.output, &spec, &args.source.options())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        println!(
            "{} -> {}: model {}, layout {}, {} tensors ({} learnable parameters), {} num_batches_tracked dropped",
            c.input.display(),
            c.output.display(),
            c.model,
            c.layout,
            c.tensors,
            c.parameters,
            c.dropped_num_batches_tracked
        );
    }
    Ok(())
}
