//! What `fairnas rank` and `fairnas search` share: the one-shot scoring settings (BN
//! recalibration batches, held-out images), the data they load, the per-architecture score
//! cache (`scores.jsonl`, appended as scores come, a torn last line dropped on resume), and the
//! guard that refuses to mix cached results made with other settings.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use fairnas_data::ImageStore;
use fairnas_model::persist::write_atomically;
use fairnas_model::search_space::SearchSpace;
use fairnas_search::ground_truth::digits;
use fairnas_supernet::scoring::{OneShotScore, ScoringBatches};
use fairnas_supernet::trainer::{self, open_split, subset, TrainConfig};
use serde::{Deserialize, Serialize};

/// One sub-network of a trained supernet, with its BN statistics re-estimated
/// (`eval-subnet`, `export`).
#[derive(Args, Debug, Clone)]
pub struct SubnetArgs {
    /// A training checkpoint (checkpoint.safetensors) or its run folder.
    #[arg(long, value_name = "CKPT")]
    pub supernet: PathBuf,
    /// The sub-network: one choice digit per searchable layer (e.g. 12012012).
    #[arg(long, value_name = "DIGITS")]
    pub choices: String,
    /// Re-estimate the sub-network's BN statistics on K training batches first (0: keep the
    /// supernet's running statistics).
    #[arg(long, value_name = "K", default_value_t = 20)]
    pub bn_recal_batches: usize,
    /// Data folder (default: the run's).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

/// A loaded supernet run with one recalibrated path.
pub struct LoadedSubnet {
    pub checkpoint: PathBuf,
    pub supernet: fairnas_supernet::Supernet,
    pub config: TrainConfig,
    pub state: fairnas_supernet::checkpoint::TrainState,
    pub space: SearchSpace,
    pub path: Vec<usize>,
    /// The data folder used (the run's unless --data).
    pub data: PathBuf,
    /// Batches the BN statistics were re-estimated on.
    pub recalibrated: usize,
}

impl SubnetArgs {
    /// Loads the run and recalibrates the path on the run's training data (its batch size and
    /// seed, so every command that recalibrates the same path gets the same statistics).
    pub fn load(&self) -> Result<LoadedSubnet> {
        let checkpoint = if self.supernet.is_dir() {
            trainer::checkpoint_path(&self.supernet)
        } else {
            self.supernet.clone()
        };
        let (supernet, config, state) = trainer::load_run(&checkpoint)?;
        let space = supernet.space().clone();
        let path = space.parse_choices(&self.choices).map_err(anyhow::Error::msg)?;
        let data = self.data.clone().unwrap_or_else(|| config.data.clone());
        let recalibrated = if self.bn_recal_batches > 0 {
            let train = subset(open_split(&data, "train")?, config.train_limit);
            let store = ImageStore::load(&train, fairnas_data::train_loader::DEFAULT_CACHE_BYTES)?;
            let transform = config.transform(&space);
            let batches = self.bn_recal_batches;
            trainer::recalibrate(
                &supernet,
                &path,
                &store,
                &transform,
                config.batch_size,
                batches,
                config.seed,
            )?
        } else {
            0
        };
        Ok(LoadedSubnet { checkpoint, supernet, config, state, space, path, data, recalibrated })
    }
}

/// How every architecture is scored.
#[derive(Args, Debug, Clone)]
pub struct OneShotArgs {
    /// Training batches for each architecture's BN recalibration (0: keep the supernet's
    /// running statistics).
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub bn_recal_batches: usize,
    /// Images per recalibration batch (default: the run's batch size).
    #[arg(long, value_name = "B")]
    pub bn_recal_batch_size: Option<usize>,
    /// Held-out images every architecture is scored on (a fixed subset).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub eval_limit: usize,
    /// Held-out split.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Data folder (default: the supernet run's).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Seed of the recalibration batches (mixed with the run's seed). Scores made with the
    /// same settings are interchangeable between `rank` and `search` runs.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub recal_seed: u64,
}

/// The resolved scoring settings, recorded next to cached scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringSettings {
    pub checkpoint: PathBuf,
    pub checkpoint_sha256: String,
    pub trained_steps: u64,
    pub sampler: String,
    pub space: String,
    pub bn_recal_batches: usize,
    pub bn_recal_batch_size: usize,
    pub eval_limit: usize,
    pub split: String,
    pub data: PathBuf,
    /// Seed of the recalibration batches (`--recal-seed`, mixed with the run's).
    pub seed: u64,
}

impl OneShotArgs {
    pub fn settings(
        &self,
        checkpoint: &Path,
        train: &TrainConfig,
        state: &fairnas_supernet::checkpoint::TrainState,
        space: &SearchSpace,
    ) -> Result<ScoringSettings> {
        Ok(ScoringSettings {
            checkpoint: checkpoint.to_path_buf(),
            checkpoint_sha256: fairnas_cli::convert::sha256_file(checkpoint)?,
            trained_steps: state.step,
            sampler: state.sampler.clone(),
            space: space.name.clone(),
            bn_recal_batches: self.bn_recal_batches,
            bn_recal_batch_size: self.bn_recal_batch_size.unwrap_or(train.batch_size).max(1),
            eval_limit: self.eval_limit,
            split: self.split.clone(),
            data: self.data.clone().unwrap_or_else(|| train.data.clone()),
            seed: self.recal_seed,
        })
    }
}

impl ScoringSettings {
    /// Decodes the recalibration and held-out batches.
    pub fn batches(&self, train: &TrainConfig, space: &SearchSpace) -> Result<ScoringBatches> {
        let transform = train.transform(space);
        let recalibration = if self.bn_recal_batches > 0 {
            let images = subset(open_split(&self.data, "train")?, train.train_limit);
            let store = ImageStore::load(&images, fairnas_data::train_loader::DEFAULT_CACHE_BYTES)?;
            trainer::recalibration_batches(
                &store,
                &transform,
                self.bn_recal_batch_size,
                self.bn_recal_batches,
                train.seed ^ self.seed,
            )?
        } else {
            Vec::new()
        };
        let held_out = subset(open_split(&self.data, &self.split)?, Some(self.eval_limit));
        let store = ImageStore::load(&held_out, fairnas_data::train_loader::DEFAULT_CACHE_BYTES)?;
        Ok(ScoringBatches { recalibration, held_out: trainer::held_out_batches(&store, &transform, 250)? })
    }
}

/// Writes `settings` to `path`, or checks that the ones already there match (fields in
/// `free` may differ: they do not change results, e.g. where the data lives).
pub fn guard_settings<T: Serialize>(path: &Path, settings: &T, free: &[&str]) -> Result<()> {
    let now = serde_json::to_value(settings)?;
    let Ok(text) = std::fs::read_to_string(path) else {
        write_atomically(path, serde_json::to_string_pretty(&now)?.as_bytes())?;
        return Ok(());
    };
    let before: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!("{}: unreadable; remove the folder or pick another --out", path.display())
    })?;
    let mut differing = Vec::new();
    flat_differences("", &before, &now, free, &mut differing);
    if !differing.is_empty() {
        bail!(
            "{} holds results made with other settings: {}; use another --out",
            path.parent().unwrap_or(path).display(),
            differing.join(", ")
        );
    }
    Ok(())
}

fn flat_differences(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    free: &[&str],
    out: &mut Vec<String>,
) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, v) in y {
                if free.contains(&k.as_str()) {
                    continue;
                }
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flat_differences(&name, x.get(k).unwrap_or(&serde_json::Value::Null), v, free, out);
            }
        }
        _ if a != b => out.push(format!("{prefix} (cached {a}, now {b})")),
        _ => {}
    }
}

/// One line of scores.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ScoreLine {
    choices: String,
    #[serde(flatten)]
    score: OneShotScore,
}

/// Per-architecture one-shot scores, persisted as they come.
pub struct ScoreCache {
    path: PathBuf,
    scores: HashMap<String, OneShotScore>,
    file: Option<std::fs::File>,
}

impl ScoreCache {
    /// Reads `path` if it exists. A torn last line (a kill mid-write) is dropped and the file
    /// rewritten without it (atomically), so appends start on a clean line.
    pub fn open(path: &Path) -> Result<Self> {
        let mut scores = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str::<ScoreLine>(line) {
                    Ok(l) => {
                        scores.insert(l.choices, l.score);
                    }
                    Err(_) if i + 1 == lines.len() => {
                        tracing::warn!("{}: dropping a torn last line", path.display());
                        let kept: String = lines[..i].iter().map(|l| format!("{l}\n")).collect();
                        write_atomically(path, kept.as_bytes())?;
                    }
                    Err(e) => bail!("{} line {}: {e}", path.display(), i + 1),
                }
            }
        }
        Ok(ScoreCache { path: path.to_path_buf(), scores, file: None })
    }

    pub fn get(&self, choices: &[usize]) -> Option<OneShotScore> {
        self.scores.get(&digits(choices)).copied()
    }

    /// Records a score, appending it to the file at once.
    pub fn insert(&mut self, choices: &[usize], score: OneShotScore) -> Result<()> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .with_context(|| format!("opening {}", self.path.display()))?;
            self.file = Some(file);
        }
        let line = ScoreLine { choices: digits(choices), score };
        let file = self.file.as_mut().expect("opened above");
        writeln!(file, "{}", serde_json::to_string(&line)?)
            .and_then(|_| file.flush())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.scores.insert(line.choices, score);
        Ok(())
    }
}
