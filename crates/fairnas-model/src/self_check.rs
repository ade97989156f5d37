//! The standing device check: every custom op against its CPU reference in f64, FairNAS-A's
//! logits end to end, a real checkpoint on real photos, and kernel timings on FairNAS-A's own
//! layer shapes, as one report ([`Report`]). `fairnas gpu-check` runs it on a GPU machine; the
//! same harness on the CPU device (and under the CUDA emulator) is how CI checks the kernels.
//!
//! 1. Correctness: every custom op (depthwise forward, tiled and direct, with and without the
//!    fused BN affine + activation; its input and weight gradients; squeeze-excite forward, its
//!    two backward passes and its gradients through autograd) on fresh random inputs, against
//!    the CPU implementation of the same op run in f64. Outputs are poisoned with NaN before
//!    every run, so an unwritten element fails. FairNAS-A's logits on the device against the CPU
//!    in f64 (the project's 1e-4 relative standard), and a real checkpoint's logits on real
//!    photos, the same way ([`real_checkpoint`]).
//! 2. Speed: the device's copy bandwidth (device-to-device, bytes read + written); each kernel on
//!    FairNAS-A's own layer shapes at the given batch, timed with device events (median of
//!    repeats after warm-up, inputs rotated so L2 does not serve them), against the bytes it
//!    must move; FairNAS-A inference throughput at the batch.
//!
//! Progress lines go to the caller's `log`.

use std::time::Instant;

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use serde::Serialize;

use crate::network::Network;
use crate::selection::ModelSelection;
use crate::spec::{ArchSpec, BlockKind, Padding};
use crate::synthetic::synthetic_network;
use fairnas_ops::depthwise_backward::{DepthwiseInputGrad, DepthwiseWeightGrad};
use fairnas_ops::squeeze_excite::{PlaneStats, ScalePlanes};
use fairnas_ops::{
    pack_fc, squeeze_excite_packed, Activation, CudaDepthwiseKernel, DepthwiseAffineAct, DepthwiseConv2d,
    Padding2d, Stride2Rows, TiledDepthwise,
};

/// Where progress lines go.
pub type Log<'a> = &'a dyn Fn(&str);

/// What to time, and how.
#[derive(Debug, Clone, Copy)]
pub struct TimingOptions {
    /// Batch of the kernel timings and of the FairNAS-A throughput.
    pub batch: usize,
    /// Timed repeats per kernel (after warm-up); the median is reported.
    pub repeats: usize,
    /// How many of FairNAS-A's depthwise layers (from the input side) to time.
    pub layers: usize,
}

/// A real checkpoint and decoded photos for [`real_checkpoint`].
pub struct RealCheckpoint {
    pub spec: ArchSpec,
    /// The checkpoint's tensors (CPU, f32) under the network's names.
    pub tensors: std::collections::HashMap<String, Tensor>,
    /// Preprocessed photos `[n, 3, s, s]` (f32, CPU) in batches, with their labels.
    pub batches: Vec<(Tensor, Vec<u32>)>,
}

/// How often the device's top-1 class matched the CPU's and the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Top1Agreement {
    pub photos: usize,
    pub same_as_cpu: usize,
    pub correct_device: usize,
    pub correct_cpu: usize,
}

/// Relative error limits (stated in the report). f32 kernels against an f64 reference: the
/// error is rounding alone, a few ulps times the square root of the terms summed.
pub const OP_REL_L2_LIMIT: f64 = 1e-5;
pub const OP_MAX_REL_LIMIT: f64 = 1e-4;
/// The project's logits standard (f32 vs the f64 reference).
pub const LOGITS_MAX_REL_LIMIT: f64 = 1e-4;

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    /// ||out - ref|| / ||ref||.
    pub rel_l2: f64,
    /// max |out - ref| / max |ref|.
    pub max_rel: f64,
    /// Elements that are NaN in the output but not in the reference (unwritten when poisoned).
    pub nan: usize,
    pub limit_rel_l2: f64,
    pub limit_max_rel: f64,
    pub pass: bool,
    /// Set when the op failed to run at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Timing {
    pub name: String,
    pub shape: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Bytes the op must move (each input read once, each output written once).
    pub bytes: u64,
    pub gb_per_s: f64,
    /// Fraction of the measured device-to-device copy bandwidth.
    pub of_copy_bandwidth: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub date_unix: u64,
    pub batch: usize,
    pub copy_gb_per_s: Option<f64>,
    pub checks: Vec<Check>,
    pub timings: Vec<Timing>,
    pub fairnas_a_images_per_s: Option<f64>,
    pub fairnas_a_batch_ms: Option<f64>,
    pub limits: Limits,
    pub all_pass: bool,
}

/// The limits a report was judged by.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    pub logits_max_rel: f64,
    pub op_max_rel: f64,
    pub op_rel_l2: f64,
}

pub const LIMITS: Limits =
    Limits { logits_max_rel: LOGITS_MAX_REL_LIMIT, op_max_rel: OP_MAX_REL_LIMIT, op_rel_l2: OP_REL_L2_LIMIT };

/// Timing regions: device events on CUDA, the host clock (after the work is done) on the CPU.
pub enum Clock {
    Host,
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>),
}

impl Clock {
    pub fn for_device(device: &Device) -> Result<Self> {
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
                // cudarc's errors convert into candle's only with its `cudnn` feature: say how.
                let cuda = |e: candle_core::cuda_backend::cudarc::driver::DriverError| {
                    candle_core::Error::msg(format!("timing on the device: {e:?}"))
                };
                let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda)?;
                let outputs = f()?;
                let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda)?;
                let ms = start.elapsed_ms(&end).map_err(cuda)?;
                // Any asynchronous launch failure surfaces here, not as a wrong time.
                stream.synchronize().map_err(cuda)?;
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
    Tensor::randn(0f64, 1f64, shape, &Device::Cpu)
}

/// Runs `op` on the device in f32 and on the CPU in f64 with the same (fresh) inputs.
fn check_op<F>(
    checks: &mut Vec<Check>,
    name: String,
    device: &Device,
    inputs: &[Tensor],
    op: F,
    log: Log,
) -> Result<()>
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let on_device: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.to_device(device))
        .collect::<candle_core::Result<_>>()?;
    let reference =
        op(inputs).map_err(|e| candle_core::Error::msg(format!("{name} on the CPU in f64: {e}")))?;
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
    report_check(&check, log);
    checks.push(check);
    Ok(())
}

/// Logs one check as a line.
pub fn report_check(c: &Check, log: Log) {
    let verdict = if c.pass { "ok" } else { "FAIL" };
    if let Some(e) = &c.error {
        log(&format!("  FAIL {:58} error: {e}", c.name));
        return;
    }
    log(&format!(
        "  {verdict:4} {:58} rel L2 {:.2e}  max rel {:.2e}  unwritten {}",
        c.name, c.rel_l2, c.max_rel, c.nan
    ));
}

fn paddings(h: usize, w: usize, k: usize, s: usize) -> [(&'static str, Padding2d); 2] {
    [("sym", Padding2d::symmetric(k)), ("same", Padding2d::tf_same(h, w, k, s))]
}

/// Every op on `device` in f32 against the CPU in f64.
pub fn correctness(device: &Device, log: Log) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    // Odd sizes exercise every edge; width 40 (a multiple of 4) takes the vector-load kernels;
    // width 136 puts several tiles across a plane at stride 2 too (a partial last one), and with
    // height 19 the TF-SAME pads differ in parity between rows and columns.
    // 2x5x56x56 is FairNAS-shaped (outputs 56 and 28 wide): the fitted tiles run there.
    for shape in [(3, 20, 37, 41), (2, 8, 36, 40), (1, 3, 19, 136), (2, 5, 56, 56)] {
        for k in [3usize, 5, 7] {
            for s in [1usize, 2] {
                for (pname, pad) in paddings(shape.2, shape.3, k, s) {
                    depthwise_case(&mut checks, device, shape, (k, s, pname, pad), log)?;
                }
            }
        }
    }
    small_plane_checks(&mut checks, device, log)?;
    squeeze_excite_checks(&mut checks, device, log)?;
    depthwise_autograd_checks(&mut checks, device, log)?;
    Ok(checks)
}

/// Depthwise forward (plain, fused with every tiled variant), d/dx and d/dw on one shape.
fn depthwise_case(
    checks: &mut Vec<Check>,
    device: &Device,
    (n, c, h, w): (usize, usize, usize, usize),
    (k, s, pname, pad): (usize, usize, &str, Padding2d),
    log: Log,
) -> Result<()> {
    let tag = format!("k{k} s{s} {pname} {n}x{c}x{h}x{w}");
    let x = randn(&[n, c, h, w])?;
    let wt = randn(&[c, 1, k, k])?;
    check_op(
        checks,
        format!("depthwise fwd {tag}"),
        device,
        &[x.clone(), wt.clone()],
        |t| t[0].apply_op2_no_bwd(&t[1], &DepthwiseConv2d { stride: s, padding: pad }),
        log,
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
        let op = DepthwiseAffineAct { stride: s, padding: pad, activation: act, cuda_kernel: kernel };
        check_op(
            checks,
            format!("depthwise+bn+{act} ({variant}) {tag}"),
            device,
            &[x.clone(), wt.clone(), affine],
            |t| t[0].apply_op3_no_bwd(&t[1], &t[2], &op),
            log,
        )?;
    }
    let g = randn(&[n, c, ho, wo])?;
    // At stride 2 the simple kernels too (the blocked ones replaced them there).
    for simple in if s == 2 { vec![false, true] } else { vec![false] } {
        let variant = if simple { " (simple)" } else { "" };
        let input_grad =
            DepthwiseInputGrad { stride: s, padding: pad, height: h, width: w, simple_cuda_kernel: simple };
        check_op(
            checks,
            format!("depthwise d/dx{variant} {tag}"),
            device,
            &[g.clone(), wt.clone()],
            |t| t[0].apply_op2_no_bwd(&t[1], &input_grad),
            log,
        )?;
        let weight_grad =
            DepthwiseWeightGrad { stride: s, padding: pad, kernel: k, simple_cuda_kernel: simple };
        check_op(
            checks,
            format!("depthwise d/dw{variant} {tag}"),
            device,
            &[x.clone(), g.clone()],
            |t| t[0].apply_op2_no_bwd(&t[1], &weight_grad),
            log,
        )?;
    }
    Ok(())
}

/// Small planes (the direct kernel) as FairNAS's last stages have them.
fn small_plane_checks(checks: &mut Vec<Check>, device: &Device, log: Log) -> Result<()> {
    let x = randn(&[4, 64, 7, 7])?;
    let wt = randn(&[64, 1, 5, 5])?;
    check_op(
        checks,
        "depthwise fwd k5 s1 sym 4x64x7x7".into(),
        device,
        &[x, wt.clone()],
        |t| t[0].apply_op2_no_bwd(&t[1], &DepthwiseConv2d { stride: 1, padding: Padding2d::symmetric(5) }),
        log,
    )?;
    let g = randn(&[4, 64, 7, 7])?;
    let small_grad = DepthwiseInputGrad {
        stride: 1,
        padding: Padding2d::symmetric(5),
        height: 7,
        width: 7,
        simple_cuda_kernel: false,
    };
    check_op(
        checks,
        "depthwise d/dx k5 s1 sym 4x64x7x7".into(),
        device,
        &[g, wt],
        |t| t[0].apply_op2_no_bwd(&t[1], &small_grad),
        log,
    )?;
    Ok(())
}

/// Squeeze-excite forward, its backward ops, and its gradients through autograd.
fn squeeze_excite_checks(checks: &mut Vec<Check>, device: &Device, log: Log) -> Result<()> {
    for (inner, (n, c, h, w, r)) in
        [(Activation::Swish, (4, 96, 28, 28, 24)), (Activation::Relu, (3, 40, 7, 7, 10))]
    {
        let tag = format!("{inner} {n}x{c}x{h}x{w} r{r}");
        let x = randn(&[n, c, h, w])?;
        let reduce = (randn(&[r, c + 1])? * 0.3)?;
        let expand = (randn(&[c, r + 1])? * 0.3)?;
        check_op(
            checks,
            format!("squeeze-excite fwd {tag}"),
            device,
            &[x.clone(), reduce.clone(), expand.clone()],
            |t| squeeze_excite_packed(&t[0], &t[1], &t[2], inner),
            log,
        )?;
        let y = randn(&[n, c, h, w])?;
        check_op(
            checks,
            format!("plane stats {n}x{c}x{h}x{w}"),
            device,
            &[x.clone(), y.clone()],
            |t| t[0].apply_op2_no_bwd(&t[1], &PlaneStats),
            log,
        )?;
        let (gate, bias) = (randn(&[n, c])?, randn(&[n, c])?);
        check_op(
            checks,
            format!("scale planes {n}x{c}x{h}x{w}"),
            device,
            &[y.clone(), gate, bias],
            |t| t[0].apply_op3_no_bwd(&t[1], &t[2], &ScalePlanes),
            log,
        )?;
        // Gradients through autograd (the op's bwd: plane stats, [N, C] algebra, scale planes).
        let probe = randn(&[n, c, h, w])?;
        for (which, index) in [("x", 0usize), ("reduce", 1), ("expand", 2)] {
            check_op(
                checks,
                format!("squeeze-excite d/d{which} {tag}"),
                device,
                &[x.clone(), reduce.clone(), expand.clone(), probe.clone()],
                |t| gradient(&t[..3], &t[3], index, |v| squeeze_excite_packed(&v[0], &v[1], &v[2], inner)),
                log,
            )?;
        }
    }
    Ok(())
}

/// The depthwise op's gradients through candle's autograd.
fn depthwise_autograd_checks(checks: &mut Vec<Check>, device: &Device, log: Log) -> Result<()> {
    let x = randn(&[2, 24, 30, 30])?;
    let wt = randn(&[24, 1, 5, 5])?;
    let probe = randn(&[2, 24, 15, 15])?;
    for (which, index) in [("x", 0usize), ("w", 1)] {
        check_op(
            checks,
            format!("depthwise autograd d/d{which} k5 s2 same 2x24x30x30"),
            device,
            &[x.clone(), wt.clone(), probe.clone()],
            |t| {
                let pad = Padding2d::tf_same(30, 30, 5, 2);
                gradient(&t[..2], &t[2], index, |v| fairnas_ops::depthwise_conv2d(&v[0], &v[1], 2, pad))
            },
            log,
        )?;
    }
    Ok(())
}

/// d(sum(f(inputs) * probe)) / d(inputs[index]) through candle's autograd.
fn gradient(
    inputs: &[Tensor],
    probe: &Tensor,
    index: usize,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Tensor> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = (f(&tensors)? * probe)?.sum_all()?.backward()?;
    grads.get(vars[index].as_tensor()).cloned().ok_or_else(|| candle_core::Error::msg("no gradient"))
}

fn fairnas_a() -> Result<ArchSpec> {
    ModelSelection::named("fairnas-a").resolve().map_err(candle_core::Error::msg)
}

fn network(spec: &ArchSpec, dtype: DType, device: &Device) -> Result<Network> {
    synthetic_network(spec, 0, dtype, device)
}

/// FairNAS-A (synthetic weights, seed 0) on 8 random images: the device in f32 against the CPU in
/// f64. Writes the input and the device's logits for the PyTorch peer.
pub fn end_to_end(device: &Device, out: &std::path::Path, log: Log) -> Result<Check> {
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
    report_check(&check, log);
    let tensors = [
        ("input", x.to_dtype(DType::F32)?),
        ("logits", got.to_device(&Device::Cpu)?),
        ("logits_f64_cpu", reference.to_dtype(DType::F32)?),
    ];
    let path = out.join("fairnas_a_io.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect(), &path)
        .map_err(|e| candle_core::Error::msg(format!("cannot write {}: {e}", path.display())))?;
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

/// Each kernel on FairNAS-A's (and FairNAS-A-SE's) layer shapes, against the copy bandwidth.
pub fn timings(
    device: &Device,
    clock: &Clock,
    opts: &TimingOptions,
    copy_gbs: Option<f64>,
    log: Log,
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
        log(&format!(
            "  {:40} {:26} {:9.3} ms  {:7.1} GB/s  {:5.1}% of copy",
            t.name,
            t.shape,
            t.median_ms,
            t.gb_per_s,
            100.0 * t.of_copy_bandwidth
        ));
        out.push(t);
    };
    let rand_on = |shape: &[usize]| -> Result<Tensor> { Tensor::randn(0f32, 1f32, shape, device) };
    let b = opts.batch;
    for layer in depthwise_layers(&spec).into_iter().take(opts.layers) {
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
                .stats(3, opts.repeats, |i| Ok(vec![xs[i % ROTATE].apply_op3_no_bwd(&wt, &affine, &op)?]))?;
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
                let stats = clock.stats(3, opts.repeats, |i| {
                    Ok(vec![gs[i % ROTATE].apply_op2_no_bwd(&wt, &input_grad)?])
                })?;
                push(format!("depthwise d/dx{variant}"), shape.clone(), stats, moved);
            }
            let weight_grad =
                DepthwiseWeightGrad { stride: s, padding: pad, kernel: k, simple_cuda_kernel: simple };
            let stats = clock.stats(3, opts.repeats, |i| {
                Ok(vec![xs[i % ROTATE].apply_op2_no_bwd(&gs[i % ROTATE], &weight_grad)?])
            })?;
            push(format!("depthwise d/dw{variant}"), shape.clone(), stats, moved);
        }
    }
    // Squeeze-excite on FairNAS-A-SE's first SE layers (after the depthwise: output size).
    let se_spec = ModelSelection { se_ratio: Some(1.0), ..ModelSelection::named("fairnas-a") }
        .resolve()
        .map_err(candle_core::Error::msg)?;
    for layer in depthwise_layers(&se_spec).into_iter().filter(|l| l.se.is_some()).take(2) {
        let r = layer.se.unwrap_or(1);
        let c = layer.channels;
        let (h, w) = (layer.size.0.div_ceil(layer.stride), layer.size.1.div_ceil(layer.stride));
        let shape = format!("{b}x{c}x{h}x{w} r{r}");
        let xs: Vec<Tensor> = (0..ROTATE).map(|_| rand_on(&[b, c, h, w])).collect::<Result<_>>()?;
        let reduce = pack_fc(&rand_on(&[r, c, 1, 1])?, &rand_on(&[r])?)?;
        let expand = pack_fc(&rand_on(&[c, r, 1, 1])?, &rand_on(&[c])?)?;
        let stats = clock.stats(3, opts.repeats, |i| {
            Ok(vec![squeeze_excite_packed(&xs[i % ROTATE], &reduce, &expand, Activation::Swish)?])
        })?;
        // Pool reads x, scale reads it again and writes y.
        push("squeeze-excite fwd".into(), shape.clone(), stats, f32_bytes(3 * b * c * h * w));
        let stats = clock.stats(3, opts.repeats, |i| {
            Ok(vec![xs[i % ROTATE].apply_op2_no_bwd(&xs[(i + 1) % ROTATE], &PlaneStats)?])
        })?;
        push("squeeze-excite bwd: plane stats".into(), shape.clone(), stats, f32_bytes(2 * b * c * h * w));
    }
    Ok(out)
}

/// Device-to-device copy bandwidth (bytes read + written), 1 GiB buffers.
/// Device-to-device copy bandwidth in GB/s.
pub fn copy_bandwidth(device: &Device, clock: &Clock, repeats: usize, log: Log) -> Result<f64> {
    let elems = 1usize << 28;
    let src = Tensor::randn(0f32, 1f32, elems, device)?;
    let (median, _, _) = clock.stats(2, repeats, |_| Ok(vec![src.copy()?]))?;
    let gbs = (2 * elems * 4) as f64 / (median * 1e-3) / 1e9;
    log(&format!("  device-to-device copy: {gbs:.0} GB/s (1 GiB, median of {repeats})"));
    Ok(gbs)
}

/// FairNAS-A inference at `batch`: (images/s, ms per batch).
pub fn throughput(device: &Device, clock: &Clock, batch: usize, log: Log) -> Result<(f64, f64)> {
    let spec = fairnas_a()?;
    let net = network(&spec, DType::F32, device)?;
    let xs: Vec<Tensor> = (0..2)
        .map(|_| Tensor::randn(0f32, 1f32, (batch, 3, 224, 224), device))
        .collect::<candle_core::Result<_>>()?;
    let (median, _, _) = clock.stats(3, 10, |i| Ok(vec![net.forward(&xs[i % 2])?]))?;
    let ips = batch as f64 / (median * 1e-3);
    log(&format!("  FairNAS-A batch {batch}: {median:.2} ms per batch, {ips:.0} images/s"));
    Ok((ips, median))
}

/// A real checkpoint on real photos (decoded and preprocessed as the evaluation protocol
/// does): its logits on the device in f32 against the same weights on the CPU in f64. The
/// synthetic FairNAS-A check cannot see a kernel path only trained weights reach (e.g. large BN
/// scales, TF-SAME pads at every stride-2 depthwise in the Lite family).
pub fn real_checkpoint(device: &Device, real: &RealCheckpoint, log: Log) -> Result<(Check, Top1Agreement)> {
    let RealCheckpoint { spec, tensors, batches } = real;
    let load = |dtype, on: &Device| -> Result<Network> {
        Network::load(spec, candle_nn::VarBuilder::from_tensors(tensors.clone(), dtype, on))
    };
    let (on_device, reference) = (load(DType::F32, device)?, load(DType::F64, &Device::Cpu)?);
    let (mut got, mut want, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (x, batch_labels) in batches {
        got.push(on_device.forward(&x.to_device(device)?)?.to_device(&Device::Cpu)?);
        want.push(reference.forward(&x.to_dtype(DType::F64)?)?);
        labels.extend_from_slice(batch_labels);
    }
    let (got, want) = (Tensor::cat(&got, 0)?, Tensor::cat(&want, 0)?);
    let name = format!("{} logits, {} real photos (real checkpoint)", spec.name, labels.len());
    let check = compare(name, &got, &want, (LOGITS_MAX_REL_LIMIT, LOGITS_MAX_REL_LIMIT))?;
    let classes = |t: &Tensor| -> Result<Vec<u32>> { t.argmax(1)?.to_vec1::<u32>() };
    let (got, want) = (classes(&got)?, classes(&want)?);
    let agree = |a: &[u32], b: &[u32]| a.iter().zip(b).filter(|(x, y)| x == y).count();
    report_check(&check, log);
    let top1 = Top1Agreement {
        photos: labels.len(),
        same_as_cpu: agree(&got, &want),
        correct_device: agree(&got, &labels),
        correct_cpu: agree(&want, &labels),
    };
    log(&format!(
        "       top-1: the same class as the CPU's for {} of {n} photos; correct for {} (device) and {} (CPU)",
        top1.same_as_cpu,
        top1.correct_device,
        top1.correct_cpu,
        n = top1.photos
    ));
    Ok((check, top1))
}

/// The whole check on `device`: correctness (with `real` when given), then, when `time_kernels`
/// and the CUDA kernels are not emulated, the timings `timing` describes. Writes FairNAS-A's input
/// and logits into `out` for the PyTorch peer.
pub fn run(
    device: &Device,
    out: &std::path::Path,
    real: Option<&RealCheckpoint>,
    timing: TimingOptions,
    time_kernels: bool,
    log: Log,
) -> Result<Report> {
    let emulate_cuda = fairnas_ops::cuda_emulator::is_enabled();
    let mut device_name = describe(device)?;
    if emulate_cuda {
        device_name = format!("CUDA kernels emulated on the {device_name}");
    }
    log(&format!("gpu-check on {device_name}"));
    #[cfg(feature = "cuda")]
    fairnas_ops::cuda::set_poison_outputs(true);
    log("correctness (f32 on the device vs the CPU op in f64, fresh random inputs, outputs poisoned):");
    let mut checks = correctness(device, log)?;
    checks.push(end_to_end(device, out, log)?);
    if let Some(real) = real {
        checks.push(real_checkpoint(device, real, log)?.0);
    }
    fairnas_ops::cuda_emulator::set_enabled(false)?;
    #[cfg(feature = "cuda")]
    fairnas_ops::cuda::set_poison_outputs(false);
    let clock = Clock::for_device(device)?;
    let (mut copy, mut timed, mut ips, mut batch_ms) = (None, Vec::new(), None, None);
    let (batch, opts) = (timing.batch, timing);
    if time_kernels && !emulate_cuda {
        log(&format!("timings (median of {} after warm-up, batch {}):", opts.repeats, opts.batch));
        copy = Some(copy_bandwidth(device, &clock, opts.repeats, log)?);
        timed = timings(device, &clock, &opts, copy, log)?;
        let (i, ms) = throughput(device, &clock, opts.batch, log)?;
        (ips, batch_ms) = (Some(i), Some(ms));
    }
    let all_pass = checks.iter().all(|c| c.pass);
    Ok(Report {
        device: device_name,
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        batch,
        copy_gb_per_s: copy,
        checks,
        timings: timed,
        fairnas_a_images_per_s: ips,
        fairnas_a_batch_ms: batch_ms,
        limits: LIMITS,
        all_pass,
    })
}

/// The device in words (name and free memory on CUDA).
pub fn describe(device: &Device) -> Result<String> {
    match device {
        Device::Cpu => Ok(format!("cpu ({} threads)", rayon::current_num_threads())),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let name = ctx
                .name()
                .map_err(|e| candle_core::Error::msg(format!("cannot read the device name: {e:?}")))?;
            let (free, total) = ctx.mem_get_info().map_err(|e| candle_core::Error::msg(format!("{e:?}")))?;
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
