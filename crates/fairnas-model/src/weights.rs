//! Where a network's weights come from and how they are read: a local file or
//! `hf://owner/repo[@revision]/path/in/repo` (through the Hugging Face cache, downloaded on a
//! miss unless `HF_HUB_OFFLINE=1`; the `hub` feature), then safetensors with canonical names or
//! a PyTorch checkpoint (legacy or zip) converted in memory, decided by the file's first bytes.
//!
//! ```no_run
//! use candle_core::Device;
//! use fairnas_model::selection::ModelSelection;
//! use fairnas_model::weights::{load_network, CheckpointSource};
//!
//! let spec = ModelSelection::named("efficientnet-lite0").resolve().unwrap();
//! let net = load_network("efficientnet-lite0-57934424.pth", &spec, &CheckpointSource::default(), &Device::Cpu)?;
//! # Ok::<(), fairnas_model::weights::WeightsError>(())
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::network::Network;
use crate::pytorch::{convert_state_dict, read_checkpoint, ConvertedWeights, SourceLayout};
use crate::spec::ArchSpec;

/// Why weights could not be loaded; names the file (or hub location).
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{location}: {reason}")]
    Hub { location: String, reason: String },
    #[error("cannot open weights {}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot read safetensors file {}: {source}", path.display())]
    Safetensors { path: PathBuf, source: candle_core::Error },
    #[error("in {}: {source}", path.display())]
    Tensors { path: PathBuf, source: candle_core::Error },
    #[error("reading {}: {source}", path.display())]
    Checkpoint { path: PathBuf, source: crate::pytorch::CheckpointError },
    #[error("converting {} ({container} container) for model {model}: {source}", path.display())]
    Conversion {
        path: PathBuf,
        container: String,
        model: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("writing {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("unknown checkpoint layout: {0}")]
    Layout(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// How to read a PyTorch checkpoint (ignored for safetensors). With the `clap` feature, a
/// `clap::Args` group (`--layout`, `--key`).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct CheckpointSource {
    /// Name layout of a PyTorch checkpoint: auto, fairnas, fairnas-se, efficientnet-pytorch or
    /// canonical.
    #[cfg_attr(feature = "clap", arg(long, default_value = "auto", value_name = "LAYOUT"))]
    pub layout: String,
    /// Checkpoint entry holding the state dict (default: model_state, else state_dict, else the
    /// whole file).
    #[cfg_attr(feature = "clap", arg(long, value_name = "KEY"))]
    pub key: Option<String>,
}

impl Default for CheckpointSource {
    fn default() -> Self {
        CheckpointSource { layout: "auto".into(), key: None }
    }
}

impl CheckpointSource {
    fn layout(&self) -> Result<Option<SourceLayout>, WeightsError> {
        match self.layout.as_str() {
            "auto" => Ok(None),
            other => Ok(Some(other.parse().map_err(WeightsError::Layout)?)),
        }
    }
}

/// Turns a weights location (a path, or `hf://...`) into a local path.
pub fn resolve_location(weights: &str) -> Result<PathBuf, WeightsError> {
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

#[cfg(feature = "hub")]
fn resolve_hub(uri: &str, rest: &str) -> Result<PathBuf, WeightsError> {
    let hub = |reason: String| WeightsError::Hub { location: uri.to_string(), reason };
    let malformed = || hub("expected hf://owner/repo[@revision]/path/to/file".into());
    let mut parts = rest.splitn(3, '/');
    let (Some(owner), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let (repo, revision) = repo.split_once('@').unwrap_or((repo, "main"));
    if owner.is_empty() || repo.is_empty() || file.is_empty() || revision.is_empty() {
        return Err(malformed());
    }
    let repo =
        hf_hub::Repo::with_revision(format!("{owner}/{repo}"), hf_hub::RepoType::Model, revision.into());
    let cache = hf_hub::Cache::from_env();
    if let Some(path) = cache.repo(repo.clone()).get(file) {
        tracing::info!(%uri, path = %path.display(), "weights found in the Hugging Face cache");
        return Ok(path);
    }
    if hub_offline() {
        return Err(hub(format!(
            "not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; download it first or unset HF_HUB_OFFLINE",
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| hub(format!("cannot set up the Hugging Face client: {e}")))?;
    api.repo(repo).get(file).map_err(|e| hub(format!("download failed: {e}")))
}

#[cfg(not(feature = "hub"))]
fn resolve_hub(uri: &str, _rest: &str) -> Result<PathBuf, WeightsError> {
    Err(WeightsError::Hub { location: uri.into(), reason: "built without the `hub` feature".into() })
}

/// What a weights file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    PyTorch,
}

/// Recognises safetensors (8-byte header length, then a JSON object) versus a torch.save file.
pub fn sniff_format(path: &Path) -> Result<WeightsFormat, WeightsError> {
    use std::io::Read;
    let open = |source| WeightsError::Open { path: path.to_path_buf(), source };
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(open)?;
    let n = file.read(&mut head).map_err(open)?;
    Ok(if n == 9 && head[8] == b'{' { WeightsFormat::Safetensors } else { WeightsFormat::PyTorch })
}

/// Reads a PyTorch checkpoint and maps it onto `spec`'s canonical names.
pub fn convert_checkpoint(
    path: &Path,
    spec: &ArchSpec,
    source: &CheckpointSource,
) -> Result<ConvertedWeights, WeightsError> {
    let layout = source.layout()?;
    let failed = |source| WeightsError::Checkpoint { path: path.to_path_buf(), source };
    let checkpoint = read_checkpoint(path).map_err(failed)?;
    let state_dict = checkpoint.state_dict(source.key.as_deref()).map_err(failed)?;
    convert_state_dict(state_dict, spec, layout).map_err(|source| WeightsError::Conversion {
        path: path.to_path_buf(),
        container: checkpoint.container.to_string(),
        model: spec.name.clone(),
        source,
    })
}

/// Loads weights for `spec` as f32 candle tensors with canonical names, checked against the spec.
pub fn load_tensors(
    weights: &str,
    spec: &ArchSpec,
    source: &CheckpointSource,
    device: &Device,
) -> Result<HashMap<String, Tensor>, WeightsError> {
    let path = resolve_location(weights)?;
    match sniff_format(&path)? {
        WeightsFormat::Safetensors => {
            let tensors = candle_core::safetensors::load(&path, device)
                .map_err(|source| WeightsError::Safetensors { path: path.clone(), source })?;
            let tensors = tensors
                .into_iter()
                .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
                .collect::<candle_core::Result<HashMap<_, _>>>()?;
            Network::check_tensors(spec, &tensors)
                .map_err(|source| WeightsError::Tensors { path, source })?;
            Ok(tensors)
        }
        WeightsFormat::PyTorch => {
            let converted = convert_checkpoint(&path, spec, source)?;
            tracing::info!(layout = %converted.layout, tensors = converted.tensors.len(), "checkpoint converted in memory");
            Ok(converted.to_candle(DType::F32, device)?)
        }
    }
}

/// Builds the network for `spec` from the weights at `weights`.
pub fn load_network(
    weights: &str,
    spec: &ArchSpec,
    source: &CheckpointSource,
    device: &Device,
) -> Result<Network, WeightsError> {
    let tensors = load_tensors(weights, spec, source, device)?;
    Ok(Network::load(spec, VarBuilder::from_tensors(tensors, DType::F32, device))?)
}

/// What [`convert_file`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conversion {
    pub dropped_num_batches_tracked: usize,
    pub input: PathBuf,
    pub layout: String,
    pub model: String,
    pub output: PathBuf,
    /// Learnable parameters (every tensor but the BN running statistics).
    pub parameters: usize,
    pub source_sha256: String,
    pub tensors: usize,
}

impl std::fmt::Display for Conversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}: model {}, layout {}, {} tensors ({} learnable parameters), {} num_batches_tracked dropped",
            self.input.display(),
            self.output.display(),
            self.model,
            self.layout,
            self.tensors,
            self.parameters,
            self.dropped_num_batches_tracked
        )
    }
}

/// Converts the PyTorch checkpoint at `input` (a path or `hf://...`) for `spec` into a
/// safetensors file with canonical names at `output`, recording its source and SHA-256.
pub fn convert_file(
    input: &str,
    output: &Path,
    spec: &ArchSpec,
    source: &CheckpointSource,
) -> Result<Conversion, WeightsError> {
    let input = resolve_location(input)?;
    let sha256 = crate::persist::sha256_file(&input)
        .map_err(|source| WeightsError::Open { path: input.clone(), source })?;
    let converted = convert_checkpoint(&input, spec, source)?;
    let parameters: usize = converted
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
        .write_safetensors(output, metadata)
        .map_err(|e| WeightsError::Write { path: output.to_path_buf(), reason: e.to_string() })?;
    Ok(Conversion {
        dropped_num_batches_tracked: converted.dropped_counters,
        input,
        layout: converted.layout.to_string(),
        model: spec.name.clone(),
        output: output.to_path_buf(),
        parameters,
        source_sha256: sha256,
        tensors: converted.tensors.len(),
    })
}
