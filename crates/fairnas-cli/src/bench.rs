//! `fairnas bench`: inference speed of one model at several batch sizes, on the CPU or (in the
//! cuda build) the GPU, with the synthetic weights the PyTorch/onnxruntime peers regenerate
//! bit for bit (`benches/peers/`), so both sides time the same network on the same numbers.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Serialize;

use crate::device::parse_device;
use crate::model_args::ModelArgs;
use fairnas_model::cost::cost_report;
use fairnas_model::synthetic::synthetic_network;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// cpu, or cuda / cuda:N (the cuda build).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed forward passes per batch size (after the warm-up); the median is reported.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Untimed forward passes first (allocator, caches, kernel loading).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Seed of the synthetic weights (crates/fairnas-model/src/synthetic.rs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also time a large square f32 matmul (candle's, the GEMM our pointwise convs use) with
    /// the same threads, and report each batch's throughput as a fraction of it. CPU only.
    #[arg(long)]
    pub matmul_peak: bool,
    /// Also time every stage (stem, each block's expand / dw / se / project, head) over the
    /// same number of passes and print where the time goes: median ms, share, GFLOP/s.
    #[arg(long)]
    pub stages: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct StageResult {
    stage: String,
    output: Vec<usize>,
    madds: u64,
    median_ms: f64,
    /// This stage's median over the sum of all stages' medians.
    share: f64,
    gflop_per_s: f64,
}

/// Per-stage medians over `repeats` timed forward passes (after one untimed one).
fn time_stages(
    net: &fairnas_model::network::Network,
    x: &Tensor,
    repeats: usize,
) -> Result<Vec<StageResult>> {
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

fn print_stages(stages: &[StageResult]) {
    println!("  {:<22} {:>22} {:>9} {:>6} {:>8}", "stage", "output", "ms", "share", "GFLOP/s");
    for s in stages {
        println!(
            "  {:<22} {:>22} {:9.3} {:5.1}% {:8.1}",
            s.stage,
            format!("{:?}", s.output),
            s.median_ms,
            s.share * 100.0,
            s.gflop_per_s
        );
    }
}

/// The size of the square matmul that stands for the machine's fp32 GEMM peak: large enough
/// for every thread to run at its best blocking, small enough to take well under a second.
const PEAK_MATMUL_SIZE: usize = 2048;

/// GFLOP/s of a `PEAK_MATMUL_SIZE`^3 f32 matmul, median of `repeats` after one warm-up.
fn matmul_peak_gflops(repeats: usize) -> Result<f64> {
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

#[derive(Debug, Serialize)]
struct BatchResult {
    batch: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    images_per_s: f64,
    /// 2 x multiply-adds per image x images / median time.
    gflop_per_s: f64,
    /// `gflop_per_s` over the measured matmul peak (`--matmul-peak`).
    #[serde(skip_serializing_if = "Option::is_none")]
    fraction_of_matmul_peak: Option<f64>,
    /// Where the time goes (`--stages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    stages: Option<Vec<StageResult>>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("--batch needs positive sizes, e.g. 1,8,32");
    }
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let spec = args.model.resolve()?;
    let device = parse_device(&args.device)?;
    if args.matmul_peak && !device.is_cpu() {
        bail!("--matmul-peak measures the CPU's GEMM; drop it with --device {}", args.device);
    }
    let peak = if args.matmul_peak { Some(matmul_peak_gflops(args.repeats.max(3))?) } else { None };
    if let (Some(peak), false) = (peak, args.json) {
        println!(
            "matmul peak ({PEAK_MATMUL_SIZE}^3 f32, {} threads): {peak:.1} GFLOP/s",
            rayon::current_num_threads()
        );
    }
    let net = synthetic_network(&spec, args.seed, DType::F32, &device)?;
    let madds = cost_report(&spec).madds;
    let size = spec.input_size;
    let mut results = Vec::new();
    for &batch in &args.batch {
        let x = Tensor::randn(0f32, 1f32, (batch, spec.in_channels, size, size), &Device::Cpu)?
            .to_device(&device)?;
        let mut ms = Vec::with_capacity(args.repeats);
        for i in 0..args.warmup + args.repeats {
            let started = Instant::now();
            let logits = net.forward(&x)?;
            // Device work is asynchronous: wait for it before reading the clock.
            device.synchronize()?;
            drop(logits);
            if i >= args.warmup {
                ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        ms.sort_by(f64::total_cmp);
        let median = ms[ms.len() / 2];
        let r = BatchResult {
            batch,
            median_ms: median,
            min_ms: ms[0],
            max_ms: ms[ms.len() - 1],
            images_per_s: batch as f64 / (median * 1e-3),
            gflop_per_s: 2.0 * madds as f64 * batch as f64 / (median * 1e-3) / 1e9,
            fraction_of_matmul_peak: None,
            stages: if args.stages { Some(time_stages(&net, &x, args.repeats)?) } else { None },
        };
        let r = BatchResult { fraction_of_matmul_peak: peak.map(|p| r.gflop_per_s / p), ..r };
        if !args.json {
            let of_peak = r.fraction_of_matmul_peak.map(|f| format!("  {:4.1}% of peak", f * 100.0));
            println!(
                "{} batch {:3}: {:9.2} ms (min {:.2}, max {:.2})  {:8.1} img/s  {:7.1} GFLOP/s{}",
                spec.name,
                r.batch,
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.images_per_s,
                r.gflop_per_s,
                of_peak.unwrap_or_default()
            );
            if let Some(stages) = &r.stages {
                print_stages(stages);
            }
        }
        results.push(r);
    }
    if args.json {
        let out = serde_json::json!({
            "implementation": "fairnas-rs",
            "model": spec.name,
            "device": args.device,
            "threads": rayon::current_num_threads(),
            "madds_per_image": madds,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seed": args.seed,
            "matmul_peak_gflop_per_s": peak,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
