//! Per-device latency lookup tables: every candidate block at every layer position, and the
//! fixed parts, timed in isolation (median of repeats); a sub-network's predicted latency is
//! the sum of its entries. Measured in eval mode with the same kernels a deployed sub-network
//! runs; [`LatencyTable::check`] reports how well the sum predicts measured end-to-end
//! latency.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use fairnas_ops::rng::SampleRng;
use fairnas_supernet::{Mode, Supernet};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    pub space: String,
    pub device: String,
    pub batch: usize,
    pub threads: usize,
    pub repeats: usize,
    /// Stem and fixed blocks, milliseconds.
    pub stem_ms: f64,
    /// Per layer, per candidate, milliseconds.
    pub layers_ms: Vec<Vec<f64>>,
    /// Head, pooling and classifier, milliseconds.
    pub head_ms: f64,
    /// How well the table predicted measured end-to-end latency, when checked.
    pub check: Option<LatencyCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyCheck {
    /// Mean absolute percentage error of predicted vs measured end-to-end latency.
    pub mape: f64,
    /// `(choices, predicted ms, measured ms)` per checked architecture.
    pub architectures: Vec<(String, f64, f64)>,
}

/// The table's summary: what was timed, stem and head, and how well it predicts.
impl std::fmt::Display for LatencyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} latency table (batch {}, {} threads, median of {}): stem {:.3} ms, head {:.3} ms",
            self.space, self.batch, self.threads, self.repeats, self.stem_ms, self.head_ms
        )?;
        if let Some(c) = &self.check {
            write!(
                f,
                "\npredicted vs measured end-to-end latency on {} random architectures: MAPE {:.2}%",
                c.architectures.len(),
                c.mape
            )?;
        }
        Ok(())
    }
}

/// Median wall time of `f` over `repeats` runs after one warm-up, in milliseconds.
fn median_ms(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Median end-to-end eval-mode latency of sub-network `choices` on `x`, milliseconds.
fn end_to_end_ms(supernet: &Supernet, x: &Tensor, choices: &[usize], repeats: usize) -> Result<f64> {
    median_ms(repeats, || supernet.forward(x, choices, Mode::Eval).map(drop))
}

/// Measured end-to-end latency of one sub-network at `batch` (median of `repeats`), ms.
pub fn measure_end_to_end(
    supernet: &Supernet,
    choices: &[usize],
    batch: usize,
    repeats: usize,
) -> Result<f64> {
    end_to_end_ms(supernet, &input(supernet, batch)?, choices, repeats)
}

fn input(supernet: &Supernet, batch: usize) -> Result<Tensor> {
    let base = &supernet.space().base;
    let size = base.input_size;
    Tensor::randn(0f32, 1.0, (batch, base.in_channels, size, size), &Device::Cpu)
}

impl LatencyTable {
    /// Times every part of `supernet`'s space at `batch` on the CPU. Each entry is timed
    /// inside whole forward passes (layer after layer, as a deployed network runs, so caches
    /// hold what they would), over paths that together use every candidate: a table of blocks
    /// timed in isolation, inputs and weights hot, under-predicted end-to-end latency by ~12%.
    pub fn measure(
        supernet: &Supernet,
        batch: usize,
        repeats: usize,
        mut progress: impl FnMut(&str),
    ) -> Result<Self> {
        let x = input(supernet, batch)?;
        let counts = supernet.space().choice_counts();
        let widest = counts.iter().copied().max().unwrap_or(1);
        let mut stem = Vec::new();
        let mut head = Vec::new();
        let mut layers: Vec<Vec<Vec<f64>>> = counts.iter().map(|&n| vec![Vec::new(); n]).collect();
        let timed = |f: &mut dyn FnMut() -> Result<Tensor>| -> Result<(Tensor, f64)> {
            let start = Instant::now();
            let out = f()?;
            Ok((out, start.elapsed().as_secs_f64() * 1e3))
        };
        for repeat in 0..=repeats.max(1) {
            for k in 0..widest {
                // Path k: candidate k (mod the layer's count) everywhere, so every candidate
                // runs after every kind of predecessor over the repeats.
                let path: Vec<usize> =
                    counts.iter().enumerate().map(|(l, &n)| (k + repeat * l) % n).collect();
                let (mut h, t) = timed(&mut || supernet.forward_stem(&x, Mode::Eval))?;
                let warm = repeat > 0; // the first round only warms up
                if warm {
                    stem.push(t);
                }
                for (l, &c) in path.iter().enumerate() {
                    let (out, t) = timed(&mut || supernet.forward_layer(l, c, &h, Mode::Eval))?;
                    if warm {
                        layers[l][c].push(t);
                    }
                    h = out;
                }
                let (_, t) = timed(&mut || supernet.forward_head(&h, Mode::Eval))?;
                if warm {
                    head.push(t);
                }
            }
        }
        let median = |mut v: Vec<f64>| -> f64 {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let layers_ms: Vec<Vec<f64>> =
            layers.into_iter().map(|row| row.into_iter().map(median).collect()).collect();
        for (l, row) in layers_ms.iter().enumerate() {
            progress(&format!("layer {l}: {row:.3?} ms"));
        }
        Ok(LatencyTable {
            space: supernet.space().name.clone(),
            device: "cpu".into(),
            batch,
            threads: rayon::current_num_threads(),
            repeats,
            stem_ms: median(stem),
            layers_ms,
            head_ms: median(head),
            check: None,
        })
    }

    /// Predicted latency of a sub-network, milliseconds.
    pub fn predict(&self, choices: &[usize]) -> f64 {
        self.stem_ms + choices.iter().zip(&self.layers_ms).map(|(&c, row)| row[c]).sum::<f64>() + self.head_ms
    }

    /// Measures `count` seeded random sub-networks end to end and records the table's error.
    pub fn check(&mut self, supernet: &Supernet, count: usize, seed: u64) -> Result<&LatencyCheck> {
        let x = input(supernet, self.batch)?;
        let counts = supernet.space().choice_counts();
        let mut rng = SampleRng::new(seed, 0, 0x1a7e);
        let mut rows = Vec::new();
        for _ in 0..count {
            let choices: Vec<usize> = counts.iter().map(|&n| rng.up_to(n as u32 - 1) as usize).collect();
            let measured = end_to_end_ms(supernet, &x, &choices, self.repeats)?;
            let digits: String = choices.iter().map(|c| c.to_string()).collect();
            rows.push((digits, self.predict(&choices), measured));
        }
        let mape =
            100.0 * rows.iter().map(|(_, p, m)| ((p - m) / m).abs()).sum::<f64>() / rows.len().max(1) as f64;
        Ok(self.check.insert(LatencyCheck { mape, architectures: rows }))
    }
}

/// A table for `space` measured now on the CPU: a supernet with seeded random weights (they
/// time the same as trained ones: the kernels do not look at the values), each candidate timed
/// at `batch` (median of `repeats`), then checked against measured end-to-end latency on
/// `check` random architectures (0: none). Progress lines go to `log`.
pub fn measure_space(
    space: &fairnas_model::search_space::SearchSpace,
    (batch, repeats, check): (usize, usize, usize),
    seed: u64,
    log: impl FnMut(&str),
) -> Result<LatencyTable> {
    if batch == 0 {
        candle_core::bail!("a latency table needs a batch of at least 1");
    }
    let supernet = Supernet::new(space, seed, &candle_core::Device::Cpu)?;
    let mut table = LatencyTable::measure(&supernet, batch, repeats, log)?;
    if check > 0 {
        table.check(&supernet, check, seed)?;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairnas_model::search_space::SearchSpace;

    #[test]
    fn predicts_the_sum_of_its_entries() {
        let table = LatencyTable {
            space: "x".into(),
            device: "cpu".into(),
            batch: 1,
            threads: 1,
            repeats: 1,
            stem_ms: 1.0,
            layers_ms: vec![vec![0.5, 2.0], vec![0.25, 4.0]],
            head_ms: 0.5,
            check: None,
        };
        assert_eq!(table.predict(&[1, 0]), 1.0 + 2.0 + 0.25 + 0.5);
    }

    #[test]
    fn measures_every_candidate_and_checks_itself() -> Result<()> {
        let space = SearchSpace::nas_bench_macro();
        let net = Supernet::new(&space, 0, &Device::Cpu)?;
        let mut table = LatencyTable::measure(&net, 1, 2, |_| {})?;
        assert_eq!(table.layers_ms.len(), 8);
        assert!(table.layers_ms.iter().flatten().all(|&t| t > 0.0));
        let check = table.check(&net, 3, 0)?;
        assert_eq!(check.architectures.len(), 3);
        assert!(check.mape.is_finite());
        Ok(())
    }
}
