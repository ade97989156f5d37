//! Fused squeeze-and-excitation: `x * sigmoid(W2 act(W1 mean_hw(x) + b1) + b2)`, per sample.
//!
//! The two 1x1 convolutions are passed with their biases packed as a last column
//! (`reduce = [R, C + 1]`, `expand = [C, R + 1]`) so the whole block is one three-input custom op.
//! Packing is a `cat` the caller does once per forward on tiny tensors; it keeps the op within
//! candle's `CustomOp3` and lets a backward pass return one gradient per packed tensor.
//!
//! The op reads the hidden tensor twice (pool, then scale) and writes it once, instead of the
//! five full-size passes the unfused candle graph makes.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::batch_norm::dims_nchw as nchw;
use crate::buffer::par_filled_chunks;
use crate::layout::{contiguous_slice, dispatch_f32_f64, on_device};
use crate::linear::dot;
use crate::Activation;

/// Squeeze-excite with the activation between the two FC layers (the gate is always sigmoid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqueezeExcite {
    pub inner: Activation,
}

fn dims(x: &Layout, reduce: &Layout, expand: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (n, c, hw) = match x.dims() {
        &[n, c, h, w] => (n, c, h * w),
        d => candle_core::bail!("squeeze-excite: input must be [N, C, H, W], got {d:?}"),
    };
    let r = match reduce.dims() {
        &[r, cp] if cp == c + 1 => r,
        d => candle_core::bail!(
            "squeeze-excite: packed reduce weight must be [R, {}] (weight | bias), got {d:?}",
            c + 1
        ),
    };
    match expand.dims() {
        &[cc, rp] if cc == c && rp == r + 1 => {}
        d => candle_core::bail!(
            "squeeze-excite: packed expand weight must be [{c}, {}] (weight | bias), got {d:?}",
            r + 1
        ),
    }
    Ok((n, c, hw, r))
}

/// The element types the op runs in: f32 (inference and training) and f64 (gradient checks).
trait SeElement:
    candle_core::WithDType + num_traits::Float + std::ops::AddAssign + Default + Send + Sync
{
    fn plane_sum(plane: &[Self]) -> f64;
}

impl SeElement for f32 {
    fn plane_sum(plane: &[f32]) -> f64 {
        plane_sum(plane)
    }
}

impl SeElement for f64 {
    fn plane_sum(plane: &[f64]) -> f64 {
        plane.iter().sum()
    }
}

/// Sum of a plane with 16 independent f32 lanes (a single running sum is a chain of dependent
/// adds the compiler may not reorder, which made the pool 4x slower than candle's), combined in
/// f64 at the end.
fn plane_sum(plane: &[f32]) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = plane.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail.iter().map(|&v| v as f64).sum::<f64>()
}

fn forward_typed<T: SeElement>(
    op: &SqueezeExcite,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<Vec<T>> {
    let (n, c, hw, r) = dims(l1, l2, l3)?;
    let x = contiguous_slice::<T>(s1, l1)?;
    let reduce = contiguous_slice::<T>(s2, l2)?;
    let expand = contiguous_slice::<T>(s3, l3)?;
    if hw == 0 {
        return Ok(Vec::new());
    }
    let gates = gates_typed(op.inner, &x, (n, c, hw, r), &reduce, &expand);
    // Scale every plane by its gate.
    Ok(par_filled_chunks(n * c * hw, hw, |plane, dst| {
        let (src, g) = (&x[plane * hw..(plane + 1) * hw], gates[plane]);
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s * g;
        }
    }))
}

/// The gates `[N, C]` of `x` `[N, C, HW]`: pool, reduce FC + `inner`, expand FC + sigmoid.
fn gates_typed<T: SeElement>(
    inner: Activation,
    x: &[T],
    (n, c, hw, r): (usize, usize, usize, usize),
    reduce: &[T],
    expand: &[T],
) -> Vec<T> {
    // Squeeze: one mean per (n, c) plane.
    let pooled: Vec<T> = x
        .par_chunks(hw)
        .map(|plane| T::from(T::plane_sum(plane) / hw as f64).unwrap_or_else(T::nan))
        .collect();
    // Excite: two small FCs per sample, samples in parallel; each dot product in 16 lanes (a
    // single running sum is one dependent add per weight: with SE ratio 1.0 the FCs took
    // longer than the pooling).
    let mut gates = vec![T::zero(); n * c];
    gates.par_chunks_mut(c.max(1)).enumerate().for_each(|(sample, gate)| {
        let p = &pooled[sample * c..(sample + 1) * c];
        crate::simd::wide(
            #[inline(always)]
            || {
                let hidden: Vec<T> = (0..r)
                    .map(|j| {
                        let row = &reduce[j * (c + 1)..(j + 1) * (c + 1)];
                        inner.apply(dot(&row[..c], p) + row[c])
                    })
                    .collect();
                for (i, g) in gate.iter_mut().enumerate() {
                    let row = &expand[i * (r + 1)..(i + 1) * (r + 1)];
                    *g = Activation::Sigmoid.apply(dot(&row[..r], &hidden) + row[r]);
                }
            },
        )
    });
    gates
}

/// Only the gates `[N, C]` of squeeze-excite (inference, CPU): for a consumer that applies
/// them as it reads `x` (the projection conv's kernel scales its input rows), so that the
/// gated tensor is never written. Forward only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqueezeExciteGates {
    pub inner: Activation,
}

impl CustomOp3 for SqueezeExciteGates {
    fn name(&self) -> &'static str {
        "fairnas-squeeze-excite-gates"
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
        fn typed<T: SeElement>(
            inner: Activation,
            (s1, l1): (&CpuStorage, &Layout),
            (s2, l2): (&CpuStorage, &Layout),
            (s3, l3): (&CpuStorage, &Layout),
        ) -> Result<(Vec<T>, Shape)> {
            let (n, c, hw, r) = dims(l1, l2, l3)?;
            if hw == 0 {
                candle_core::bail!("squeeze-excite gates: empty planes");
            }
            let x = contiguous_slice::<T>(s1, l1)?;
            let (reduce, expand) = (contiguous_slice::<T>(s2, l2)?, contiguous_slice::<T>(s3, l3)?);
            Ok((gates_typed(inner, &x, (n, c, hw, r), &reduce, &expand), Shape::from((n, c))))
        }
        dispatch_f32_f64(
            "squeeze-excite gates",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || typed::<f32>(self.inner, (s1, l1), (s2, l2), (s3, l3)),
            || typed::<f64>(self.inner, (s1, l1), (s2, l2), (s3, l3)),
        )
    }
}

/// The gates `[N, C]` of squeeze-excite on `x` `[N, C, H, W]` (packed operands from
/// [`pack_fc`]): `squeeze_excite_packed(x, ..) == x * gates[.., .., None, None]`. CPU only.
pub fn squeeze_excite_gates(
    x: &Tensor,
    reduce: &Tensor,
    expand: &Tensor,
    inner: Activation,
) -> Result<Tensor> {
    x.apply_op3_no_bwd(reduce, expand, &SqueezeExciteGates { inner })
}

impl CustomOp3 for SqueezeExcite {
    fn name(&self) -> &'static str {
        "fairnas-squeeze-excite"
    }

    /// Pool (a warp per plane), the two FCs (a block per sample), scale: x is read twice and
    /// written once, as on the CPU.
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
        let (n, c, hw, r) = dims(l1, l2, l3)?;
        let dev = s1.device();
        let x = crate::cuda::f32_view(s1, l1, "squeeze-excite")?;
        let reduce = crate::cuda::f32_view(s2, l2, "squeeze-excite")?;
        let expand = crate::cuda::f32_view(s3, l3, "squeeze-excite")?;
        let plan = crate::cuda_plan::squeeze_excite((n, c, hw, r), self.inner)?;
        Ok((crate::cuda::run_op(dev, &plan, &[&x, &reduce, &expand], 0)?, l1.shape().clone()))
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
        #[cfg(feature = "cuda-emulator")]
        if crate::cuda_emulator::takes(&[s1.dtype(), s2.dtype(), s3.dtype()]) {
            let (n, c, hw, r) = dims(l1, l2, l3)?;
            let plan = crate::cuda_plan::squeeze_excite((n, c, hw, r), self.inner)?;
            return Ok((
                crate::cuda_emulator::run_op(&plan, &[(s1, l1), (s2, l2), (s3, l3)], 0)?,
                l1.shape().clone(),
            ));
        }
        let args = ((s1, l1), (s2, l2), (s3, l3));
        let out = match (s1.dtype(), s2.dtype(), s3.dtype()) {
            (DType::F32, DType::F32, DType::F32) => {
                CpuStorage::F32(forward_typed(self, args.0, args.1, args.2)?)
            }
            (DType::F64, DType::F64, DType::F64) => {
                CpuStorage::F64(forward_typed(self, args.0, args.1, args.2)?)
            }
            (a, b, c) => {
                candle_core::bail!("squeeze-excite supports f32 or f64 throughout, got {a:?}, {b:?}, {c:?}")
            }
        };
        Ok((out, l1.shape().clone()))
    }

    /// The backward pass: the two full-size passes are our ops ([`PlaneStats`]: mean of x and
    /// `sum_hw(dy * x)` in one read; [`ScalePlanes`]: `dy * g + d_pool / HW`); everything else
    /// works on `[N, C]` and `[N, R]` matrices in candle ops. Recomputes the squeeze/excite
    /// intermediates instead of storing them.
    fn bwd(
        &self,
        x: &Tensor,
        reduce: &Tensor,
        expand: &Tensor,
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c, h, w) = x.dims4()?;
        let r = reduce.dim(0)?;
        // Contiguous copies of the tiny weight blocks: cuBLAS takes no row stride but the width.
        let (w1, b1) = (reduce.narrow(1, 0, c)?.contiguous()?, reduce.narrow(1, c, 1)?.squeeze(1)?);
        let (w2, b2) = (expand.narrow(1, 0, r)?.contiguous()?, expand.narrow(1, r, 1)?.squeeze(1)?);
        let grad = on_device(grad)?;
        let stats = x.apply_op2_no_bwd(&grad, &PlaneStats)?; // [2, N, C]
        let (pooled, d_gate) = (stats.get(0)?, stats.get(1)?);
        let z = pooled.matmul(&w1.t()?)?.broadcast_add(&b1)?; // [N, R]
        let hidden = self.inner.forward(&z)?;
        let gate = Activation::Sigmoid.forward(&hidden.matmul(&w2.t()?)?.broadcast_add(&b2)?)?; // [N, C]
        let d_gate_logit = (d_gate * gate.mul(&gate.affine(-1.0, 1.0)?)?)?;
        let d_w2 = d_gate_logit.t()?.matmul(&hidden)?; // [C, R]
        let d_b2 = d_gate_logit.sum(0)?;
        let d_z = d_gate_logit.matmul(&w2)?.mul(&self.inner.derivative(&z)?)?; // [N, R]
        let d_w1 = d_z.t()?.matmul(&pooled)?; // [R, C]
        let d_b1 = d_z.sum(0)?;
        let d_pooled = (d_z.matmul(&w1)? / (h * w) as f64)?.contiguous()?;
        let d_x = grad.apply_op3_no_bwd(&gate.contiguous()?, &d_pooled, &ScalePlanes)?;
        let d_reduce = Tensor::cat(&[d_w1, d_b1.unsqueeze(1)?], 1)?;
        let d_expand = Tensor::cat(&[d_w2, d_b2.unsqueeze(1)?], 1)?;
        Ok((Some(d_x), Some(d_reduce), Some(d_expand)))
    }
}

/// Per-plane statistics of `x` `[N, C, H, W]` against `y` of the same shape, in one read of
/// both: `[2, N, C]` = `[mean_hw(x); sum_hw(x * y)]` (the pooled input and the gate gradient of
/// the SE backward pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneStats;

/// (N, C, HW) of plane stats' two operands, which must have one shape.
fn plane_stats_dims(x: &Layout, y: &Layout) -> Result<(usize, usize, usize)> {
    if y.dims() != x.dims() {
        candle_core::bail!("plane stats: shapes differ: {:?} vs {:?}", x.dims(), y.dims());
    }
    nchw("plane stats", x)
}

fn plane_stats_typed<T: SeElement>(
    (xs, xl): (&CpuStorage, &Layout),
    (ys, yl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let (n, c, hw) = plane_stats_dims(xl, yl)?;
    let x = contiguous_slice::<T>(xs, xl)?;
    let y = contiguous_slice::<T>(ys, yl)?;
    let planes = n * c;
    let stats: Vec<(T, T)> = (0..planes)
        .into_par_iter()
        .map(|p| {
            let (xp, yp) = (&x[p * hw..(p + 1) * hw], &y[p * hw..(p + 1) * hw]);
            let mean = T::from(T::plane_sum(xp) / hw.max(1) as f64).unwrap_or_else(T::nan);
            let dot = xp
                .iter()
                .zip(yp)
                .fold(0f64, |acc, (&a, &b)| acc + <T as candle_core::WithDType>::to_f64(a * b));
            (mean, T::from(dot).unwrap_or_else(T::nan))
        })
        .collect();
    let mut out: Vec<T> = stats.iter().map(|s| s.0).collect();
    out.extend(stats.iter().map(|s| s.1));
    Ok((out, Shape::from((2, n, c))))
}

impl candle_core::CustomOp2 for PlaneStats {
    fn name(&self) -> &'static str {
        "fairnas-plane-stats"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        #[cfg(feature = "cuda-emulator")]
        if crate::cuda_emulator::takes(&[s1.dtype(), s2.dtype()]) {
            let (n, c, hw) = plane_stats_dims(l1, l2)?;
            let plan = crate::cuda_plan::plane_stats(n * c, hw)?;
            return Ok((
                crate::cuda_emulator::run_op(&plan, &[(s1, l1), (s2, l2)], 0)?,
                Shape::from((2, n, c)),
            ));
        }
        crate::layout::dispatch_f32_f64(
            "plane stats",
            &[s1.dtype(), s2.dtype()],
            || plane_stats_typed::<f32>((s1, l1), (s2, l2)),
            || plane_stats_typed::<f64>((s1, l1), (s2, l2)),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, hw) = plane_stats_dims(l1, l2)?;
        let dev = s1.device();
        let x = crate::cuda::f32_view(s1, l1, "plane stats")?;
        let y = crate::cuda::f32_view(s2, l2, "plane stats")?;
        let plan = crate::cuda_plan::plane_stats(n * c, hw)?;
        Ok((crate::cuda::run_op(dev, &plan, &[&x, &y], 0)?, Shape::from((2, n, c))))
    }
}

/// `x * gate + bias` with `x` `[N, C, H, W]` and `gate`, `bias` `[N, C]` broadcast over each
/// plane: the SE input gradient `dy * g + d_pool / HW` in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalePlanes;

fn check_plane_operands(x: &Layout, gate: &Layout, bias: &Layout) -> Result<(usize, usize, usize)> {
    let (n, c, hw) = nchw("scale planes", x)?;
    for (what, l) in [("gate", gate), ("bias", bias)] {
        if l.dims() != [n, c] {
            candle_core::bail!("scale planes: {what} must be [{n}, {c}], got {:?}", l.dims());
        }
    }
    Ok((n, c, hw))
}

fn scale_planes_typed<T: SeElement>(
    (xs, xl): (&CpuStorage, &Layout),
    (gs, gl): (&CpuStorage, &Layout),
    (bs, bl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let (n, c, hw) = check_plane_operands(xl, gl, bl)?;
    let x = contiguous_slice::<T>(xs, xl)?;
    let gate = contiguous_slice::<T>(gs, gl)?;
    let bias = contiguous_slice::<T>(bs, bl)?;
    let out = par_filled_chunks(n * c * hw, hw, |plane, dst| {
        let (g, b) = (gate[plane], bias[plane]);
        for (d, &v) in dst.iter_mut().zip(&x[plane * hw..(plane + 1) * hw]) {
            *d = v * g + b;
        }
    });
    Ok((out, xl.shape().clone()))
}

impl CustomOp3 for ScalePlanes {
    fn name(&self) -> &'static str {
        "fairnas-scale-planes"
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
        #[cfg(feature = "cuda-emulator")]
        if crate::cuda_emulator::takes(&[s1.dtype(), s2.dtype(), s3.dtype()]) {
            let (n, c, hw) = check_plane_operands(l1, l2, l3)?;
            let plan = crate::cuda_plan::scale_planes(n * c * hw, hw, true)?;
            return Ok((
                crate::cuda_emulator::run_op(&plan, &[(s1, l1), (s2, l2), (s3, l3)], 0)?,
                l1.shape().clone(),
            ));
        }
        crate::layout::dispatch_f32_f64(
            "scale planes",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || scale_planes_typed::<f32>((s1, l1), (s2, l2), (s3, l3)),
            || scale_planes_typed::<f64>((s1, l1), (s2, l2), (s3, l3)),
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
        let (n, c, hw) = check_plane_operands(l1, l2, l3)?;
        let dev = s1.device();
        let x = crate::cuda::f32_view(s1, l1, "scale planes")?;
        let gate = crate::cuda::f32_view(s2, l2, "scale planes")?;
        let bias = crate::cuda::f32_view(s3, l3, "scale planes")?;
        let plan = crate::cuda_plan::scale_planes(n * c * hw, hw, true)?;
        Ok((crate::cuda::run_op(dev, &plan, &[&x, &gate, &bias], 0)?, l1.shape().clone()))
    }
}

/// Packs a 1x1 conv's weight `[O, I, 1, 1]` (or `[O, I]`) and bias `[O]` into the `[O, I + 1]`
/// operand [`SqueezeExcite`] takes. Inference packs once at load time.
pub fn pack_fc(weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let out = weight.dim(0)?;
    let inputs = weight.elem_count() / out.max(1);
    Tensor::cat(&[weight.reshape((out, inputs))?, bias.reshape((out, 1))?], 1)
}

/// Squeeze-excite of `x` `[N, C, H, W]` with packed operands from [`pack_fc`].
pub fn squeeze_excite_packed(
    x: &Tensor,
    reduce: &Tensor,
    expand: &Tensor,
    inner: Activation,
) -> Result<Tensor> {
    on_device(x)?.apply_op3(&on_device(reduce)?, &on_device(expand)?, SqueezeExcite { inner })
}

/// Squeeze-excite of `x` `[N, C, H, W]` with PyTorch-layout 1x1 conv weights
/// (`reduce_w [R, C, 1, 1]`, `reduce_b [R]`, `expand_w [C, R, 1, 1]`, `expand_b [C]`).
pub fn squeeze_excite(
    x: &Tensor,
    reduce_w: &Tensor,
    reduce_b: &Tensor,
    expand_w: &Tensor,
    expand_b: &Tensor,
    inner: Activation,
) -> Result<Tensor> {
    squeeze_excite_packed(x, &pack_fc(reduce_w, reduce_b)?, &pack_fc(expand_w, expand_b)?, inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The SE block written with candle's own ops (the unfused graph).
    fn reference(
        x: &Tensor,
        rw: &Tensor,
        rb: &Tensor,
        ew: &Tensor,
        eb: &Tensor,
        inner: Activation,
    ) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let r = rw.dim(0)?;
        let pooled = x.mean_keepdim((2, 3))?.reshape((n, c))?;
        let z = pooled.matmul(&rw.reshape((r, c))?.t()?)?.broadcast_add(rb)?;
        let z = inner.forward(&z)?;
        let g = z.matmul(&ew.reshape((c, r))?.t()?)?.broadcast_add(eb)?;
        let g = Activation::Sigmoid.forward(&g)?;
        x.broadcast_mul(&g.reshape((n, c, 1, 1))?)
    }

    #[test]
    fn matches_unfused_candle_graph() -> Result<()> {
        let dev = Device::Cpu;
        for inner in [Activation::Swish, Activation::Relu] {
            let (n, c, r) = (3, 12, 5);
            let x = Tensor::randn(0f32, 1., (n, c, 7, 9), &dev)?;
            let rw = Tensor::randn(0f32, 0.5, (r, c, 1, 1), &dev)?;
            let rb = Tensor::randn(0f32, 0.5, r, &dev)?;
            let ew = Tensor::randn(0f32, 0.5, (c, r, 1, 1), &dev)?;
            let eb = Tensor::randn(0f32, 0.5, c, &dev)?;
            let got = squeeze_excite(&x, &rw, &rb, &ew, &eb, inner)?;
            let want = reference(&x, &rw, &rb, &ew, &eb, inner)?;
            let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff <= 1e-5 * scale, "{inner}: {diff} vs scale {scale}");
        }
        Ok(())
    }

    #[test]
    fn plane_stats_and_scale_planes_match_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1., (3, 5, 7, 9), &dev)?;
        let y = Tensor::randn(0f64, 1., (3, 5, 7, 9), &dev)?;
        let stats = x.apply_op2_no_bwd(&y, &PlaneStats)?;
        let mean = x.mean((2, 3))?;
        let dot = (&x * &y)?.sum((2, 3))?;
        let close = |a: &Tensor, b: &Tensor| -> Result<f64> { (a - b)?.abs()?.max_all()?.to_scalar::<f64>() };
        assert!(close(&stats.get(0)?, &mean)? < 1e-12);
        assert!(close(&stats.get(1)?, &dot)? < 1e-12);
        let gate = Tensor::randn(0f64, 1., (3, 5), &dev)?;
        let bias = Tensor::randn(0f64, 1., (3, 5), &dev)?;
        let got = x.apply_op3_no_bwd(&gate, &bias, &ScalePlanes)?;
        let want =
            x.broadcast_mul(&gate.reshape((3, 5, 1, 1))?)?.broadcast_add(&bias.reshape((3, 5, 1, 1))?)?;
        assert!(close(&got, &want)? < 1e-12);
        let err = x.apply_op3_no_bwd(&gate.t()?, &bias, &ScalePlanes).unwrap_err().to_string();
        assert!(err.contains("gate must be [3, 5]"), "{err}");
        Ok(())
    }

    #[test]
    fn rejects_mismatched_weights() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 3, 3), DType::F32, &dev).unwrap();
        let rw = Tensor::zeros((2, 5, 1, 1), DType::F32, &dev).unwrap();
        let rb = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let ew = Tensor::zeros((4, 2, 1, 1), DType::F32, &dev).unwrap();
        let eb = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let err = squeeze_excite(&x, &rw, &rb, &ew, &eb, Activation::Swish).unwrap_err().to_string();
        assert!(err.contains("[R, 5]"), "{err}");
    }
}
