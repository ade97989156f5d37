//! The flags `rank`, `search`, `eval-subnet` and `export` share: which sub-network of which
//! run, and how one-shot scores are made ([`ScoringOptions`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fairnas_supernet::images::{load_subnet, LoadedSubnet};
use fairnas_supernet::scoring::ScoringOptions;

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

impl SubnetArgs {
    /// Loads the run and recalibrates the path on the run's training data.
    pub fn load(&self) -> Result<LoadedSubnet> {
        Ok(load_subnet(&self.supernet, &self.choices, self.bn_recal_batches, self.data.as_deref())?)
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

impl OneShotArgs {
    pub fn options(&self) -> ScoringOptions {
        ScoringOptions {
            bn_recal_batches: self.bn_recal_batches,
            bn_recal_batch_size: self.bn_recal_batch_size,
            eval_limit: self.eval_limit,
            split: self.split.clone(),
            data: self.data.clone(),
            recal_seed: self.recal_seed,
        }
    }
}
