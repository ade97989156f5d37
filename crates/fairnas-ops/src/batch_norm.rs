//! Training-mode batch normalisation fused with the activation that follows it, forward and
//! backward, and the eval-mode per-channel affine + activation.
//!
//! Why our own: written as candle ops, `act((x - mean) * scale + bias)` is five broadcast
//! element-wise passes forward, and its backward reduces each broadcast gradient over the
//! (N, H, W) axes. candle reduces over non-trailing axes with per-element index arithmetic; on a
//! NAS-Bench-Macro supernet step at batch 64 those reductions took over a third of the time and
//! the step ran 15 s. Here the statistics are one task per channel, the element-wise passes one
//! task per (n, c) plane.
//!
//! Every per-channel sum runs in f64 in a fixed order (n, then h*w) inside one task, so results
//! do not depend on the thread count.
//!
//! The batch statistics are computed once per forward and travel with the op (a custom op has
//! one output tensor), so the backward pass does not recompute them.

use candle_core::backend::BackendStorage;
use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::activation::with_activation;
use crate::buffer::par_filled_chunks;
use crate::layout::{contiguous_slice, dispatch_f32_f64 as dispatch};
use crate::Activation;

/// Elements the kernels run on.
pub(crate) trait BnElement: WithDType + num_traits::Float + Default + std::ops::AddAssign {
    #[inline(always)]
    fn wide(self) -> f64 {
        WithDType::to_f64(self)
    }
    #[inline(always)]
    fn narrow(v: f64) -> Self {
        WithDType::from_f64(v)
    }
}
impl BnElement for f32 {}
impl BnElement for f64 {}

pub(crate) fn dims_nchw(op: &str, l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => candle_core::bail!("{op}: input must be [N, C, H, W], got {d:?}"),
    }
}

pub(crate) fn check_rows(op: &str, l: &Layout, rows: usize, c: usize) -> Result<()> {
    let ok = match l.dims() {
        [cc] => rows == 1 && *cc == c,
        [r, cc] => *r == rows && *cc == c,
        _ => false,
    };
    if !ok {
        candle_core::bail!("{op}: per-channel operand must be [{rows}, {c}], got {:?}", l.dims());
    }
    Ok(())
}

/// Per-channel mean and biased variance, in channel order. One pass over the data, shifted by
/// the channel's first value so that `sum(d^2) - sum(d)^2 / n` does not cancel: each plane is
/// summed in [`PLANE_LANES`] lanes of the element type, the planes in f64, in a fixed order.
pub(crate) fn moments<T: BnElement>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    let count = (n * hw).max(1) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            crate::simd::wide(
                #[inline(always)]
                || {
                    if n * hw == 0 {
                        return (0.0, 0.0);
                    }
                    let shift = x[ch * hw];
                    let (mut s1, mut s2) = (0f64, 0f64);
                    for i in 0..n {
                        let plane = &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
                        let (mut a, mut b) = ([T::zero(); PLANE_LANES], [T::zero(); PLANE_LANES]);
                        let mut chunks = plane.chunks_exact(PLANE_LANES);
                        for chunk in &mut chunks {
                            for l in 0..PLANE_LANES {
                                let d = chunk[l] - shift;
                                a[l] += d;
                                b[l] += d * d;
                            }
                        }
                        for (l, &v) in chunks.remainder().iter().enumerate() {
                            let d = v - shift;
                            a[l] += d;
                            b[l] += d * d;
                        }
                        s1 += a.iter().map(|v| v.wide()).sum::<f64>();
                        s2 += b.iter().map(|v| v.wide()).sum::<f64>();
                    }
                    let mean_d = s1 / count;
                    (shift.wide() + mean_d, (s2 / count - mean_d * mean_d).max(0.0))
                },
            )
        })
        .collect()
}

/// `act(batch_norm(x))` with batch statistics: inputs `x` `[N, C, H, W]`, `weight` `[C]`,
/// `bias` `[C]`. Running statistics are not touched (see [`channel_moments`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormAct {
    pub eps: f64,
    pub activation: Activation,
    /// The batch's per-channel (mean, biased variance), computed once by [`batch_norm_act`] and
    /// kept with the op for the backward pass.
    pub moments: Arc<Vec<(f64, f64)>>,
}

fn bn_forward<T: BnElement>(
    op: &BatchNormAct,
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    (bs, bl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let (n, c, hw) = dims_nchw("batch norm", xl)?;
    check_rows("batch norm weight", wl, 1, c)?;
    check_rows("batch norm bias", bl, 1, c)?;
    let x = contiguous_slice::<T>(xs, xl)?;
    let w = contiguous_slice::<T>(ws, wl)?;
    let b = contiguous_slice::<T>(bs, bl)?;
    Ok((normalize(op, &x, (n, c, hw), &w, &b)?, xl.shape().clone()))
}

/// `act((x - mean) / sqrt(var + eps) * w + b)` with the op's batch moments.
pub(crate) fn normalize<T: BnElement>(
    op: &BatchNormAct,
    x: &[T],
    (n, c, hw): (usize, usize, usize),
    w: &[T],
    b: &[T],
) -> Result<Vec<T>> {
    if op.moments.len() != c {
        candle_core::bail!("batch norm: {} channel moments for {c} channels", op.moments.len());
    }
    let affine: Vec<(f64, f64)> = op
        .moments
        .iter()
        .enumerate()
        .map(|(ch, &(mean, var))| bn_affine(w[ch].wide(), b[ch].wide(), mean, var, op.eps))
        .collect();
    Ok(apply_affine(x, c, hw, n, &affine, op.activation))
}

/// Training-mode BN as a per-channel affine `x * scale + shift`, the form the forward kernel
/// applies; the backward kernels recompute the pre-activation the same way (same bits, so the
/// activation's mask is the forward's).
#[inline]
fn bn_affine(weight: f64, bias: f64, mean: f64, var: f64, eps: f64) -> (f64, f64) {
    let scale = weight / (var + eps).sqrt();
    (scale, bias - mean * scale)
}

/// `act(x * scale + shift)` per plane; scale and shift per channel.
fn apply_affine<T: BnElement>(
    x: &[T],
    c: usize,
    hw: usize,
    n: usize,
    affine: &[(f64, f64)],
    activation: Activation,
) -> Vec<T> {
    par_filled_chunks(n * c * hw, hw.max(1), |plane, dst| {
        crate::simd::wide(
            #[inline(always)]
            || {
                let (scale, shift) = affine[plane % c];
                let (scale, shift) = (T::narrow(scale), T::narrow(shift));
                let src = &x[plane * hw..(plane + 1) * hw];
                with_activation!(activation, T, act => {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = act(v * scale + shift);
                    }
                })
            },
        )
    })
}

impl CustomOp3 for BatchNormAct {
    fn name(&self) -> &'static str {
        "fairnas-batch-norm-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch(
            "batch norm",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || bn_forward::<f32>(self, (s1, l1), (s2, l2), (s3, l3)),
            || bn_forward::<f64>(self, (s1, l1), (s2, l2), (s3, l3)),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let params = Tensor::stack(&[weight.detach(), bias.detach()], 0)?;
        let sums = x.apply_op3_no_bwd(grad_output, &params, &BnGradSums(self.clone()))?;
        let packed = Tensor::cat(&[&params, &sums], 0)?;
        let grad_x = x.apply_op3_no_bwd(grad_output, &packed, &BnGradInput(self.clone()))?;
        // sums = [sum dz, sum dz * xhat] = [d bias, d weight].
        Ok((Some(grad_x), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}

fn checked_moments(op: &BatchNormAct, c: usize) -> Result<&[(f64, f64)]> {
    if op.moments.len() != c {
        candle_core::bail!("batch norm backward: {} channel moments for {c} channels", op.moments.len());
    }
    Ok(&op.moments)
}

/// Runs `$body` with `$d` bound to the derivative of one concrete activation, so each
/// activation's loop is compiled and vectorised on its own rather than matching per element.
macro_rules! with_derivative {
    ($activation:expr, $t:ty, $d:ident => $body:expr) => {
        match $activation {
            Activation::Identity => {
                let $d = |z: $t| Activation::Identity.derivative_at(z);
                $body
            }
            Activation::Relu => {
                let $d = |z: $t| Activation::Relu.derivative_at(z);
                $body
            }
            Activation::Relu6 => {
                let $d = |z: $t| Activation::Relu6.derivative_at(z);
                $body
            }
            Activation::Swish => {
                let $d = |z: $t| Activation::Swish.derivative_at(z);
                $body
            }
            Activation::Sigmoid => {
                let $d = |z: $t| Activation::Sigmoid.derivative_at(z);
                $body
            }
        }
    };
}

/// Per-channel constants of the backward kernels, in the element type: the forward's affine
/// (to recompute the pre-activation `z`), the mean, and `1 / sqrt(var + eps)` in f64.
#[derive(Clone, Copy)]
struct ChannelTerms<T> {
    scale: T,
    shift: T,
    mean: T,
    invstd: f64,
}

#[inline(always)]
fn channel_terms<T: BnElement>(op: &BatchNormAct, p: &[T], c: usize, ch: usize) -> ChannelTerms<T> {
    let (mean, var) = op.moments[ch];
    let (scale, shift) = bn_affine(p[ch].wide(), p[c + ch].wide(), mean, var, op.eps);
    ChannelTerms {
        scale: T::narrow(scale),
        shift: T::narrow(shift),
        mean: T::narrow(mean),
        invstd: 1.0 / (var + op.eps).sqrt(),
    }
}

/// Lanes of the per-plane partial sums (one AVX-512 vector of f32).
const PLANE_LANES: usize = 16;

/// `[sum dz, sum dz * (x - mean)]` over one plane, `dz = dy * act'(z)`: partial sums in the
/// element type across [`PLANE_LANES`] lanes, combined in a fixed order in f64.
#[inline(always)]
fn plane_grad_sums<T: BnElement>(x: &[T], dy: &[T], t: ChannelTerms<T>, d: impl Fn(T) -> T) -> (f64, f64) {
    let (mut s_dz, mut s_dzx) = ([T::zero(); PLANE_LANES], [T::zero(); PLANE_LANES]);
    let (xc, gc) = (x.chunks_exact(PLANE_LANES), dy.chunks_exact(PLANE_LANES));
    let (xr, gr) = (xc.remainder(), gc.remainder());
    for (xs, gs) in xc.zip(gc) {
        for l in 0..PLANE_LANES {
            let dz = gs[l] * d(xs[l] * t.scale + t.shift);
            s_dz[l] += dz;
            s_dzx[l] += dz * (xs[l] - t.mean);
        }
    }
    for (l, (&xv, &g)) in xr.iter().zip(gr).enumerate() {
        let dz = g * d(xv * t.scale + t.shift);
        s_dz[l] += dz;
        s_dzx[l] += dz * (xv - t.mean);
    }
    (s_dz.iter().map(|v| v.wide()).sum(), s_dzx.iter().map(|v| v.wide()).sum())
}

/// The checked, contiguous inputs of both backward kernels.
struct BackwardInputs<'a, T: Clone> {
    n: usize,
    c: usize,
    hw: usize,
    x: std::borrow::Cow<'a, [T]>,
    dy: std::borrow::Cow<'a, [T]>,
    /// Per-channel rows (`[weight; bias; ...]`), `rows x C`.
    p: std::borrow::Cow<'a, [T]>,
}

fn backward_inputs<'a, T: BnElement>(
    op: &'a BatchNormAct,
    (xs, xl): (&'a CpuStorage, &Layout),
    (gs, gl): (&'a CpuStorage, &Layout),
    (ps, pl): (&'a CpuStorage, &Layout),
    rows: usize,
) -> Result<BackwardInputs<'a, T>> {
    let (n, c, hw) = dims_nchw("batch norm backward", xl)?;
    if gl.dims() != xl.dims() {
        candle_core::bail!("batch norm backward: gradient {:?} vs input {:?}", gl.dims(), xl.dims());
    }
    check_rows("batch norm backward params", pl, rows, c)?;
    checked_moments(op, c)?;
    Ok(BackwardInputs {
        n,
        c,
        hw,
        x: contiguous_slice::<T>(xs, xl)?,
        dy: contiguous_slice::<T>(gs, gl)?,
        p: contiguous_slice::<T>(ps, pl)?,
    })
}

/// Backward helper 1: per channel `[sum dz, sum dz * xhat]` as `[2, C]`, from `x`, `dy` and
/// `params = [weight; bias]` `[2, C]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BnGradSums(pub(crate) BatchNormAct);

fn grad_sums<T: BnElement>(
    BnGradSums(op): &BnGradSums,
    (xs, xl): (&CpuStorage, &Layout),
    (gs, gl): (&CpuStorage, &Layout),
    (ps, pl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let BackwardInputs::<T> { n, c, hw, x, dy, p } = backward_inputs(op, (xs, xl), (gs, gl), (ps, pl), 2)?;
    let sums: Vec<(f64, f64)> = with_derivative!(op.activation, T, d => (0..c)
        .into_par_iter()
        .map(|ch| crate::simd::wide(#[inline(always)] || {
            let terms = channel_terms(op, &p, c, ch);
            let (mut s_dz, mut s_dzx) = (0f64, 0f64);
            for i in 0..n {
                let range = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                let (a, b) = plane_grad_sums(&x[range.clone()], &dy[range], terms, d);
                s_dz += a;
                s_dzx += b;
            }
            (s_dz, s_dzx * terms.invstd)
        }))
        .collect());
    let mut out: Vec<T> = sums.iter().map(|s| T::narrow(s.0)).collect();
    out.extend(sums.iter().map(|s| T::narrow(s.1)));
    Ok((out, Shape::from((2, c))))
}

impl CustomOp3 for BnGradSums {
    fn name(&self) -> &'static str {
        "fairnas-batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch(
            "batch norm backward",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || grad_sums::<f32>(self, (s1, l1), (s2, l2), (s3, l3)),
            || grad_sums::<f64>(self, (s1, l1), (s2, l2), (s3, l3)),
        )
    }
}

/// Backward helper 2: `dx = w * invstd * (dz - mean(dz) - xhat * mean(dz * xhat))`, from `x`,
/// `dy` and `params = [weight; bias; sum dz; sum dz * xhat]` `[4, C]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BnGradInput(pub(crate) BatchNormAct);

fn grad_input<T: BnElement>(
    BnGradInput(op): &BnGradInput,
    (xs, xl): (&CpuStorage, &Layout),
    (gs, gl): (&CpuStorage, &Layout),
    (ps, pl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let BackwardInputs::<T> { n, c, hw, x, dy, p } = backward_inputs(op, (xs, xl), (gs, gl), (ps, pl), 4)?;
    let count = (n * hw).max(1) as f64;
    // dx = w * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)), xhat = (x - mean) * invstd,
    // i.e. per channel `k_dz * dz + k_x * (x - mean) + k_0`.
    let out = with_derivative!(op.activation, T, d => par_filled_chunks(n * c * hw, hw.max(1), |plane, dst| crate::simd::wide(#[inline(always)] || {
        let ch = plane % c;
        let t = channel_terms(op, &p, c, ch);
        let w = p[ch].wide();
        let mean_dz = p[2 * c + ch].wide() / count;
        let mean_dz_xhat = p[3 * c + ch].wide() / count;
        let k_dz = T::narrow(w * t.invstd);
        let k_x = T::narrow(-w * t.invstd * t.invstd * mean_dz_xhat);
        let k_0 = T::narrow(-w * t.invstd * mean_dz);
        let range = plane * hw..(plane + 1) * hw;
        for ((o, &v), &g) in dst.iter_mut().zip(&x[range.clone()]).zip(&dy[range]) {
            let dz = g * d(v * t.scale + t.shift);
            *o = k_dz * dz + k_x * (v - t.mean) + k_0;
        }
    })));
    Ok((out, xl.shape().clone()))
}

impl CustomOp3 for BnGradInput {
    fn name(&self) -> &'static str {
        "fairnas-batch-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch(
            "batch norm backward",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || grad_input::<f32>(self, (s1, l1), (s2, l2), (s3, l3)),
            || grad_input::<f64>(self, (s1, l1), (s2, l2), (s3, l3)),
        )
    }
}

/// Per-channel `[mean; biased variance]` `[2, C]` of `x` `[N, C, H, W]` (no gradient: used for
/// running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelMoments;

impl CustomOp1 for ChannelMoments {
    fn name(&self) -> &'static str {
        "fairnas-channel-moments"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn typed<T: BnElement>(s: &CpuStorage, l: &Layout) -> Result<(Vec<T>, Shape)> {
            let (n, c, hw) = dims_nchw("channel moments", l)?;
            let x = contiguous_slice::<T>(s, l)?;
            let stats = moments(&x, n, c, hw);
            let mut out: Vec<T> = stats.iter().map(|m| T::narrow(m.0)).collect();
            out.extend(stats.iter().map(|m| T::narrow(m.1)));
            Ok((out, Shape::from((2, c))))
        }
        dispatch("channel moments", &[s.dtype()], || typed::<f32>(s, l), || typed::<f64>(s, l))
    }
}

/// `act(x * scale + shift)` with per-channel `scale`, `shift` `[C]`: eval-mode BN with the
/// statistics folded in. Forward only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelAffineAct {
    pub activation: Activation,
}

impl CustomOp3 for ChannelAffineAct {
    fn name(&self) -> &'static str {
        "fairnas-channel-affine-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn typed<T: BnElement>(
            activation: Activation,
            (xs, xl): (&CpuStorage, &Layout),
            (ss, sl): (&CpuStorage, &Layout),
            (hs, hl): (&CpuStorage, &Layout),
        ) -> Result<(Vec<T>, Shape)> {
            let (n, c, hw) = dims_nchw("channel affine", xl)?;
            check_rows("channel affine scale", sl, 1, c)?;
            check_rows("channel affine shift", hl, 1, c)?;
            let x = contiguous_slice::<T>(xs, xl)?;
            let scale = contiguous_slice::<T>(ss, sl)?;
            let shift = contiguous_slice::<T>(hs, hl)?;
            let affine: Vec<(f64, f64)> =
                scale.iter().zip(shift.iter()).map(|(s, h)| (s.wide(), h.wide())).collect();
            Ok((apply_affine(&x, c, hw, n, &affine, activation), xl.shape().clone()))
        }
        #[cfg(feature = "cuda-emulator")]
        if crate::cuda_emulator::takes(&[s1.dtype(), s2.dtype(), s3.dtype()]) {
            let (n, c, hw) = dims_nchw("channel affine", l1)?;
            check_rows("channel affine scale", l2, 1, c)?;
            check_rows("channel affine shift", l3, 1, c)?;
            let plan = crate::cuda_plan::channel_affine_act((n, c, hw), self.activation)?;
            return Ok((
                crate::cuda_emulator::run_op(&plan, &[(s1, l1), (s2, l2), (s3, l3)], 0)?,
                l1.shape().clone(),
            ));
        }
        dispatch(
            "channel affine",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || typed::<f32>(self.activation, (s1, l1), (s2, l2), (s3, l3)),
            || typed::<f64>(self.activation, (s1, l1), (s2, l2), (s3, l3)),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (n, c, hw) = dims_nchw("channel affine", l1)?;
        check_rows("channel affine scale", l2, 1, c)?;
        check_rows("channel affine shift", l3, 1, c)?;
        let dev = s1.device();
        let x = crate::cuda::f32_view(s1, l1, "channel affine")?;
        let scale = crate::cuda::f32_view(s2, l2, "channel affine")?;
        let shift = crate::cuda::f32_view(s3, l3, "channel affine")?;
        let plan = crate::cuda_plan::channel_affine_act((n, c, hw), self.activation)?;
        Ok((crate::cuda::run_op(dev, &plan, &[&x, &scale, &shift], 0)?, l1.shape().clone()))
    }
}

/// Training-mode `act(batch_norm(x))` with batch statistics, differentiable in `x`, `weight`
/// and `bias`; also returns the batch's `[mean; biased variance]` `[2, C]` (for running
/// statistics), computed once and shared with the backward pass.
pub fn batch_norm_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    activation: Activation,
) -> Result<(Tensor, Tensor)> {
    let stats = moments_of(x)?;
    let c = stats.len();
    let mut flat: Vec<f64> = stats.iter().map(|m| m.0).collect();
    flat.extend(stats.iter().map(|m| m.1));
    let moments = Tensor::from_vec(flat, (2, c), x.device())?.to_dtype(x.dtype())?;
    let y = x.apply_op3(weight, bias, BatchNormAct { eps, activation, moments: Arc::new(stats) })?;
    Ok((y, moments))
}

/// Per-channel (mean, biased variance) of a CPU tensor `[N, C, H, W]`.
pub(crate) fn moments_of(x: &Tensor) -> Result<Vec<(f64, f64)>> {
    let (n, c, h, w) = x.dims4()?;
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => match cpu.dtype() {
            DType::F32 => Ok(moments(&contiguous_slice::<f32>(cpu, layout)?, n, c, h * w)),
            DType::F64 => Ok(moments(&contiguous_slice::<f64>(cpu, layout)?, n, c, h * w)),
            d => candle_core::bail!("batch norm supports f32 and f64, got {d:?}"),
        },
        _ => candle_core::bail!("batch norm: only CPU tensors are supported by this build"),
    }
}

/// `[mean; biased variance]` per channel, `[2, C]`, without gradient.
pub fn channel_moments(x: &Tensor) -> Result<Tensor> {
    x.apply_op1_no_bwd(&ChannelMoments)
}

/// Eval-mode `act(x * scale + shift)` per channel (forward only).
pub fn channel_affine_act(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    use crate::layout::on_device;
    on_device(x)?.apply_op3_no_bwd(&on_device(scale)?, &on_device(shift)?, &ChannelAffineAct { activation })
}
