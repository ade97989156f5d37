//! Pointwise (1x1) convolution on NCHW tensors: one GEMM per image, forward and backward.
//!
//! Why our own: candle has no 1x1 convolution that avoids either a broadcast batched matmul
//! (whose weight gradient is a reduction over the batch with per-element index arithmetic) or
//! transposing copies around one big GEMM. Each of those graph nodes also costs, in candle's
//! backward pass, a zero-filled gradient buffer plus an addition. Here the whole layer is one
//! node, and each image is a plain row-major GEMM `Y_n [O, HW] = W [O, C] X_n [C, HW]`:
//!
//! - input gradient: `dX_n = W^T dY_n`, one GEMM per image;
//! - weight gradient: `dW = sum_n dY_n X_n^T`, GEMMs accumulated image by image in a fixed
//!   order (the GEMM parallelises inside), so the sum does not depend on the thread count.
//!
//! Images run in parallel (single-threaded GEMMs) when there are at least as many images as
//! threads; otherwise each GEMM uses the threads itself.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;

use crate::buffer::par_filled_chunks;
use crate::layout::{contiguous_slice, dispatch_f32_f64};

/// `[N, C, H, W] x [O, C(, 1, 1)] -> [N, O, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointwiseConv;

pub(crate) trait GemmElement: WithDType + Default {}
impl GemmElement for f32 {}
impl GemmElement for f64 {}

fn weight_dims(l: &Layout) -> Result<(usize, usize)> {
    match l.dims() {
        &[o, c] | &[o, c, 1, 1] => Ok((o, c)),
        d => candle_core::bail!("pointwise conv: weight must be [O, C] or [O, C, 1, 1], got {d:?}"),
    }
}

fn input_dims(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h, w)),
        d => candle_core::bail!("pointwise conv: {what} must be [N, C, H, W], got {d:?}"),
    }
}

/// Row-major `dst [m, n] (+)= lhs [m, k] * rhs [k, n]` with explicit strides (row, column).
///
/// # Safety
/// Each pointer must address a matrix of the given size and strides inside one allocation,
/// `dst` must not overlap the inputs, and `dst` must be initialised when `accumulate` is set.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul<T: GemmElement>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    accumulate: bool,
    lhs: *const T,
    lhs_strides: (isize, isize),
    rhs: *const T,
    rhs_strides: (isize, isize),
    parallelism: Parallelism,
) {
    // SAFETY: the caller's guarantees, with `dst` row-major `[m, n]` (row stride n).
    unsafe {
        matmul_into_rows(
            (m, n, k),
            (dst, n as isize),
            accumulate,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallelism,
        )
    }
}

/// [`matmul`] into `dst` rows `dst_rs` elements apart (a column block of a wider matrix).
///
/// # Safety
/// As for [`matmul`], with `dst` addressing `m` rows of `n` elements, `dst_rs` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_into_rows<T: GemmElement>(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut T, isize),
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (isize, isize),
    parallelism: Parallelism,
) {
    let one = T::from_f64(1.0);
    // SAFETY: the caller guarantees the extents.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            if accumulate { one } else { T::zero() },
            one,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Per-image GEMMs into a fresh `[images, rows * cols]` buffer, parallel over images or inside.
pub(crate) fn per_image<T: GemmElement>(
    images: usize,
    rows: usize,
    cols: usize,
    image: impl Fn(usize, &mut [T], Parallelism) + Sync,
) -> Vec<T> {
    let threads = rayon::current_num_threads();
    let plane = rows * cols;
    if images >= threads {
        par_filled_chunks(images * plane, plane.max(1), |i, dst| image(i, dst, Parallelism::None))
    } else {
        let mut out = vec![T::zero(); images * plane];
        for (i, dst) in out.chunks_mut(plane.max(1)).enumerate() {
            image(i, dst, Parallelism::Rayon(threads));
        }
        out
    }
}

fn forward_typed<T: GemmElement>(
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let (n, c, h, w) = input_dims(xl, "input")?;
    let (o, wc) = weight_dims(wl)?;
    if wc != c {
        candle_core::bail!("pointwise conv: weight has {wc} input channels, the input {c}");
    }
    let hw = h * w;
    let x = contiguous_slice::<T>(xs, xl)?;
    let weight = contiguous_slice::<T>(ws, wl)?;
    let out = per_image(n, o, hw, |i, dst, par| {
        let src = &x[i * c * hw..(i + 1) * c * hw];
        // SAFETY: dst is [o, hw], weight [o, c], src [c, hw], all row-major and in bounds.
        unsafe {
            matmul(
                (o, hw, c),
                dst.as_mut_ptr(),
                false,
                weight.as_ptr(),
                (c as isize, 1),
                src.as_ptr(),
                (hw as isize, 1),
                par,
            )
        }
    });
    Ok((out, Shape::from((n, o, h, w))))
}

impl CustomOp2 for PointwiseConv {
    fn name(&self) -> &'static str {
        "fairnas-pointwise-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_f32_f64(
            "pointwise conv",
            &[s1.dtype(), s2.dtype()],
            || forward_typed::<f32>((s1, l1), (s2, l2)),
            || forward_typed::<f64>((s1, l1), (s2, l2)),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_x = grad_out.apply_op2_no_bwd(weight, &PointwiseInputGrad)?;
        let grad_w = x.apply_op2_no_bwd(grad_out, &PointwiseWeightGrad)?.reshape(weight.shape())?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

/// `dX [N, C, H, W]` from `dY [N, O, H, W]` and `W [O, C(, 1, 1)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PointwiseInputGrad;

impl CustomOp2 for PointwiseInputGrad {
    fn name(&self) -> &'static str {
        "fairnas-pointwise-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn typed<T: GemmElement>(
            (gs, gl): (&CpuStorage, &Layout),
            (ws, wl): (&CpuStorage, &Layout),
        ) -> Result<(Vec<T>, Shape)> {
            let (n, o, h, w) = input_dims(gl, "output gradient")?;
            let (wo, c) = weight_dims(wl)?;
            if wo != o {
                candle_core::bail!("pointwise input grad: weight has {wo} outputs, the gradient {o}");
            }
            let hw = h * w;
            let g = contiguous_slice::<T>(gs, gl)?;
            let weight = contiguous_slice::<T>(ws, wl)?;
            let out = per_image(n, c, hw, |i, dst, par| {
                let src = &g[i * o * hw..(i + 1) * o * hw];
                // SAFETY: dst is [c, hw]; W^T is [c, o] read from W [o, c] with strides (1, c);
                // src is [o, hw] row-major; all in bounds.
                unsafe {
                    matmul(
                        (c, hw, o),
                        dst.as_mut_ptr(),
                        false,
                        weight.as_ptr(),
                        (1, c as isize),
                        src.as_ptr(),
                        (hw as isize, 1),
                        par,
                    )
                }
            });
            Ok((out, Shape::from((n, c, h, w))))
        }
        dispatch_f32_f64(
            "pointwise conv",
            &[s1.dtype(), s2.dtype()],
            || typed::<f32>((s1, l1), (s2, l2)),
            || typed::<f64>((s1, l1), (s2, l2)),
        )
    }
}

/// Planes smaller than this (in elements) take the weight gradient as one GEMM over
/// channel-major copies instead of one GEMM per image.
const CHANNEL_MAJOR_BELOW: usize = 256;

/// `[N, C, HW]` -> `[C, N * HW]`.
fn channel_major<T: GemmElement>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
    par_filled_chunks(c * n * hw, (n * hw).max(1), |ch, dst| {
        for (i, d) in dst.chunks_exact_mut(hw.max(1)).enumerate() {
            d.copy_from_slice(&x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
        }
    })
}

/// `dW [O, C]` from the input `X [N, C, H, W]` and `dY [N, O, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PointwiseWeightGrad;

impl CustomOp2 for PointwiseWeightGrad {
    fn name(&self) -> &'static str {
        "fairnas-pointwise-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn typed<T: GemmElement>(
            (xs, xl): (&CpuStorage, &Layout),
            (gs, gl): (&CpuStorage, &Layout),
        ) -> Result<(Vec<T>, Shape)> {
            let (n, c, h, w) = input_dims(xl, "input")?;
            let (gn, o, gh, gw) = input_dims(gl, "output gradient")?;
            if (gn, gh, gw) != (n, h, w) {
                candle_core::bail!(
                    "pointwise weight grad: input {:?} vs gradient {:?}",
                    xl.dims(),
                    gl.dims()
                );
            }
            let hw = h * w;
            let x = contiguous_slice::<T>(xs, xl)?;
            let g = contiguous_slice::<T>(gs, gl)?;
            let mut out = vec![T::zero(); o * c];
            let par = Parallelism::Rayon(rayon::current_num_threads());
            if hw < CHANNEL_MAJOR_BELOW && n > 1 {
                // Small planes: one GEMM over all images, `dW = dY' X'^T` with `X'` `[C, N*HW]`
                // and `dY'` `[O, N*HW]` (channel-major copies). Image by image, each GEMM would
                // read and write the whole `[O, C]` accumulator for only HW (e.g. 16) products.
                let (xt, gt) = (channel_major(&x, n, c, hw), channel_major(&g, n, o, hw));
                let k = n * hw;
                // SAFETY: out is [o, c]; dY' is [o, k] row-major; X'^T is [k, c] read from
                // X' [c, k] with strides (1, k); all in bounds.
                unsafe {
                    matmul(
                        (o, c, k),
                        out.as_mut_ptr(),
                        false,
                        gt.as_ptr(),
                        (k as isize, 1),
                        xt.as_ptr(),
                        (1, k as isize),
                        par,
                    )
                }
                return Ok((out, Shape::from((o, c))));
            }
            for i in 0..n {
                let (gi, xi) = (&g[i * o * hw..(i + 1) * o * hw], &x[i * c * hw..(i + 1) * c * hw]);
                // SAFETY: out is [o, c]; dY_n is [o, hw] row-major; X_n^T is [hw, c] read from
                // X_n [c, hw] with strides (1, hw); `out` is initialised (zeros) for i > 0.
                unsafe {
                    matmul(
                        (o, c, hw),
                        out.as_mut_ptr(),
                        i > 0,
                        gi.as_ptr(),
                        (hw as isize, 1),
                        xi.as_ptr(),
                        (1, hw as isize),
                        par,
                    )
                }
            }
            Ok((out, Shape::from((o, c))))
        }
        dispatch_f32_f64(
            "pointwise conv",
            &[s1.dtype(), s2.dtype()],
            || typed::<f32>((s1, l1), (s2, l2)),
            || typed::<f64>((s1, l1), (s2, l2)),
        )
    }
}

/// Pointwise convolution of `input` `[N, C, H, W]` with `weight` `[O, C]` or `[O, C, 1, 1]`,
/// differentiable in both.
pub fn pointwise_conv(input: &Tensor, weight: &Tensor) -> Result<Tensor> {
    input.apply_op2(weight, PointwiseConv)
}
