//! Deployable files: a network as ONNX ([`fairnas_model::onnx`]) with the input preprocessing
//! it was trained for recorded in the file's metadata. The preprocessing rule of each family
//! ([`crate::evaluate::eval_transform`]) lives on this side of the layers, so the ONNX
//! options that carry it are made here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use fairnas_model::onnx::{self, OnnxError, OnnxOptions, OPSET};
use fairnas_model::spec::ArchSpec;
use fairnas_model::weights::{self, CheckpointSource, WeightsError};
use serde::{Deserialize, Serialize};

use crate::evaluate::eval_transform;

/// ONNX options for `spec`: BN folded or not, and its family's evaluation preprocessing
/// ([`crate::EvalTransform::metadata`]) as metadata.
pub fn onnx_options(spec: &ArchSpec, fold_bn: bool) -> OnnxOptions {
    OnnxOptions { fold_bn, metadata: eval_transform(spec, None, None).metadata() }
}

/// A written ONNX file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnnxFile {
    pub path: PathBuf,
    pub model: String,
    pub bytes: u64,
    pub opset: i64,
    pub nodes: usize,
    pub fold_bn: bool,
    /// The model's `metadata_props`.
    pub metadata: Vec<(String, String)>,
}

impl std::fmt::Display for OnnxFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |key: &str| self.metadata.iter().find(|(k, _)| k == key).map_or("?", |(_, v)| v.as_str());
        write!(
            f,
            "{} -> {}: ONNX opset {}, {} nodes{}, {} bytes; input: resize {} ({}), crop {}, {} normalisation",
            self.model,
            self.path.display(),
            self.opset,
            self.nodes,
            if self.fold_bn { " (BN folded)" } else { "" },
            self.bytes,
            get("preprocessing.resize_shorter_side"),
            get("preprocessing.interpolation"),
            get("preprocessing.center_crop"),
            get("preprocessing.normalization"),
        )
    }
}

/// Why a deployable file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}

/// Writes `spec` with `tensors` (canonical names) to `path` as ONNX, atomically, with the
/// family's preprocessing in its metadata.
pub fn write_onnx(
    spec: &ArchSpec,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    fold_bn: bool,
) -> Result<OnnxFile, OnnxError> {
    let options = onnx_options(spec, fold_bn);
    let model = onnx::export(spec, tensors, &options)?;
    let bytes = onnx::write(path, &model)?;
    let nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
    let metadata = model.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
    Ok(OnnxFile {
        path: path.into(),
        model: spec.name.clone(),
        bytes,
        opset: OPSET,
        nodes,
        fold_bn,
        metadata,
    })
}

/// Reads the weights at `input` (safetensors, a PyTorch checkpoint, or `hf://`; see
/// [`weights::load_tensors`]) for `spec` and writes them as ONNX to `output`.
pub fn convert_to_onnx(
    input: &str,
    output: &Path,
    spec: &ArchSpec,
    source: &CheckpointSource,
    fold_bn: bool,
) -> Result<OnnxFile, DeployError> {
    let tensors = weights::load_tensors(input, spec, source, &Device::Cpu)?;
    Ok(write_onnx(spec, &tensors, output, fold_bn)?)
}
