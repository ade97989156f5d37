//! `fairnas gpu-check`: the standing GPU check, one short command on a machine with a GPU.
//!
//! 1. Correctness: every custom op (depthwise forward, tiled and direct, with and without the
//!    fused BN affine + activation; its input and weight gradients; squeeze-excite forward, its
//!    two backward passes and its gradients through autograd) on fresh random inputs, against
//!    the CPU implementation of the same op run in f64. Outputs are poisoned with NaN before
//!    every run, so an unwritten element fails. FairNAS-A's logits on the device against the CPU
//!    in f64 (the project's 1e-4 relative standard), and with `--real-weights`/`--real-images`
//!    (which the CUDA bundle passes from the data it carries) a real checkpoint's logits on real
//!    photos, the same way.
//! 2. Speed: the device's copy bandwidth (device-to-device, bytes read + written); each kernel on
//!    FairNAS-A's own layer shapes at the given batch, timed with device events (median of
//!    repeats after warm-up, inputs rotated so L2 does not serve them), against the bytes it
//!    must move; FairNAS-A inference throughput at the batch.
//!
//! The same harness runs with `--device cpu` (the CPU kernels in f32 against themselves in f64,
//! host clock): that is how CI exercises it; the PyTorch peer (benches/peers/torch_gpu.py)
//! completes the table on the GPU machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;
use serde::Serialize;

use fairnas_data::{EvalLoader, OnBadImage, Sample};
use fairnas_model::network::Network;
use fairnas_model::selection::ModelSelection;
use fairnas_model::spec::{ArchSpec, BlockKind, Padding};
use fairnas_model::synthetic::synthetic_network;
use fairnas_ops::depthwise_backward::{DepthwiseInputGrad, DepthwiseWeightGrad};
use fairnas_ops::squeeze_excite::{PlaneStats, ScalePlanes};
use fairnas_ops::{
    pack_fc, squeeze_excite_packed, Activation, CudaDepthwiseKernel, DepthwiseAffineAct, DepthwiseConv2d,
    Padding2d, Stride2Rows, TiledDepthwise,
};

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

/// Relative error limits (stated in the report). f32 kernels against an f64 reference: the
/// error is rounding alone, a few ulps times the square root of the terms summed.
const OP_REL_L2_LIMIT: f64 = 1e-5;
const OP_MAX_REL_LIMIT: f64 = 1e-4;
/// The project's logits standard (f32 vs the f64 reference).
const LOGITS_MAX_REL_LIMIT: f64 = 1e-4;

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    /// ||out - ref|| / ||ref||.
    rel_l2: f64,
    /// max |out - ref| / max |ref|.
    max_rel: f64,
    /// Elements that are NaN in the output but not in the reference (unwritten when poisoned).
    nan: usize,
    limit_rel_l2: f64,
    limit_max_rel: f64,
    pass: bool,
    /// Set when the op failed to run at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Timing {
    name: String,
    shape: String,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// Bytes the op must move (each input read once, each output written once).
    bytes: u64,
    gb_per_s: f64,
    /// Fraction of the measured device-to-device copy bandwidth.
    of_copy_bandwidth: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    device: String,
    date_unix: u64,
    batch: usize,
    copy_gb_per_s: Option<f64>,
    checks: Vec<Check>,
    timings: Vec<Timing>,
    fairnas_a_images_per_s: Option<f64>,
    fairnas_a_batch_ms: Option<f64>,
    limits: serde_json::Value,
    all_pass: bool,
}

/// Timing regions: device events on CUDA, the host clock (after the work is done) on the CPU.
enum Clock {
    Host,
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>),
}

impl Clock {
    fn for_device(device: &Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Clock::Host),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(Clock::Cuda(d.cuda_stream())),
            #[allow(unreachable_patterns)]
            other => bail!("gpu-check: unsupported device {other:?}"),
        }
    }

    /// Milliseconds `f` takes; `f` returns the tensors it produced (kept alive to the end).
    fn time<F: FnMut() -> Result<Vec<Tensor>>>(&self, mut f: F) -> Result<f64> {
        match self {
            Clock::Host => {
                let t = Instant::now();
                drop(f()?);
                Ok(t.elapsed().as_secs_f64() * 1e3)
            }
            #[cfg(feature = "cuda")]
            Clock::Cuda(stream) => {
                use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
                let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                let outputs = f()?;
                let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                let ms = start.elapsed_ms(&end)?;
                // Any asynchronous launch failure surfaces here, not as a wrong time.
                stream.synchronize()?;
                drop(outputs);
                Ok(ms as f64)
            }
        }
    }

    /// (median, min, max) over `repeats` runs after `warmup` untimed ones.
    fn stats<F: FnMut(usize) -> Result<Vec<Tensor>>>(
        &self,
        warmup: usize,
        repeats: usize,
        mut f: F,
    ) -> Result<(f64, f64, f64)> {
        for i in 0..warmup {
            self.time(|| f(i))?;
        }
        let mut ms: Vec<f64> = (0..repeats).map(|i| self.time(|| f(i))).collect::<Result<_>>()?;
        ms.sort_by(f64::total_cmp);
        Ok((ms[ms.len() / 2], ms[0], ms[ms.len() - 1]))
    }
}

/// Error of `got` (any device, f32) against `reference` (CPU, f64).
fn compare(name: String, got: &Tensor, reference: &Tensor, limits: (f64, f64)) -> Result<Check> {
    let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let want = reference.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if got.len() != want.len() {
        bail!("{name}: {} elements against {} in the reference", got.len(), want.len());
    }
    let (mut diff2, mut ref2, mut max_diff, mut max_ref, mut nan) = (0f64, 0f64, 0f64, 0f64, 0usize);
    for (&g, &w) in got.iter().zip(&want) {
        if g.is_nan() && !w.is_nan() {
            nan += 1;
            continue;
        }
        let d = g - w;
        diff2 += d * d;
        ref2 += w * w;
        max_diff = max_diff.max(d.abs());
        max_ref = max_ref.max(w.abs());
    }
    let rel_l2 = (diff2 / ref2.max(f64::MIN_POSITIVE)).sqrt();
    let max_rel = max_diff / max_ref.max(f64::MIN_POSITIVE);
    let pass = nan == 0 && rel_l2 <= limits.0 && max_rel <= limits.1 && rel_l2.is_finite();
    Ok(Check {
        name,
        rel_l2,
        max_rel,
        nan,
        limit_rel_l2: limits.0,
        limit_max_rel: limits.1,
        pass,
        error: None,
    })
}

const OP_LIMITS: (f64, f64) = (OP_REL_L2_LIMIT, OP_MAX_REL_LIMIT);

fn randn(shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::randn(0f64, 1f64, shape, &Device::Cpu)?)
}

/// Runs `op` on the device in f32 and on the CPU in f64 with the same (fresh) inputs.
fn check_op<F>(checks: &mut Vec<Check>, name: String, device: &Device, inputs: &[Tensor], op: F) -> Result<()>
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let on_device: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.to_device(device))
        .collect::<candle_core::Result<_>>()?;
    let reference = op(inputs).with_context(|| format!("{name} on the CPU in f64"))?;
    // A failure on the device is a failed check (named, with its error), and the rest still run.
    let check = match op(&on_device) {
        Ok(got) => compare(name, &got, &reference, OP_LIMITS)?,
        Err(e) => Check {
            name,
            rel_l2: f64::NAN,
            max_rel: f64::NAN,
            nan: 0,
            limit_rel_l2: OP_LIMITS.0,
            limit_max_rel: OP_LIMITS.1,
            pass: false,
            error: Some(e.to_string().lines().next().unwrap_or_default().to_string()),
        },
    };
    report_check(&check);
    checks.push(check);
    Ok(())
}

fn report_check(c: &Check) {
    let verdict = if c.pass { "ok" } else { "FAIL" };
    if let Some(e) = &c.error {
        eprintln!("  FAIL {:58} error: {e}", c.name);
        return;
    }
    eprintln!(
        "  {verdict:4} {:58} rel L2 {:.2e}  max rel {:.2e}  unwritten {}",
        c.name, c.rel_l2, c.max_rel, c.nan
    );
}

fn paddings(h: usize, w: usize, k: usize, s: usize) -> [(&'static str, Padding2d); 2] {
    [("sym", Padding2d::symmetric(k)), ("same", Padding2d::tf_same(h, w, k, s))]
}

fn correctness(device: &Device) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    // Odd sizes exercise every edge; width 40 (a multiple of 4) takes the vector-load kernels;
    // width 136 puts several tiles across a plane at stride 2 too (a partial last one), and with
    // height 19 the TF-SAME pads differ in parity between rows and columns.
    // 2x5x56x56 is FairNAS-shaped (outputs 56 and 28 wide): the fitted tiles run there.
    for (n, c, h, w) in [(3, 20, 37, 41), (2, 8, 36, 40), (1, 3, 19, 136), (2, 5, 56, 56)] {
        for k in [3usize, 5, 7] {
            for s in [1usize, 2] {
                for (pname, pad) in paddings(h, w, k, s) {
                    let tag = format!("k{k} s{s} {pname} {n}x{c}x{h}x{w}");
                    let x = randn(&[n, c, h, w])?;
                    let wt = randn(&[c, 1, k, k])?;
                    check_op(
                        &mut checks,
                        format!("depthwise fwd {tag}"),
                        device,
                        &[x.clone(), wt.clone()],
                        |t| t[0].apply_op2_no_bwd(&t[1], &DepthwiseConv2d { stride: s, padding: pad }),
                    )?;
                    let mut fused = vec![
                        (Activation::Relu6, CudaDepthwiseKernel::Auto),
                        (Activation::Swish, CudaDepthwiseKernel::Direct),
                        (Activation::Relu, CudaDepthwiseKernel::Auto),
                    ];
                    // Every tiled variant the timings try.
                    let ho = fairnas_ops::depthwise::conv_output_size(h, pad.top, pad.bottom, k, s)?;
                    let wo = fairnas_ops::depthwise::conv_output_size(w, pad.left, pad.right, k, s)?;
                    fused.extend(tiled_variants(s, (ho, wo)).into_iter().map(|v| (Activation::Relu6, v)));
                    for (act, kernel) in fused {
                        let affine = randn(&[2, c])?;
                        let variant = variant_name(kernel, s, ho);
                        let op = DepthwiseAffineAct {
                            stride: s,
                            padding: pad,
                            activation: act,
                            cuda_kernel: kernel,
                        };
                        check_op(
                            &mut checks,
                            format!("depthwise+bn+{act} ({variant}) {tag}"),
                            device,
                            &[x.clone(), wt.clone(), affine],
                            |t| t[0].apply_op3_no_bwd(&t[1], &t[2], &op),
                        )?;
                    }
                    let g = randn(&[n, c, ho, wo])?;
                    // At stride 2 the simple kernels too (the blocked ones replaced them there).
                    for simple in if s == 2 { vec![false, true] } else { vec![false] } {
                        let variant = if simple { " (simple)" } else { "" };
                        let input_grad = DepthwiseInputGrad {
                            stride: s,
                            padding: pad,
                            height: h,
                            width: w,
                            simple_cuda_kernel: simple,
                        };
                        check_op(
                            &mut checks,
                            format!("depthwise d/dx{variant} {tag}"),
                            device,
                            &[g.clone(), wt.clone()],
                            |t| t[0].apply_op2_no_bwd(&t[1], &input_grad),
                        )?;
                        let weight_grad = DepthwiseWeightGrad {
                            stride: s,
                            padding: pad,
                            kernel: k,
                            simple_cuda_kernel: simple,
                        };
                        check_op(
                            &mut checks,
                            format!("depthwise d/dw{variant} {tag}"),
                            device,
                            &[x.clone(), g.clone()],
                            |t| t[0].apply_op2_no_bwd(&t[1], &weight_grad),
                        )?;
                    }
                }
            }
        }
    }
    // Small planes (the direct kernel) as FairNAS's last stages have them.
    let x = randn(&[4, 64, 7, 7])?;
    let wt = randn(&[64, 1, 5, 5])?;
    check_op(&mut checks, "depthwise fwd k5 s1 sym 4x64x7x7".into(), device, &[x, wt.clone()], |t| {
        t[0].apply_op2_no_bwd(&t[1], &DepthwiseConv2d { stride: 1, padding: Padding2d::symmetric(5) })
    })?;
    let g = randn(&[4, 64, 7, 7])?;
    let small_grad = DepthwiseInputGrad {
        stride: 1,
        padding: Padding2d::symmetric(5),
        height: 7,
        width: 7,
        simple_cuda_kernel: false,
    };
    check_op(&mut checks, "depthwise d/dx k5 s1 sym 4x64x7x7".into(), device, &[g, wt], |t| {
        t[0].apply_op2_no_bwd(&t[1], &small_grad)
    })?;
    for (inner, (n, c, h, w, r)) in
        [(Activation::Swish, (4, 96, 28, 28, 24)), (Activation::Relu, (3, 40, 7, 7, 10))]
    {
        let tag = format!("{inner} {n}x{c}x{h}x{w} r{r}");
        let x = randn(&[n, c, h, w])?;
        let reduce = (randn(&[r, c + 1])? * 0.3)?;
        let expand = (randn(&[c, r + 1])? * 0.3)?;
        check_op(
            &mut checks,
            format!("squeeze-excite fwd {tag}"),
            device,
            &[x.clone(), reduce.clone(), expand.clone()],
            |t| squeeze_excite_packed(&t[0], &t[1], &t[2], inner),
        )?;
        let y = randn(&[n, c, h, w])?;
        check_op(
            &mut checks,
            format!("plane stats {n}x{c}x{h}x{w}"),
            device,
            &[x.clone(), y.clone()],
            |t| t[0].apply_op2_no_bwd(&t[1], &PlaneStats),
        )?;
        let (gate, bias) = (randn(&[n, c])?, randn(&[n, c])?);
        check_op(
            &mut checks,
            format!("scale planes {n}x{c}x{h}x{w}"),
            device,
            &[y.clone(), gate, bias],
            |t| t[0].apply_op3_no_bwd(&t[1], &t[2], &ScalePlanes),
        )?;
        // Gradients through autograd (the op's bwd: plane stats, [N, C] algebra, scale planes).
        let probe = randn(&[n, c, h, w])?;
        for (which, index) in [("x", 0usize), ("reduce", 1), ("expand", 2)] {
            check_op(
                &mut checks,
                format!("squeeze-excite d/d{which} {tag}"),
                device,
                &[x.clone(), reduce.clone(), expand.clone(), probe.clone()],
                |t| {
                    let vars: Vec<Var> =
                        t[..3].iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()?;
                    let y = squeeze_excite_packed(
                        vars[0].as_tensor(),
                        vars[1].as_tensor(),
                        vars[2].as_tensor(),
                        inner,
                    )?;
                    let grads = (y * &t[3])?.sum_all()?.backward()?;
                    grads
                        .get(vars[index].as_tensor())
                        .cloned()
                        .ok_or_else(|| candle_core::Error::msg("no gradient"))
                },
            )?;
        }
    }
    let x = randn(&[2, 24, 30, 30])?;
    let wt = randn(&[24, 1, 5, 5])?;
    let probe = randn(&[2, 24, 15, 15])?;
    for (which, index) in [("x", 0usize), ("w", 1)] {
        check_op(
            &mut checks,
            format!("depthwise autograd d/d{which} k5 s2 same 2x24x30x30"),
            device,
            &[x.clone(), wt.clone(), probe.clone()],
            |t| {
                let vars: Vec<Var> =
                    t[..2].iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()?;
                let pad = Padding2d::tf_same(30, 30, 5, 2);
                let y = fairnas_ops::depthwise_conv2d(vars[0].as_tensor(), vars[1].as_tensor(), 2, pad)?;
                let grads = (y * &t[2])?.sum_all()?.backward()?;
                grads
                    .get(vars[index].as_tensor())
                    .cloned()
                    .ok_or_else(|| candle_core::Error::msg("no gradient"))
            },
        )?;
    }
    Ok(checks)
}

fn fairnas_a() -> Result<ArchSpec> {
    ModelSelection::named("fairnas-a").resolve().map_err(anyhow::Error::msg)
}

fn network(spec: &ArchSpec, dtype: DType, device: &Device) -> Result<Network> {
    Ok(synthetic_network(spec, 0, dtype, device)?)
}

/// FairNAS-A (synthetic weights, seed 0) on 8 random images: the device in f32 against the CPU in
/// f64. Writes the input and the device's logits for the PyTorch peer.
fn end_to_end(device: &Device, out: &std::path::Path) -> Result<Check> {
    let spec = fairnas_a()?;
    let x = randn(&[8, 3, 224, 224])?;
    let got = network(&spec, DType::F32, device)?.forward(&x.to_dtype(DType::F32)?.to_device(device)?)?;
    let reference = network(&spec, DType::F64, &Device::Cpu)?.forward(&x)?;
    let check = compare(
        "FairNAS-A logits, batch 8".into(),
        &got,
        &reference,
        (LOGITS_MAX_REL_LIMIT, LOGITS_MAX_REL_LIMIT),
    )?;
    report_check(&check);
    let tensors = [
        ("input", x.to_dtype(DType::F32)?),
        ("logits", got.to_device(&Device::Cpu)?),
        ("logits_f64_cpu", reference.to_dtype(DType::F32)?),
    ];
    let path = out.join("fairnas_a_io.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect(), &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(check)
}

/// What the real-checkpoint check runs on, read before any check runs (a wrong path or a bad
/// checkpoint fails at once, not after the whole suite).
struct RealData {
    spec: ArchSpec,
    /// The checkpoint's tensors (CPU, f32) under the network's names.
    tensors: std::collections::HashMap<String, Tensor>,
    /// The photos, labelled as `fairnas verify` labels them.
    photos: Vec<Sample>,
}

impl RealData {
    fn from_args(args: &GpuCheckArgs) -> Result<Option<Self>> {
        let (Some(weights), Some(images)) = (&args.real_weights, &args.real_images) else {
            return Ok(None);
        };
        if !weights.is_file() {
            bail!("--real-weights {}: no such file", weights.display());
        }
        if args.real_limit == 0 {
            bail!("--real-limit must be at least 1 (leave out --real-weights to skip the check)");
        }
        let spec = ModelSelection::named(&args.real_model).resolve().map_err(anyhow::Error::msg)?;
        let photos = fairnas_data::dataset::Dataset::detect_imagenet(images)
            .with_context(|| format!("--real-images {}", images.display()))?
            .limit(args.real_limit)
            .samples;
        let source = fairnas_cli::weights::WeightsArgs {
            weights: weights.display().to_string(),
            source: fairnas_cli::weights::CheckpointSource { layout: "auto".into(), key: None },
        };
        let tensors = fairnas_cli::weights::load_tensors(&source, &spec, &Device::Cpu)
            .with_context(|| format!("--real-weights {}", weights.display()))?;
        Ok(Some(Self { spec, tensors, photos }))
    }
}

/// A real checkpoint on real photos (decoded and preprocessed as `fairnas verify` does): its
/// logits on the device in f32 against the same weights on the CPU in f64. The synthetic
/// FairNAS-A check cannot see a kernel path only trained weights reach (e.g. large BN scales,
/// TF-SAME pads at every stride-2 depthwise in the Lite family).
fn real_checkpoint(device: &Device, real: &RealData) -> Result<Check> {
    let RealData { spec, tensors, photos } = real;
    let load = |dtype, on: &Device| -> Result<Network> {
        Ok(Network::load(spec, candle_nn::VarBuilder::from_tensors(tensors.clone(), dtype, on))?)
    };
    let (on_device, reference) = (load(DType::F32, device)?, load(DType::F64, &Device::Cpu)?);
    let transform = crate::verify::eval_transform(spec, None, None);
    let crop = transform.crop as usize;
    let (mut got, mut want, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for batch in EvalLoader::new(photos.clone(), transform, 16, 2, OnBadImage::Fail) {
        let batch = batch?;
        let x = Tensor::from_vec(batch.pixels, (batch.indices.len(), 3, crop, crop), &Device::Cpu)?;
        got.push(on_device.forward(&x.to_device(device)?)?.to_device(&Device::Cpu)?);
        want.push(reference.forward(&x.to_dtype(DType::F64)?)?);
        labels.extend(batch.labels.iter().map(|&l| l as u32));
    }
    let (got, want) = (Tensor::cat(&got, 0)?, Tensor::cat(&want, 0)?);
    let name = format!("{} logits, {} real photos (real checkpoint)", spec.name, photos.len());
    let check = compare(name, &got, &want, (LOGITS_MAX_REL_LIMIT, LOGITS_MAX_REL_LIMIT))?;
    let classes = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.argmax(1)?.to_vec1::<u32>()?) };
    let (got, want) = (classes(&got)?, classes(&want)?);
    let agree = |a: &[u32], b: &[u32]| a.iter().zip(b).filter(|(x, y)| x == y).count();
    report_check(&check);
    eprintln!(
        "       top-1: the same class as the CPU's for {} of {n} photos; correct for {} (device) and {} (CPU)",
        agree(&got, &want),
        agree(&got, &labels),
        agree(&want, &labels),
        n = photos.len()
    );
    Ok(check)
}

/// One depthwise layer of a network, as the kernels see it.
#[derive(Debug, Clone, Copy)]
struct DwLayer {
    channels: usize,
    size: (usize, usize),
    kernel: usize,
    stride: usize,
    se: Option<usize>,
}

fn depthwise_layers(spec: &ArchSpec) -> Vec<DwLayer> {
    spec.blocks
        .iter()
        .zip(spec.block_geometry(spec.input_size))
        .filter(|(b, _)| b.kind != BlockKind::Skip)
        .map(|(b, g)| DwLayer {
            channels: g.hidden_channels,
            size: g.in_size,
            kernel: b.kernel,
            stride: b.stride,
            se: g.se_channels,
        })
        .collect()
}

fn pad_for(spec: &ArchSpec, l: &DwLayer) -> Padding2d {
    match spec.blocks.first().map(|b| b.padding) {
        Some(Padding::TfSame) => Padding2d::tf_same(l.size.0, l.size.1, l.kernel, l.stride),
        _ => Padding2d::symmetric(l.kernel),
    }
}

const ROTATE: usize = 3;

/// The tiled-kernel variants the check runs beside `Auto` on planes of the given output size
/// at `stride` (each is checked for correctness and timed): the other strip heights, the
/// chunk-indexed staging it replaced, at stride 2 the plain-row layouts (with both stagings:
/// the chunk-staged one is the 2026-11-28 kernel; and read in pairs), and the fitted tile where
/// one fits.
fn tiled_variants(stride: usize, (out_height, out_width): (usize, usize)) -> Vec<CudaDepthwiseKernel> {
    let auto = CudaDepthwiseKernel::auto_strip_height(out_height);
    let tiled = |t: TiledDepthwise| CudaDepthwiseKernel::Tiled(t);
    let mut v: Vec<_> = [2u8, 4, 8]
        .into_iter()
        .filter(|&r| usize::from(r) != auto)
        .map(|r| tiled(TiledDepthwise { rows_per_thread: Some(r), ..Default::default() }))
        .collect();
    // Chunk staging keeps its layout (at stride 2: de-interleaved, the pairs need row staging).
    let chunk = TiledDepthwise {
        chunk_staging: true,
        stride2_rows: Stride2Rows::DeInterleaved,
        ..Default::default()
    };
    v.push(tiled(chunk));
    if stride == 2 {
        let rows = |stride2_rows, chunk_staging| TiledDepthwise {
            stride2_rows,
            chunk_staging,
            ..Default::default()
        };
        v.push(tiled(rows(Stride2Rows::DeInterleaved, false)));
        v.push(tiled(rows(Stride2Rows::Plain, false)));
        v.push(tiled(rows(Stride2Rows::Plain, true)));
    }
    if TiledDepthwise::fitted_tile(out_height, out_width).is_some() {
        v.push(tiled(TiledDepthwise { fitted: true, ..Default::default() }));
    }
    v
}

/// The CUDA forward kernels timed side by side at `stride` on planes `out_height` tall.
fn kernel_variants(stride: usize, out_size: (usize, usize)) -> Vec<CudaDepthwiseKernel> {
    let mut v = vec![CudaDepthwiseKernel::Auto, CudaDepthwiseKernel::Direct];
    v.extend(tiled_variants(stride, out_size));
    v
}

/// A kernel's name in the report; `Auto` with the strip height it takes on planes `out_height`
/// tall.
fn variant_name(kernel: CudaDepthwiseKernel, stride: usize, out_height: usize) -> String {
    let auto = CudaDepthwiseKernel::auto_strip_height(out_height);
    match kernel {
        CudaDepthwiseKernel::Auto => format!("tiled r{auto}, auto"),
        CudaDepthwiseKernel::Direct => "direct".into(),
        CudaDepthwiseKernel::Tiled(TiledDepthwise { fitted: true, .. }) => "tiled, fitted 28-wide".into(),
        CudaDepthwiseKernel::Tiled(t) => {
            let mut name = format!("tiled r{}", t.rows_per_thread.map_or(auto, usize::from));
            match t.stride2_rows {
                _ if stride != 2 => {}
                Stride2Rows::PlainPairs => {}
                Stride2Rows::DeInterleaved => name.push_str(", de-interleaved rows"),
                Stride2Rows::Plain => name.push_str(", plain rows"),
            }
            if t.chunk_staging {
                name.push_str(", chunk staging");
            }
            name
        }
    }
}

fn timings(
    device: &Device,
    clock: &Clock,
    args: &GpuCheckArgs,
    copy_gbs: Option<f64>,
) -> Result<Vec<Timing>> {
    let spec = fairnas_a()?;
    let mut out = Vec::new();
    let f32_bytes = |elems: usize| (elems * 4) as u64;
    let mut push = |name: String, shape: String, (median, min, max): (f64, f64, f64), bytes: u64| {
        let gbs = bytes as f64 / (median * 1e-3) / 1e9;
        let t = Timing {
            name,
            shape,
            median_ms: median,
            min_ms: min,
            max_ms: max,
            bytes,
            gb_per_s: gbs,
            of_copy_bandwidth: copy_gbs.map(|c| gbs / c).unwrap_or(f64::NAN),
        };
        eprintln!(
            "  {:40} {:26} {:9.3} ms  {:7.1} GB/s  {:5.1}% of copy",
            t.name,
            t.shape,
            t.median_ms,
            t.gb_per_s,
            100.0 * t.of_copy_bandwidth
        );
        out.push(t);
    };
    let rand_on = |shape: &[usize]| -> Result<Tensor> { Ok(Tensor::randn(0f32, 1f32, shape, device)?) };
    let b = args.batch;
    for layer in depthwise_layers(&spec).into_iter().take(args.layers) {
        let (c, (h, w), k, s) = (layer.channels, layer.size, layer.kernel, layer.stride);
        let pad = pad_for(&spec, &layer);
        let ho = fairnas_ops::depthwise::conv_output_size(h, pad.top, pad.bottom, k, s)?;
        let wo = fairnas_ops::depthwise::conv_output_size(w, pad.left, pad.right, k, s)?;
        let shape = format!("{b}x{c}x{h}x{w} k{k} s{s}");
        let xs: Vec<Tensor> = (0..ROTATE).map(|_| rand_on(&[b, c, h, w])).collect::<Result<_>>()?;
        let gs: Vec<Tensor> = (0..ROTATE).map(|_| rand_on(&[b, c, ho, wo])).collect::<Result<_>>()?;
        let wt = rand_on(&[c, 1, k, k])?;
        let affine = rand_on(&[2, c])?;
        let moved = f32_bytes(b * c * (h * w + ho * wo));
        for kernel in kernel_variants(s, (ho, wo)) {
            let op = DepthwiseAffineAct {
                stride: s,
                padding: pad,
                activation: Activation::Relu6,
                cuda_kernel: kernel,
            };
            let stats = clock
                .stats(3, args.repeats, |i| Ok(vec![xs[i % ROTATE].apply_op3_no_bwd(&wt, &affine, &op)?]))?;
            push(
                format!("depthwise+bn+relu6 fwd ({})", variant_name(kernel, s, ho)),
                shape.clone(),
                stats,
                moved,
            );
        }
        // The simple kernels beside the blocked ones where those replaced them (stride 2, and
        // the weight gradient at stride 1), same run.
        for simple in [false, true] {
            let variant = if simple { " (simple)" } else { "" };
            if !simple || s == 2 {
                let input_grad = DepthwiseInputGrad {
                    stride: s,
                    padding: pad,
                    height: h,
                    width: w,
                    simple_cuda_kernel: simple,
                };
                let stats = clock.stats(3, args.repeats, |i| {
                    Ok(vec![gs[i % ROTATE].apply_op2_no_bwd(&wt, &input_grad)?])
                })?;
                push(format!("depthwise d/dx{variant}"), shape.clone(), stats, moved);
            }
            let weight_grad =
                DepthwiseWeightGrad { stride: s, padding: pad, kernel: k, simple_cuda_kernel: simple };
            let stats = clock.stats(3, args.repeats, |i| {
                Ok(vec![xs[i % ROTATE].apply_op2_no_bwd(&gs[i % ROTATE], &weight_grad)?])
            })?;
            push(format!("depthwise d/dw{variant}"), shape.clone(), stats, moved);
        }
    }
    // Squeeze-excite on FairNAS-A-SE's first SE layers (after the depthwise: output size).
    let se_spec = ModelSelection { se_ratio: Some(1.0), ..ModelSelection::named("fairnas-a") }
        .resolve()
        .map_err(anyhow::Error::msg)?;
    for layer in depthwise_layers(&se_spec).into_iter().filter(|l| l.se.is_some()).take(2) {
        let r = layer.se.unwrap_or(1);
        let c = layer.channels;
        let (h, w) = (layer.size.0.div_ceil(layer.stride), layer.size.1.div_ceil(layer.stride));
        let shape = format!("{b}x{c}x{h}x{w} r{r}");
        let xs: Vec<Tensor> = (0..ROTATE).map(|_| rand_on(&[b, c, h, w])).collect::<Result<_>>()?;
        let reduce = pack_fc(&rand_on(&[r, c, 1, 1])?, &rand_on(&[r])?)?;
        let expand = pack_fc(&rand_on(&[c, r, 1, 1])?, &rand_on(&[c])?)?;
        let stats = clock.stats(3, args.repeats, |i| {
            Ok(vec![squeeze_excite_packed(&xs[i % ROTATE], &reduce, &expand, Activation::Swish)?])
        })?;
        // Pool reads x, scale reads it again and writes y.
        push("squeeze-excite fwd".into(), shape.clone(), stats, f32_bytes(3 * b * c * h * w));
        let stats = clock.stats(3, args.repeats, |i| {
            Ok(vec![xs[i % ROTATE].apply_op2_no_bwd(&xs[(i + 1) % ROTATE], &PlaneStats)?])
        })?;
        push("squeeze-excite bwd: plane stats".into(), shape.clone(), stats, f32_bytes(2 * b * c * h * w));
    }
    Ok(out)
}

/// Device-to-device copy bandwidth (bytes read + written), 1 GiB buffers.
fn copy_bandwidth(device: &Device, clock: &Clock, repeats: usize) -> Result<f64> {
    let elems = 1usize << 28;
    let src = Tensor::randn(0f32, 1f32, elems, device)?;
    let (median, _, _) = clock.stats(2, repeats, |_| Ok(vec![src.copy()?]))?;
    let gbs = (2 * elems * 4) as f64 / (median * 1e-3) / 1e9;
    eprintln!("  device-to-device copy: {gbs:.0} GB/s (1 GiB, median of {repeats})");
    Ok(gbs)
}

fn throughput(device: &Device, clock: &Clock, batch: usize) -> Result<(f64, f64)> {
    let spec = fairnas_a()?;
    let net = network(&spec, DType::F32, device)?;
    let xs: Vec<Tensor> = (0..2)
        .map(|_| Tensor::randn(0f32, 1f32, (batch, 3, 224, 224), device))
        .collect::<candle_core::Result<_>>()?;
    let (median, _, _) = clock.stats(3, 10, |i| Ok(vec![net.forward(&xs[i % 2])?]))?;
    let ips = batch as f64 / (median * 1e-3);
    eprintln!("  FairNAS-A batch {batch}: {median:.2} ms per batch, {ips:.0} images/s");
    Ok((ips, median))
}

pub fn run(args: GpuCheckArgs) -> Result<()> {
    // `fairnas --emulate-cuda gpu-check --device cpu`: the CUDA kernels' source on the CPU
    // (correctness only).
    let emulate_cuda = fairnas_ops::cuda_emulator::is_enabled();
    if emulate_cuda && args.device != "cpu" {
        bail!(
            "--emulate-cuda runs the CUDA kernels on the CPU: use it with --device cpu, not {}",
            args.device
        );
    }
    let device = fairnas_cli::device::parse_device(&args.device)?;
    let real = RealData::from_args(&args)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut device_name = describe(&device)?;
    if emulate_cuda {
        device_name = format!("CUDA kernels emulated on the {device_name}");
    }
    eprintln!("gpu-check on {device_name}");
    #[cfg(feature = "cuda")]
    fairnas_ops::cuda::set_poison_outputs(true);
    eprintln!("correctness (f32 on the device vs the CPU op in f64, fresh random inputs, outputs poisoned):");
    let mut checks = correctness(&device)?;
    checks.push(end_to_end(&device, &args.out)?);
    if let Some(real) = &real {
        checks.push(real_checkpoint(&device, real)?);
    }
    fairnas_ops::cuda_emulator::set_enabled(false)?;
    #[cfg(feature = "cuda")]
    fairnas_ops::cuda::set_poison_outputs(false);
    let clock = Clock::for_device(&device)?;
    let (mut copy, mut timing, mut ips, mut batch_ms) = (None, Vec::new(), None, None);
    if !args.no_timing && !emulate_cuda {
        eprintln!("timings (median of {} after warm-up, batch {}):", args.repeats, args.batch);
        copy = Some(copy_bandwidth(&device, &clock, args.repeats)?);
        timing = timings(&device, &clock, &args, copy)?;
        let (i, ms) = throughput(&device, &clock, args.batch)?;
        (ips, batch_ms) = (Some(i), Some(ms));
    }
    let all_pass = checks.iter().all(|c| c.pass);
    let report = Report {
        device: device_name,
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        batch: args.batch,
        copy_gb_per_s: copy,
        checks,
        timings: timing,
        fairnas_a_images_per_s: ips,
        fairnas_a_batch_ms: batch_ms,
        limits: serde_json::json!({
            "op_rel_l2": OP_REL_L2_LIMIT,
            "op_max_rel": OP_MAX_REL_LIMIT,
            "logits_max_rel": LOGITS_MAX_REL_LIMIT,
        }),
        all_pass,
    };
    let path = args.out.join("gpu-check.json");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&report)?)?;
    std::fs::rename(&tmp, &path)?;
    let failed = report.checks.iter().filter(|c| !c.pass).count();
    println!("gpu-check: {} checks, {failed} failed; report {}", report.checks.len(), path.display());
    if failed > 0 {
        bail!("{failed} correctness checks failed (see {})", path.display());
    }
    Ok(())
}

fn describe(device: &Device) -> Result<String> {
    match device {
        Device::Cpu => Ok(format!("cpu ({} threads)", rayon::current_num_threads())),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let name = ctx.name().map_err(|e| anyhow::anyhow!("cannot read the device name: {e:?}"))?;
            let (free, total) = ctx.mem_get_info().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(format!(
                "{name} ({:.1} of {:.1} GiB free)",
                free as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64
            ))
        }
        #[allow(unreachable_patterns)]
        other => Ok(format!("{other:?}")),
    }
}
