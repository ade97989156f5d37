//! One-shot scoring of many sub-networks: BN recalibration on fixed training batches, then
//! accuracy and loss on fixed held-out batches, with work shared between sub-networks.
//!
//! **Why sharing is exact.** After recalibration, a sub-network's activations at layer `l`
//! (on the recalibration batches and on the held-out batches) depend only on its choices at
//! layers `0..l`: every BN before `l` was re-estimated from inputs that themselves depend only
//! on that prefix. Scoring sub-networks in lexicographic order and keeping the activations of
//! the current prefix therefore computes each shared prefix once, with the same operations in
//! the same order as [`Supernet::recalibrate_bn`] followed by an eval-mode forward would (a test
//! checks the logits bit for bit). Over NAS-Bench-Macro's 3969 architectures this runs about
//! 3^8 + 3^7 + ... layer evaluations instead of 3969 x 8.

use std::path::{Path, PathBuf};

use candle_core::{Result, Tensor};
use fairnas_model::search_space::SearchSpace;
use serde::{Deserialize, Serialize};

use crate::checkpoint::TrainState;
use crate::supernet::{Mode, Part, Supernet};
use crate::trainer::{TrainConfig, TrainError};

/// How every architecture is scored: BN recalibration and the held-out images.
/// With the `clap` feature, a `clap::Args` group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ScoringOptions {
    /// Training batches for each architecture's BN recalibration (0: keep the supernet's
    /// running statistics).
    #[cfg_attr(feature = "clap", arg(long, value_name = "K", default_value_t = 4))]
    pub bn_recal_batches: usize,
    /// Images per recalibration batch (default: the run's batch size).
    #[cfg_attr(feature = "clap", arg(long, value_name = "B"))]
    pub bn_recal_batch_size: Option<usize>,
    /// Held-out images every architecture is scored on (a fixed subset).
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", default_value_t = 1000))]
    pub eval_limit: usize,
    /// Held-out split of the data folder.
    #[cfg_attr(feature = "clap", arg(long, default_value = "test"))]
    pub split: String,
    /// Data folder (default: the supernet run's).
    #[cfg_attr(feature = "clap", arg(long, value_name = "DIR"))]
    pub data: Option<PathBuf>,
    /// Seed of the recalibration batches (mixed with the run's seed). Scores made with the
    /// same settings are interchangeable between rankings and searches.
    #[cfg_attr(feature = "clap", arg(long, value_name = "S", default_value_t = 0))]
    pub recal_seed: u64,
}

impl Default for ScoringOptions {
    fn default() -> Self {
        ScoringOptions {
            bn_recal_batches: 4,
            bn_recal_batch_size: None,
            eval_limit: 1000,
            split: "test".into(),
            data: None,
            recal_seed: 0,
        }
    }
}

/// The resolved scoring settings, recorded next to cached scores: scores made with equal
/// settings are interchangeable between rankings and searches.
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
    /// Seed of the recalibration batches (mixed with the run's).
    pub seed: u64,
}

impl ScoringOptions {
    /// The settings of scoring the run whose checkpoint is `checkpoint`.
    pub fn settings(
        &self,
        checkpoint: &Path,
        train: &TrainConfig,
        state: &TrainState,
        space: &SearchSpace,
    ) -> std::result::Result<ScoringSettings, TrainError> {
        let checkpoint_sha256 = fairnas_model::persist::sha256_file(checkpoint)
            .map_err(|source| TrainError::Io { path: checkpoint.to_path_buf(), source })?;
        Ok(ScoringSettings {
            checkpoint: checkpoint.to_path_buf(),
            checkpoint_sha256,
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

/// The fixed data every sub-network is scored on.
#[derive(Debug, Clone)]
pub struct ScoringBatches {
    /// Training batches for BN recalibration (empty: keep the supernet's running statistics).
    pub recalibration: Vec<Tensor>,
    /// Held-out images and their labels.
    pub held_out: Vec<(Tensor, Vec<u32>)>,
}

impl ScoringBatches {
    pub fn held_out_images(&self) -> usize {
        self.held_out.iter().map(|(_, labels)| labels.len()).sum()
    }
}

/// A sub-network's one-shot result on the held-out batches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OneShotScore {
    pub correct: usize,
    pub images: usize,
    /// Mean cross-entropy (a finer-grained score than accuracy on few images).
    pub loss: f64,
}

impl OneShotScore {
    pub fn top1(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }

    /// Correct predictions and summed cross-entropy of `logits` `[n, classes]` against `labels`.
    pub fn of_logits(logits: &Tensor, labels: &[u32]) -> Result<OneShotScore> {
        let rows = logits.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
        if rows.len() != labels.len() {
            candle_core::bail!("{} logit rows for {} labels", rows.len(), labels.len());
        }
        let (mut correct, mut loss) = (0, 0.0);
        for (row, &label) in rows.iter().zip(labels) {
            let label = label as usize;
            let Some(&target) = row.get(label) else {
                candle_core::bail!("label {label} out of range for {} classes", row.len());
            };
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let log_sum = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += log_sum - target;
            // argmax, first index on ties (as candle's argmax)
            let best = row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
            correct += usize::from(best == label);
        }
        Ok(OneShotScore { correct, images: labels.len(), loss: loss / labels.len().max(1) as f64 })
    }

    fn merge(self, other: OneShotScore) -> OneShotScore {
        let images = self.images + other.images;
        let loss = (self.loss * self.images as f64 + other.loss * other.images as f64) / images.max(1) as f64;
        OneShotScore { correct: self.correct + other.correct, images, loss }
    }
}

/// Activations of one prefix on both sets of batches.
struct Activations {
    recalibration: Vec<Tensor>,
    held_out: Vec<Tensor>,
}

/// Scores sub-networks one after another, reusing the activations of the longest prefix shared
/// with the previous one. Score them in lexicographic order for the most sharing. Changes the
/// supernet's BN running statistics (they end as the last sub-network's).
pub struct PrefixScorer<'a> {
    supernet: &'a Supernet,
    batches: &'a ScoringBatches,
    stem: Option<Activations>,
    /// Choice and activations after each layer of the current prefix.
    prefix: Vec<(usize, Activations)>,
    /// Searchable-layer evaluations run so far (the sharing shows as fewer of these).
    pub layer_evaluations: u64,
}

impl<'a> PrefixScorer<'a> {
    pub fn new(supernet: &'a Supernet, batches: &'a ScoringBatches) -> Self {
        PrefixScorer { supernet, batches, stem: None, prefix: Vec::new(), layer_evaluations: 0 }
    }

    /// Recalibrates `part`'s BN statistics on `input`'s recalibration activations (batch by
    /// batch, as [`Supernet::recalibrate_bn`] does), then runs the held-out ones in eval mode.
    fn advance(
        &self,
        part: Part,
        input: &Activations,
        forward: impl Fn(&Tensor, Mode) -> Result<Tensor>,
    ) -> Result<Activations> {
        if !input.recalibration.is_empty() {
            self.supernet.reset_part_bn_stats(part)?;
        }
        let recalibration = input
            .recalibration
            .iter()
            .enumerate()
            .map(|(batch, x)| Ok(forward(x, Mode::Recalibrate { batch })?.detach()))
            .collect::<Result<Vec<_>>>()?;
        let held_out = input.held_out.iter().map(|x| forward(x, Mode::Eval)).collect::<Result<Vec<_>>>()?;
        Ok(Activations { recalibration, held_out })
    }

    pub fn score(&mut self, path: &[usize]) -> Result<OneShotScore> {
        let net = self.supernet;
        net.space().check(path).map_err(candle_core::Error::msg)?;
        if self.stem.is_none() {
            let images = Activations {
                recalibration: self.batches.recalibration.iter().map(Tensor::detach).collect(),
                held_out: self.batches.held_out.iter().map(|(x, _)| x.detach()).collect(),
            };
            self.stem = Some(self.advance(Part::Stem, &images, |x, m| net.forward_stem(x, m))?);
        }
        let shared = self.prefix.iter().zip(path).take_while(|((c, _), p)| c == *p).count();
        self.prefix.truncate(shared);
        for (layer, &choice) in path.iter().enumerate().skip(shared) {
            let input = match layer {
                0 => self.stem.as_ref().expect("stem computed above"),
                _ => &self.prefix[layer - 1].1,
            };
            let part = Part::Layer { layer, choice };
            let out = self.advance(part, input, |x, m| net.forward_layer(layer, choice, x, m))?;
            self.layer_evaluations += 1;
            self.prefix.push((choice, out));
        }
        let last = match self.prefix.last() {
            Some((_, a)) => a,
            None => self.stem.as_ref().expect("stem computed above"),
        };
        let logits = self.advance(Part::Head, last, |x, m| net.forward_head(x, m))?;
        let mut total = OneShotScore { correct: 0, images: 0, loss: 0.0 };
        for (l, (_, labels)) in logits.held_out.iter().zip(&self.batches.held_out) {
            total = total.merge(OneShotScore::of_logits(l, labels)?);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use fairnas_model::search_space::SearchSpace;

    fn batches(recal: usize) -> Result<ScoringBatches> {
        let dev = Device::Cpu;
        let image = |seed: u64| {
            let n = 3 * 32 * 32 * 3;
            let v: Vec<f32> =
                (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0).collect();
            Tensor::from_vec(v, (3, 3, 32, 32), &dev)
        };
        Ok(ScoringBatches {
            recalibration: (0..recal).map(|b| image(b as u64)).collect::<Result<_>>()?,
            held_out: vec![(image(10)?, vec![1, 2, 3]), (image(11)?, vec![0, 9, 4])],
        })
    }

    /// The sharing changes nothing: every score equals recalibrating the whole path and
    /// running the held-out batches through it, down to the last bit of the logits.
    #[test]
    fn prefix_sharing_equals_scoring_each_path_alone() -> Result<()> {
        let space = SearchSpace::nas_bench_macro();
        let net = Supernet::new(&space, 3, &Device::Cpu)?;
        for recal in [2, 0] {
            let data = batches(recal)?;
            let paths =
                [[1, 2, 0, 1, 0, 2, 1, 0], [1, 2, 0, 1, 2, 2, 1, 0], [1, 2, 0, 2, 0, 0, 0, 1], [0; 8]];
            let mut scorer = PrefixScorer::new(&net, &data);
            let shared: Vec<OneShotScore> = paths.iter().map(|p| scorer.score(p)).collect::<Result<_>>()?;
            assert_eq!(scorer.layer_evaluations, 8 + 4 + 5 + 8, "only the unshared suffixes run");
            for (path, got) in paths.iter().zip(&shared) {
                if recal > 0 {
                    net.recalibrate_bn(path, data.recalibration.iter())?;
                }
                let mut want = OneShotScore { correct: 0, images: 0, loss: 0.0 };
                for (x, labels) in &data.held_out {
                    let logits = net.forward(x, path, Mode::Eval)?;
                    assert_eq!(logits.dtype(), DType::F32);
                    want = want.merge(OneShotScore::of_logits(&logits, labels)?);
                }
                assert_eq!(got, &want, "{path:?} recal {recal}");
            }
        }
        Ok(())
    }

    #[test]
    fn loss_and_accuracy_of_known_logits() -> Result<()> {
        let logits = Tensor::new(&[[0f32, 0.0], [2.0, 0.0]], &Device::Cpu)?;
        let s = OneShotScore::of_logits(&logits, &[1, 0])?;
        assert_eq!((s.correct, s.images), (1, 2)); // tie on row 0 picks class 0
        let want = (2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 2.0;
        assert!((s.loss - want).abs() < 1e-12);
        assert!(OneShotScore::of_logits(&logits, &[5, 0]).is_err());
        Ok(())
    }
}
