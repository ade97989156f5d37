//! `--weights`: where a command's weights come from and how they are read.
//!
//! A weights argument is a local file or `hf://owner/repo[@revision]/path/in/repo`, resolved
//! through the Hugging Face cache (downloaded on a miss unless `HF_HUB_OFFLINE=1`). The file's
//! first bytes decide how it is read: safetensors with canonical names, or a PyTorch checkpoint
//! (legacy or zip) converted in memory exactly as `cargo xtask convert` would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Args;
use fairnas_model::network::Network;
use fairnas_model::pytorch::{convert_state_dict, read_checkpoint, ConvertedWeights, SourceLayout};
use fairnas_model::spec::ArchSpec;

/// The weight options every command that loads weights shares.
#[derive(Args, Debug, Clone)]
pub struct WeightsArgs {
    /// Weights: a .safetensors file (canonical names), a PyTorch checkpoint (.pth, .pth.tar;
    /// converted in memory), or hf://owner/repo[@revision]/path from the Hugging Face Hub.
    #[arg(long, value_name = "FILE|hf://owner/repo/path")]
    pub weights: String,
    #[command(flatten)]
    pub source: CheckpointSource,
}

/// How to read a PyTorch checkpoint (ignored for safetensors).
#[derive(Args, Debug, Clone, Default)]
pub struct CheckpointSource {
    /// Name layout of a PyTorch checkpoint: auto, fairnas, fairnas-se, efficientnet-pytorch or
    /// canonical.
    #[arg(long, default_value = "auto", value_name = "LAYOUT")]
    pub layout: String,
    /// Checkpoint entry holding the state dict (default: model_state, else state_dict, else the
    /// whole file).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

impl CheckpointSource {
    fn layout(&self) -> Result<Option<SourceLayout>> {
        if self.layout == "auto" {
            Ok(None)
        } else {
            Ok(Some(self.layout.parse().map_err(anyhow::Error::msg)?))
        }
    }
}

/// Turns a `--weights` argument into a local path.
pub fn resolve_location(weights: &str) -> Result<PathBuf> {
    match weights.strip_prefix("hf://") {
        Some(rest) => resolve_hub(weights, rest),
        None => Ok(PathBuf::from(weights)),
    }
}

/// Whether `HF_HUB_OFFLINE` asks for the Hugging Face cache only.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn resolve_hub(uri: &str, rest: &str) -> Result<PathBuf> {
    let mut parts = rest.splitn(3, '/');
    let (Some(owner), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("{uri}: expected hf://owner/repo[@revision]/path/to/file");
    };
    let (repo, revision) = repo.split_once('@').unwrap_or((repo, "main"));
    if owner.is_empty() || repo.is_empty() || file.is_empty() || revision.is_empty() {
        bail!("{uri}: expected hf://owner/repo[@revision]/path/to/file");
    }
    let repo =
        hf_hub::Repo::with_revision(format!("{owner}/{repo}"), hf_hub::RepoType::Model, revision.into());
    let cache = hf_hub::Cache::from_env();
    if let Some(path) = cache.repo(repo.clone()).get(file) {
        tracing::info!(%uri, path = %path.display(), "weights found in the Hugging Face cache");
        return Ok(path);
    }
    if hub_offline() {
        bail!(
            "{uri}: not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; download it first or unset HF_HUB_OFFLINE",
            cache.path().display()
        );
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .with_context(|| format!("{uri}: cannot set up the Hugging Face client"))?;
    api.repo(repo).get(file).with_context(|| format!("{uri}: download failed"))
}

/// What a weights file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    PyTorch,
}

/// Recognises safetensors (8-byte header length, then a JSON object) versus a torch.save file.
pub fn sniff_format(path: &Path) -> Result<WeightsFormat> {
    use std::io::Read;
    let mut head = [0u8; 9];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open weights {}", path.display()))?;
    let n = file.read(&mut head).with_context(|| format!("cannot read weights {}", path.display()))?;
    if n == 9 && head[8] == b'{' {
        Ok(WeightsFormat::Safetensors)
    } else {
        Ok(WeightsFormat::PyTorch)
    }
}

/// Reads a PyTorch checkpoint and maps it onto `spec`'s canonical names.
pub fn convert_checkpoint(
    path: &Path,
    spec: &ArchSpec,
    source: &CheckpointSource,
) -> Result<ConvertedWeights> {
    let layout = source.layout()?;
    let checkpoint = read_checkpoint(path).with_context(|| format!("reading {}", path.display()))?;
    let state_dict = checkpoint
        .state_dict(source.key.as_deref())
        .with_context(|| format!("reading {}", path.display()))?;
    convert_state_dict(state_dict, spec, layout).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| {
        format!("converting {} ({} container) for model {}", path.display(), checkpoint.container, spec.name)
    })
}

/// Loads weights for `spec` as f32 candle tensors with canonical names, checked against the spec.
pub fn load_tensors(args: &WeightsArgs, spec: &ArchSpec, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = resolve_location(&args.weights)?;
    let tensors = match sniff_format(&path)? {
        WeightsFormat::Safetensors => {
            let tensors = candle_core::safetensors::load(&path, device)
                .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
            let tensors = tensors
                .into_iter()
                .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
                .collect::<Result<HashMap<_, _>>>()?;
            Network::check_tensors(spec, &tensors).with_context(|| format!("in {}", path.display()))?;
            tensors
        }
        WeightsFormat::PyTorch => {
            let converted = convert_checkpoint(&path, spec, &args.source)?;
            tracing::info!(layout = %converted.layout, tensors = converted.tensors.len(), "checkpoint converted in memory");
            converted.to_candle(DType::F32, device)?
        }
    };
    Ok(tensors)
}

/// Builds the network for `spec` from `--weights`.
pub fn load_network(args: &WeightsArgs, spec: &ArchSpec, device: &Device) -> Result<Network> {
    let tensors = load_tensors(args, spec, device)?;
    Ok(Network::load(spec, VarBuilder::from_tensors(tensors, DType::F32, device))?)
}
