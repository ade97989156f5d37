//! Inference timing of a network: median wall time per batch size, where the time goes per
//! stage, and the machine's f32 GEMM peak to judge it by. What `fairnas bench` reports, with
//! the synthetic weights the PyTorch/onnxruntime peers regenerate bit for bit
//! (`benches/peers/`), so both sides time the same network on the same numbers.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use serde::Serialize;

use crate::network::Network;

/// One stage of a forward pass.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub stage: String,
    pub output: Vec<usize>,
    pub madds: u64,
    pub median_ms: f64,
    /// This stage's median over the sum of all stages' medians.
    pub share: f64,
    pub gflop_per_s: f64,
}

/// Per-stage medians over `repeats` timed forward passes (after one untimed one).
pub fn time_stages(net: &Network, x: &Tensor, repeats: usize) -> Result<Vec<StageResult>> {
    let repeats = repeats.max(1);
    let mut runs = Vec::with_capacity(repeats);
    for i in 0..=repeats {
        let (_, times) = net.forward_timed(x)?;
        if i > 0 {
            runs.push(times);
        }
    }
    let first = &runs[0];
    let mut stages: Vec<StageResult> = (0..first.len())
        .map(|s| {
            let mut ms: Vec<f64> = runs.iter().map(|r| r[s].elapsed.as_secs_f64() * 1e3).collect();
            ms.sort_by(f64::total_cmp);
            let median = ms[ms.len() / 2];
            StageResult {
                stage: first[s].stage.clone(),
                output: first[s].output.clone(),
                madds: first[s].madds,
                median_ms: median,
                share: 0.0,
                gflop_per_s: 2.0 * first[s].madds as f64 / (median * 1e-3) / 1e9,
            }
        })
        .collect();
    let total: f64 = stages.iter().map(|s| s.median_ms).sum();
    for s in &mut stages {
        s.share = s.median_ms / total;
    }
    Ok(stages)
}

/// The size of the square matmul that stands for the machine's fp32 GEMM peak: large enough
/// for every thread to run at its best blocking, small enough to take well under a second.
pub const PEAK_MATMUL_SIZE: usize = 2048;

/// GFLOP/s of a `PEAK_MATMUL_SIZE`^3 f32 matmul, median of `repeats` after one warm-up.
pub fn matmul_peak_gflops(repeats: usize) -> Result<f64> {
    let repeats = repeats.max(1);
    let n = PEAK_MATMUL_SIZE;
    let a = Tensor::randn(0f32, 1f32, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1f32, (n, n), &Device::Cpu)?;
    let mut secs = Vec::with_capacity(repeats);
    for i in 0..=repeats {
        let started = Instant::now();
        drop(a.matmul(&b)?);
        if i > 0 {
            secs.push(started.elapsed().as_secs_f64());
        }
    }
    secs.sort_by(f64::total_cmp);
    Ok(2.0 * (n * n * n) as f64 / secs[secs.len() / 2] / 1e9)
}

/// One batch size's timing.
#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    pub batch: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub images_per_s: f64,
    /// 2 x multiply-adds per image x images / median time.
    pub gflop_per_s: f64,
    /// `gflop_per_s` over the measured matmul peak (`--matmul-peak`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction_of_matmul_peak: Option<f64>,
    /// Where the time goes (`--stages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<StageResult>>,
}

impl std::fmt::Display for BatchResult {
    /// One line per batch size, then the stage table when there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {:3}: {:9.2} ms (min {:.2}, max {:.2})  {:8.1} img/s  {:7.1} GFLOP/s",
            self.batch, self.median_ms, self.min_ms, self.max_ms, self.images_per_s, self.gflop_per_s
        )?;
        if let Some(fraction) = self.fraction_of_matmul_peak {
            write!(f, "  {:4.1}% of peak", fraction * 100.0)?;
        }
        let Some(stages) = &self.stages else { return Ok(()) };
        write!(f, "\n  {:<22} {:>22} {:>9} {:>6} {:>8}", "stage", "output", "ms", "share", "GFLOP/s")?;
        for s in stages {
            let output = format!("{:?}", s.output);
            write!(
                f,
                "\n  {:<22} {output:>22} {:9.3} {:5.1}% {:8.1}",
                s.stage,
                s.median_ms,
                s.share * 100.0,
                s.gflop_per_s
            )?;
        }
        Ok(())
    }
}

/// A whole benchmark run as `fairnas bench --json` writes it (the peers' scripts write the
/// same shape).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub implementation: String,
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub madds_per_image: u64,
    pub repeats: usize,
    pub warmup: usize,
    pub seed: u64,
    pub matmul_peak_gflop_per_s: Option<f64>,
    pub results: Vec<BatchResult>,
}

/// How to time a network.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Timed forward passes per batch size (after the warm-up); the median is reported.
    pub repeats: usize,
    /// Untimed forward passes first (allocator, caches, kernel loading).
    pub warmup: usize,
    /// Also time every stage ([`time_stages`]).
    pub stages: bool,
}

/// Times `net` (input `[batch, channels, size, size]`, `madds` multiply-adds per image) at
/// `batch` on `device`; `peak` (GFLOP/s) gives the fraction of the matmul peak.
pub fn time_batch(
    net: &Network,
    (channels, size, madds): (usize, usize, u64),
    batch: usize,
    device: &Device,
    options: &BenchOptions,
    peak: Option<f64>,
) -> Result<BatchResult> {
    if options.repeats == 0 || batch == 0 {
        candle_core::bail!(
            "timing needs at least one repeat and one image, got {} of batch {batch}",
            options.repeats
        );
    }
    let x = Tensor::randn(0f32, 1f32, (batch, channels, size, size), &Device::Cpu)?.to_device(device)?;
    let mut ms = Vec::with_capacity(options.repeats);
    for i in 0..options.warmup + options.repeats {
        let started = Instant::now();
        let logits = net.forward(&x)?;
        // Device work is asynchronous: wait for it before reading the clock.
        device.synchronize()?;
        drop(logits);
        if i >= options.warmup {
            ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let gflop_per_s = 2.0 * madds as f64 * batch as f64 / (median * 1e-3) / 1e9;
    Ok(BatchResult {
        batch,
        median_ms: median,
        min_ms: ms[0],
        max_ms: ms[ms.len() - 1],
        images_per_s: batch as f64 / (median * 1e-3),
        gflop_per_s,
        fraction_of_matmul_peak: peak.map(|p| gflop_per_s / p),
        stages: if options.stages { Some(time_stages(net, &x, options.repeats)?) } else { None },
    })
}
