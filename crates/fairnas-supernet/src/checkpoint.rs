//! Training checkpoints: every supernet parameter and running statistic, every momentum buffer,
//! and the training state (step, epoch, seed, sampler, config) in ONE safetensors file, written
//! atomically (temporary file + rename), so a run killed at any moment resumes from the last
//! complete checkpoint. The samplers are pure functions of (seed, step), so these few integers
//! are the whole sampler and RNG state: resuming reproduces an uninterrupted run bit for bit.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::step::Sgd;
use crate::supernet::Supernet;
use crate::trainer::{EpochAccumulator, EpochMetrics};

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer updates made so far (the next step to run).
    pub step: u64,
    pub epoch: u64,
    pub seed: u64,
    /// Sampler name (`strict`, `uniform`, `expectation`, `fixed`).
    pub sampler: String,
    /// The run's configuration as JSON, checked on resume.
    pub config: String,
    /// Metrics of the finished epochs.
    #[serde(default)]
    pub history: Vec<EpochMetrics>,
    /// Running sums of the epoch in progress.
    #[serde(default)]
    pub accumulator: EpochAccumulator,
    /// Processes of the job that trained it (a resume needs as many).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: u64,
}

impl Default for TrainState {
    fn default() -> Self {
        TrainState {
            step: 0,
            epoch: 0,
            seed: 0,
            sampler: String::new(),
            config: String::new(),
            history: Vec::new(),
            accumulator: EpochAccumulator::default(),
            world_size: 1,
        }
    }
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

const STATE_KEY: &str = "fairnas_train_state";

/// Why a checkpoint could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn invalid(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid { path: path.display().to_string(), message: message.into() }
}

/// Writes the checkpoint atomically.
pub fn save(path: &Path, supernet: &Supernet, sgd: &Sgd, state: &TrainState) -> Result<(), CheckpointError> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in supernet.named_vars() {
        tensors.push((format!("param/{name}"), var.as_tensor().clone()));
    }
    let mut momentum: Vec<_> = sgd.momentum.iter().collect();
    momentum.sort_by(|a, b| a.0.cmp(b.0));
    for (name, buf) in momentum {
        tensors.push((format!("momentum/{name}"), buf.clone()));
    }
    let metadata = HashMap::from([(
        STATE_KEY.to_string(),
        serde_json::to_string(state).map_err(|e| invalid(path, e.to_string()))?,
    )]);
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .map_err(|e| invalid(path, e.to_string()))?;
    fairnas_model::persist::write_atomically(path, &bytes)?;
    Ok(())
}

/// Restores a checkpoint into `supernet` and `sgd`; every parameter must be present with its
/// shape, and nothing unknown may be there (a checkpoint of another space is refused).
pub fn load(path: &Path, supernet: &Supernet, sgd: &mut Sgd) -> Result<TrainState, CheckpointError> {
    let bytes = std::fs::read(path)?;
    let state = state_from_bytes(path, &bytes)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let mut problems = Vec::new();
    let mut used = 0;
    for (name, var) in supernet.named_vars() {
        match tensors.get(&format!("param/{name}")) {
            None => problems.push(format!("missing {name}")),
            Some(t) if t.dims() != var.dims() => {
                problems.push(format!("{name} has shape {:?}, the supernet {:?}", t.dims(), var.dims()))
            }
            Some(t) => {
                var.set(&t.to_dtype(var.dtype())?)?;
                used += 1;
            }
        }
    }
    let unexpected: Vec<&String> = tensors
        .keys()
        .filter(|k| {
            k.starts_with("param/") && !supernet.named_vars().any(|(n, _)| **k == format!("param/{n}"))
        })
        .collect();
    for k in &unexpected {
        problems.push(format!("unexpected {k}"));
    }
    if !problems.is_empty() {
        return Err(invalid(path, format!("does not fit this supernet: {}", problems.join("; "))));
    }
    debug_assert!(used > 0);
    sgd.momentum = tensors
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix("momentum/").map(|n| (n.to_string(), t)))
        .collect();
    Ok(state)
}

fn state_from_bytes(path: &Path, bytes: &[u8]) -> Result<TrainState, CheckpointError> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| invalid(path, e.to_string()))?;
    meta.metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| invalid(path, "not a fairnas training checkpoint (no training state)"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| invalid(path, format!("training state: {e}"))))
}

/// The training state of a checkpoint, without loading its tensors into a supernet.
pub fn read_state(path: &Path) -> Result<TrainState, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| invalid(path, e.to_string()))?;
    state_from_bytes(path, &bytes)
}
