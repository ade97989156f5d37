//! `fairnas bench`: inference speed of one model at several batch sizes, on the CPU or (in the
//! cuda build) the GPU, with the synthetic weights the PyTorch/onnxruntime peers regenerate
//! bit for bit (`benches/peers/`), so both sides time the same network on the same numbers.

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use fairnas_model::bench::{matmul_peak_gflops, time_batch, BenchOptions, BenchReport, PEAK_MATMUL_SIZE};

use crate::device::parse_device;
use fairnas_model::cost::cost_report;
use fairnas_model::selection::ModelSelection;
use fairnas_model::synthetic::synthetic_network;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelSelection,
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
    let options = BenchOptions { repeats: args.repeats, warmup: args.warmup, stages: args.stages };
    let mut results = Vec::new();
    for &batch in &args.batch {
        let r = time_batch(&net, (spec.in_channels, size, madds), batch, &device, &options, peak)?;
        if !args.json {
            println!("{} {r}", spec.name);
        }
        results.push(r);
    }
    if args.json {
        let report = BenchReport {
            implementation: "fairnas-rs".into(),
            model: spec.name,
            device: args.device,
            threads: rayon::current_num_threads(),
            madds_per_image: madds,
            repeats: args.repeats,
            warmup: args.warmup,
            seed: args.seed,
            matmul_peak_gflop_per_s: peak,
            results,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
