//! `fairnas gpu-check`: the standing device check ([`fairnas_model::self_check`]) with the
//! real checkpoint and photos read from the flags, its report written to `--out`.
//!
//! The same harness runs with `--device cpu` (the CPU kernels in f32 against themselves in f64,
//! host clock): that is how CI exercises it; the PyTorch peer (benches/peers/torch_gpu.py)
//! completes the table on the GPU machine.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use fairnas_model::selection::ModelSelection;
use fairnas_model::self_check::{self, RealCheckpoint, TimingOptions};

#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    /// Where to write gpu-check.json and the end-to-end input/logits for the PyTorch peer.
    #[arg(long, default_value = "gpu-check")]
    pub out: PathBuf,
    /// cuda (default) or cpu (runs the same harness on the CPU kernels).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Batch of the kernel timings and of the FairNAS-A throughput.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Timed repeats per kernel (after warm-up); the median is reported.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// How many of FairNAS-A's depthwise layers (from the input side) to time.
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    /// Skip the timings (correctness only).
    #[arg(long)]
    pub no_timing: bool,
    /// A real checkpoint of --real-model (a .pth or .safetensors file): its logits on
    /// --real-images on the device are checked against the CPU in f64, like FairNAS-A's.
    #[arg(long, value_name = "FILE", requires = "real_images")]
    pub real_weights: Option<PathBuf>,
    /// Photos for --real-weights (a folder of JPEG/PNG files, taken in sorted order).
    #[arg(long, value_name = "DIR", requires = "real_weights")]
    pub real_images: Option<PathBuf>,
    /// The model --real-weights holds.
    #[arg(long, default_value = "efficientnet-lite0")]
    pub real_model: String,
    /// How many of the --real-images photos to run.
    #[arg(long, default_value_t = 32)]
    pub real_limit: usize,
}

/// The real checkpoint and its photos, read before any check runs (a wrong path or a bad
/// checkpoint fails at once, not after the whole suite).
fn real_checkpoint(args: &GpuCheckArgs) -> Result<Option<RealCheckpoint>> {
    let (Some(weights), Some(images)) = (&args.real_weights, &args.real_images) else {
        return Ok(None);
    };
    if !weights.is_file() {
        bail!("--real-weights {}: no such file", weights.display());
    }
    if args.real_limit == 0 {
        bail!("--real-limit must be at least 1 (leave out --real-weights to skip the check)");
    }
    let spec = ModelSelection::named(&args.real_model).resolve()?;
    let photos = fairnas_data::dataset::Dataset::detect_imagenet(images)
        .with_context(|| format!("--real-images {}", images.display()))?
        .limit(args.real_limit)
        .samples;
    let location = weights.display().to_string();
    let tensors = fairnas_model::weights::load_tensors(&location, &spec, &Default::default(), &Device::Cpu)
        .with_context(|| format!("--real-weights {}", weights.display()))?;
    // Decoded and preprocessed as `fairnas verify` does.
    let batches = fairnas_data::evaluate::preprocessed_batches(&spec, photos, 16)?;
    Ok(Some(RealCheckpoint { spec, tensors, batches }))
}

pub fn run(args: GpuCheckArgs) -> Result<()> {
    // `fairnas --emulate-cuda gpu-check --device cpu`: the CUDA kernels' source on the CPU
    // (correctness only).
    if fairnas_ops::cuda_emulator::is_enabled() && args.device != "cpu" {
        bail!(
            "--emulate-cuda runs the CUDA kernels on the CPU: use it with --device cpu, not {}",
            args.device
        );
    }
    let device = crate::device::parse_device(&args.device)?;
    let real = real_checkpoint(&args)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let timing = TimingOptions { batch: args.batch, repeats: args.repeats, layers: args.layers };
    let log = |line: &str| eprintln!("{line}");
    let report = self_check::run(&device, &args.out, real.as_ref(), timing, !args.no_timing, &log)?;
    let path = args.out.join("gpu-check.json");
    fairnas_model::persist::write_atomically(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    let failed = report.checks.iter().filter(|c| !c.pass).count();
    println!("gpu-check: {} checks, {failed} failed; report {}", report.checks.len(), path.display());
    if failed > 0 {
        bail!("{failed} correctness checks failed (see {})", path.display());
    }
    Ok(())
}
