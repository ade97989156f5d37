//! One sub-network of a trained supernet as a stand-alone model: its inherited weights under
//! canonical names (`weights.safetensors`, loadable by `fairnas-model`'s network) and a
//! description of where they came from (`model.json`, [`ModelDescription`]), and on request the
//! network as ONNX (`model.onnx`) for other runtimes.

use std::path::{Path, PathBuf};

use fairnas_model::cost::cost_report;
use fairnas_model::network::Network;
use fairnas_model::onnx::OnnxOptions;
use fairnas_model::persist::write_atomically;
use fairnas_model::search_space::{format_choices, SearchSpace};
use fairnas_supernet::checkpoint::TrainState;
use fairnas_supernet::Supernet;
use serde::{Deserialize, Serialize};

use crate::one_shot::block_strings;
use crate::SearchError;

/// `model.json`: what an exported model is and how to use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDescription {
    pub blocks: String,
    pub bn_recal_batches: usize,
    pub choices: String,
    pub madds: u64,
    /// The `fairnas` model flags that rebuild the architecture (`--space X --choices Y`).
    pub model_flags: String,
    pub params: u64,
    pub sampler: String,
    pub space: String,
    pub supernet: PathBuf,
    pub supernet_steps: u64,
    pub weights: PathBuf,
    /// The network as ONNX, when exported with ONNX options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<PathBuf>,
}

/// One line: the model, its cost, the recalibration, and where its weights are.
impl std::fmt::Display for ModelDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({} params, {} multiply-adds, BN recalibrated on {} batches) -> {}",
            self.space,
            self.choices,
            self.params,
            self.madds,
            self.bn_recal_batches,
            self.weights.display()
        )?;
        match &self.onnx {
            Some(onnx) => write!(f, ", {}", onnx.display()),
            None => Ok(()),
        }
    }
}

/// What a sub-network is exported from.
pub struct ExportSource<'a> {
    pub supernet: &'a Supernet,
    pub space: &'a SearchSpace,
    pub checkpoint: &'a Path,
    pub state: &'a TrainState,
    /// BN recalibration batches its statistics were re-estimated on.
    pub recalibrated: usize,
}

#[cfg(feature = "images")]
impl<'a> From<&'a fairnas_supernet::images::LoadedSubnet> for ExportSource<'a> {
    fn from(l: &'a fairnas_supernet::images::LoadedSubnet) -> Self {
        ExportSource {
            supernet: &l.supernet,
            space: &l.space,
            checkpoint: &l.checkpoint,
            state: &l.state,
            recalibrated: l.recalibrated,
        }
    }
}

/// Writes `path`'s weights and description into `out`, and with `onnx` options also the
/// network as `model.onnx` (`fairnas-data`'s `deploy::onnx_options` records the
/// preprocessing).
pub fn export_subnet(
    from: &ExportSource,
    path: &[usize],
    out: &Path,
    onnx: Option<&OnnxOptions>,
) -> Result<ModelDescription, SearchError> {
    let spec = from.space.subnet(path)?;
    let weights = from.supernet.subnet_weights(path).map_err(|source| SearchError::Export { source })?;
    // What `info`, `predict` and `train` will load must be exactly the spec's tensors.
    Network::check_tensors(&spec, &weights).map_err(|source| SearchError::Export { source })?;
    std::fs::create_dir_all(out).map_err(|source| SearchError::Io { path: out.into(), source })?;
    let weights_path = out.join("weights.safetensors");
    let bytes = safetensors::serialize(weights.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| SearchError::Export { source: candle_core::Error::msg(e) })?;
    write_atomically(&weights_path, &bytes)
        .map_err(|source| SearchError::Io { path: weights_path.clone(), source })?;
    let onnx = match onnx {
        Some(options) => {
            let file = out.join("model.onnx");
            fairnas_model::onnx::write(&file, &fairnas_model::onnx::export(&spec, &weights, options)?)?;
            Some(file)
        }
        None => None,
    };
    let cost = cost_report(&spec);
    let choices = format_choices(path);
    let model_flags = match from.space.name.as_str() {
        "fairnas" => format!("--choices {choices}"),
        name => format!("--space {name} --choices {choices}"),
    };
    let description = ModelDescription {
        space: from.space.name.clone(),
        blocks: block_strings(from.space, path)?,
        choices,
        params: cost.params,
        madds: cost.madds,
        weights: weights_path,
        onnx,
        model_flags,
        supernet: from.checkpoint.to_path_buf(),
        supernet_steps: from.state.step,
        sampler: from.state.sampler.clone(),
        bn_recal_batches: from.recalibrated,
    };
    let json = out.join("model.json");
    let text = serde_json::to_string_pretty(&description).expect("description serialises");
    write_atomically(&json, text.as_bytes()).map_err(|source| SearchError::Io { path: json, source })?;
    Ok(description)
}
