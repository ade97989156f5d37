//! Stand-alone ground truth of a benchmark: NAS-Bench-Macro's JSON (docs/FAIRNAS.md section 7), a map
//! from the choice digits of every sub-network to its stand-alone accuracy, params and FLOPs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fairnas_model::search_space::SearchSpace;
use serde::Deserialize;

/// One architecture's stand-alone results.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GroundTruthEntry {
    /// Mean test accuracy over the benchmark's runs, in percent.
    pub mean_acc: f64,
    #[serde(default)]
    pub std: f64,
    pub params: u64,
    /// The benchmark's FLOPs (conv + FC multiply-adds).
    pub flops: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GroundTruthError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a ground-truth JSON object of {{\"<digits>\": {{\"mean_acc\", \"params\", \"flops\"}}}}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: key '{key}' is not a sub-network of the {space} space: {why}")]
    Key { path: PathBuf, key: String, space: String, why: Box<fairnas_model::search_space::SpaceError> },
    #[error("{path}: no entry for sub-network {key} of the {space} space")]
    Missing { path: PathBuf, key: String, space: String },
}

/// A benchmark's ground truth, keyed by choice vectors.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    pub path: PathBuf,
    entries: BTreeMap<Vec<usize>, GroundTruthEntry>,
}

impl GroundTruth {
    /// Reads `path` and checks every key against `space`.
    pub fn load(path: &Path, space: &SearchSpace) -> Result<Self, GroundTruthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| GroundTruthError::Read { path: path.into(), source })?;
        let raw: BTreeMap<String, GroundTruthEntry> = serde_json::from_str(&text)
            .map_err(|source| GroundTruthError::Parse { path: path.into(), source })?;
        let mut entries = BTreeMap::new();
        for (key, entry) in raw {
            let choices = space.parse_choices(&key).map_err(|why| GroundTruthError::Key {
                path: path.into(),
                key: key.clone(),
                space: space.name.clone(),
                why: Box::new(why),
            })?;
            entries.insert(choices, entry);
        }
        Ok(GroundTruth { path: path.into(), entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, choices: &[usize]) -> Option<&GroundTruthEntry> {
        self.entries.get(choices)
    }

    /// The entry of `choices`, or an error naming the missing key.
    pub fn require(
        &self,
        space: &SearchSpace,
        choices: &[usize],
    ) -> Result<&GroundTruthEntry, GroundTruthError> {
        self.get(choices).ok_or_else(|| GroundTruthError::Missing {
            path: self.path.clone(),
            key: digits(choices),
            space: space.name.clone(),
        })
    }
}

/// A choice vector as text (`[1, 2, 0]` -> `"120"`; comma-separated past 9).
pub fn digits(choices: &[usize]) -> String {
    fairnas_model::search_space::format_choices(choices)
}
