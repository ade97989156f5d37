//! Dense (`groups = 1`) `k x k` convolution on NCHW tensors as im2col + one GEMM per image,
//! forward and backward: the stem and the strided 1x1 projections of skip candidates when
//! training.
//!
//! Why our own: candle's conv2d backward always computes the input gradient (a
//! `conv_transpose2d`), even for the stem, whose input is the image batch and needs none, and
//! its weight gradient is a convolution over transposed copies. Here:
//!
//! - forward: `Y_n [O, Ho*Wo] = W [O, C*k*k] cols_n [C*k*k, Ho*Wo]`, images in parallel;
//! - weight gradient: `dW = sum_n dY_n cols_n^T`, summed over fixed chunks of images in
//!   parallel and then in chunk order, so the result does not depend on the thread count;
//! - input gradient (only when the input is tracked): `dcols_n = W^T dY_n`, scattered back
//!   with col2im.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::depthwise::{conv_output_size, Padding2d};
use crate::layout::{contiguous_slice, dispatch_f32_f64};
use crate::pointwise::{matmul, per_image, GemmElement};
use gemm::Parallelism;

/// `[N, C, H, W] x [O, C, k, k] -> [N, O, Ho, Wo]` with `stride` and zero `padding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseConv {
    pub stride: usize,
    pub padding: Padding2d,
}

/// Images whose weight-gradient GEMMs one task accumulates (a fixed number, for determinism).
const IMAGES_PER_PARTIAL: usize = 8;

/// The checked shape of one dense convolution.
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    batch: usize,
    in_c: usize,
    height: usize,
    width: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: Padding2d,
    out_height: usize,
    out_width: usize,
}

impl ConvShape {
    fn new(
        (batch, in_c, height, width): (usize, usize, usize, usize),
        (out_c, wc, kh, kw): (usize, usize, usize, usize),
        stride: usize,
        padding: Padding2d,
    ) -> Result<Self> {
        if wc != in_c || kh != kw {
            candle_core::bail!(
                "dense conv: weight [{out_c}, {wc}, {kh}, {kw}] does not fit a {in_c}-channel input \
                 (expected [O, {in_c}, k, k])"
            );
        }
        if stride == 0 {
            candle_core::bail!("dense conv: stride must be positive");
        }
        let p = padding;
        Ok(ConvShape {
            batch,
            in_c,
            height,
            width,
            out_c,
            kernel: kh,
            stride,
            padding,
            out_height: conv_output_size(height, p.top, p.bottom, kh, stride)?,
            out_width: conv_output_size(width, p.left, p.right, kh, stride)?,
        })
    }

    /// Rows of an image's column matrix: one per (input channel, tap).
    fn col_rows(&self) -> usize {
        self.in_c * self.kernel * self.kernel
    }

    fn out_plane(&self) -> usize {
        self.out_height * self.out_width
    }

    /// For tap offset `t` along an axis of `len` inputs with `pad` before it, the output range
    /// whose input `o * stride + t - pad` lies inside `0..len`.
    fn valid(&self, outputs: usize, len: usize, tap: usize, pad: usize) -> std::ops::Range<usize> {
        let s = self.stride;
        let lo = if tap >= pad { 0 } else { (pad - tap).div_ceil(s) };
        let hi = if len + pad > tap { (len + pad - tap - 1) / s + 1 } else { 0 };
        lo.min(outputs)..hi.min(outputs).max(lo.min(outputs))
    }

    /// Visits every (column-matrix index, input index) pair of one image whose input lies
    /// inside the image; the rest of the column matrix is the padding's zeros.
    #[inline(always)]
    fn for_each_tap(&self, mut visit: impl FnMut(usize, usize)) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let (h, w, ho, wo) = (self.height, self.width, self.out_height, self.out_width);
        for c in 0..self.in_c {
            for ky in 0..k {
                let rows = self.valid(ho, h, ky, p.top);
                for kx in 0..k {
                    let row = (c * k + ky) * k + kx;
                    let cols = self.valid(wo, w, kx, p.left);
                    for oy in rows.clone() {
                        let iy = oy * s + ky - p.top;
                        for ox in cols.clone() {
                            visit(row * ho * wo + oy * wo + ox, c * h * w + iy * w + ox * s + kx - p.left);
                        }
                    }
                }
            }
        }
    }

    /// The column matrix `[C*k*k, Ho*Wo]` of one image (zeros where the window leaves it).
    fn im2col<T: GemmElement>(&self, image: &[T]) -> Vec<T> {
        let mut cols = vec![T::zero(); self.col_rows() * self.out_plane()];
        self.for_each_tap(|at, from| cols[at] = image[from]);
        cols
    }

    /// Row `row` (input channel `c`, tap `(ky, kx)`) of [`ConvShape::im2col`] into a zeroed
    /// `dst` of `Ho * Wo`: a strided copy per output row.
    fn im2col_row<T: GemmElement>(&self, image: &[T], row: usize, dst: &mut [T]) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let (c, ky, kx) = (row / (k * k), row / k % k, row % k);
        let (h, w, wo) = (self.height, self.width, self.out_width);
        let cols = self.valid(wo, w, kx, p.left);
        if cols.is_empty() {
            return;
        }
        for oy in self.valid(self.out_height, h, ky, p.top) {
            let from = c * h * w + (oy * s + ky - p.top) * w + cols.start * s + kx - p.left;
            let out = &mut dst[oy * wo + cols.start..oy * wo + cols.end];
            for (d, &v) in out.iter_mut().zip(image[from..].iter().step_by(s)) {
                *d = v;
            }
        }
    }

    /// Adds a column-matrix gradient back onto one image's input gradient.
    fn col2im_add<T: GemmElement>(&self, cols: &[T], image: &mut [T]) {
        self.for_each_tap(|at, to| image[to] += cols[at]);
    }
}

fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => candle_core::bail!("dense conv: {what} must be 4-D, got {d:?}"),
    }
}

fn forward_typed<T: GemmElement>(
    op: &DenseConv,
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let g = ConvShape::new(dims4(xl, "input")?, dims4(wl, "weight")?, op.stride, op.padding)?;
    let x = contiguous_slice::<T>(xs, xl)?;
    let weight = contiguous_slice::<T>(ws, wl)?;
    let in_image = g.in_c * g.height * g.width;
    let (rows, plane) = (g.col_rows(), g.out_plane());
    let out = per_image(g.batch, g.out_c, plane, |i, dst, par| {
        let cols = g.im2col(&x[i * in_image..(i + 1) * in_image]);
        // SAFETY: dst is [O, Ho*Wo], weight [O, C*k*k], cols [C*k*k, Ho*Wo], row-major, in bounds.
        unsafe {
            matmul(
                (g.out_c, plane, rows),
                dst.as_mut_ptr(),
                false,
                weight.as_ptr(),
                (rows as isize, 1),
                cols.as_ptr(),
                (plane as isize, 1),
                par,
            )
        }
    });
    Ok((out, Shape::from((g.batch, g.out_c, g.out_height, g.out_width))))
}

impl CustomOp2 for DenseConv {
    fn name(&self) -> &'static str {
        "fairnas-dense-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_f32_f64(
            "dense conv",
            &[s1.dtype(), s2.dtype()],
            || forward_typed::<f32>(self, (s1, l1), (s2, l2)),
            || forward_typed::<f64>(self, (s1, l1), (s2, l2)),
        )
    }

    /// The input gradient only when the input is tracked (the stem's image batch is not).
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        dense_conv_grads(x, weight, grad_out, self.stride, self.padding)
    }
}

/// The gradients of a dense convolution from its output gradient: the input's (None when `x`
/// is not tracked by autograd) and the weight's.
pub(crate) fn dense_conv_grads(
    x: &Tensor,
    weight: &Tensor,
    grad_out: &Tensor,
    stride: usize,
    padding: Padding2d,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (_, _, height, width) = x.dims4()?;
    let grad_x = if x.track_op() {
        Some(grad_out.apply_op2_no_bwd(weight, &DenseInputGrad { stride, padding, height, width })?)
    } else {
        None
    };
    let grad_w =
        x.apply_op2_no_bwd(grad_out, &DenseWeightGrad { stride, padding, kernel: weight.dim(2)? })?;
    Ok((grad_x, Some(grad_w)))
}

/// `dX [N, C, H, W]` from `dY [N, O, Ho, Wo]` and `W [O, C, k, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DenseInputGrad {
    stride: usize,
    padding: Padding2d,
    height: usize,
    width: usize,
}

impl CustomOp2 for DenseInputGrad {
    fn name(&self) -> &'static str {
        "fairnas-dense-conv-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn typed<T: GemmElement>(
            op: &DenseInputGrad,
            (gs, gl): (&CpuStorage, &Layout),
            (ws, wl): (&CpuStorage, &Layout),
        ) -> Result<(Vec<T>, Shape)> {
            let (n, o, ho, wo) = dims4(gl, "output gradient")?;
            let weight_dims = dims4(wl, "weight")?;
            let c = weight_dims.1;
            let g = ConvShape::new((n, c, op.height, op.width), weight_dims, op.stride, op.padding)?;
            if (g.out_c, g.out_height, g.out_width) != (o, ho, wo) {
                candle_core::bail!(
                    "dense conv input grad: gradient {:?} does not fit weight {:?}",
                    gl.dims(),
                    wl.dims()
                );
            }
            let grad = contiguous_slice::<T>(gs, gl)?;
            let weight = contiguous_slice::<T>(ws, wl)?;
            let (rows, plane) = (g.col_rows(), g.out_plane());
            let out = per_image(n, c, op.height * op.width, |i, dst, par| {
                let mut cols = vec![T::zero(); rows * plane];
                let src = &grad[i * o * plane..(i + 1) * o * plane];
                // SAFETY: cols is [C*k*k, Ho*Wo]; W^T is [C*k*k, O] read from W [O, C*k*k] with
                // strides (1, C*k*k); src is [O, Ho*Wo] row-major; all in bounds.
                unsafe {
                    matmul(
                        (rows, plane, o),
                        cols.as_mut_ptr(),
                        false,
                        weight.as_ptr(),
                        (1, rows as isize),
                        src.as_ptr(),
                        (plane as isize, 1),
                        par,
                    )
                }
                g.col2im_add(&cols, dst);
            });
            Ok((out, Shape::from((n, c, op.height, op.width))))
        }
        dispatch_f32_f64(
            "dense conv",
            &[s1.dtype(), s2.dtype()],
            || typed::<f32>(self, (s1, l1), (s2, l2)),
            || typed::<f64>(self, (s1, l1), (s2, l2)),
        )
    }
}

/// `dW [O, C, k, k]` from the input `X [N, C, H, W]` and `dY [N, O, Ho, Wo]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DenseWeightGrad {
    stride: usize,
    padding: Padding2d,
    kernel: usize,
}

impl CustomOp2 for DenseWeightGrad {
    fn name(&self) -> &'static str {
        "fairnas-dense-conv-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn typed<T: GemmElement>(
            op: &DenseWeightGrad,
            (xs, xl): (&CpuStorage, &Layout),
            (gs, gl): (&CpuStorage, &Layout),
        ) -> Result<(Vec<T>, Shape)> {
            let (n, c, h, w) = dims4(xl, "input")?;
            let (gn, o, gho, gwo) = dims4(gl, "output gradient")?;
            let k = op.kernel;
            let g = ConvShape::new((n, c, h, w), (o, c, k, k), op.stride, op.padding)?;
            if (gn, gho, gwo) != (n, g.out_height, g.out_width) {
                candle_core::bail!(
                    "dense conv weight grad: input {:?} vs gradient {:?}",
                    xl.dims(),
                    gl.dims()
                );
            }
            let x = contiguous_slice::<T>(xs, xl)?;
            let grad = contiguous_slice::<T>(gs, gl)?;
            let (rows, plane, in_image) = (g.col_rows(), g.out_plane(), c * h * w);
            let partials: Vec<Vec<T>> = (0..n.div_ceil(IMAGES_PER_PARTIAL))
                .into_par_iter()
                .map(|chunk| {
                    let mut acc = vec![T::zero(); o * rows];
                    let images = chunk * IMAGES_PER_PARTIAL..((chunk + 1) * IMAGES_PER_PARTIAL).min(n);
                    for (j, i) in images.enumerate() {
                        let cols = g.im2col(&x[i * in_image..(i + 1) * in_image]);
                        let src = &grad[i * o * plane..(i + 1) * o * plane];
                        // SAFETY: acc is [O, C*k*k]; dY_n is [O, Ho*Wo] row-major; cols^T is
                        // [Ho*Wo, C*k*k] read from cols [C*k*k, Ho*Wo] with strides (1, Ho*Wo);
                        // acc is initialised (zeros) before the first accumulation.
                        unsafe {
                            matmul(
                                (o, rows, plane),
                                acc.as_mut_ptr(),
                                j > 0,
                                src.as_ptr(),
                                (plane as isize, 1),
                                cols.as_ptr(),
                                (1, plane as isize),
                                Parallelism::None,
                            )
                        }
                    }
                    acc
                })
                .collect();
            let mut out = vec![T::zero(); o * rows];
            for partial in &partials {
                for (d, &v) in out.iter_mut().zip(partial) {
                    *d += v;
                }
            }
            Ok((out, Shape::from((o, c, k, k))))
        }
        dispatch_f32_f64(
            "dense conv",
            &[s1.dtype(), s2.dtype()],
            || typed::<f32>(self, (s1, l1), (s2, l2)),
            || typed::<f64>(self, (s1, l1), (s2, l2)),
        )
    }
}

/// Dense convolution of `input` `[N, C, H, W]` with `weight` `[O, C, k, k]`, differentiable in
/// both (the input's gradient only when it is tracked).
pub fn dense_conv2d(input: &Tensor, weight: &Tensor, stride: usize, padding: Padding2d) -> Result<Tensor> {
    input.apply_op2(weight, DenseConv { stride, padding })
}

/// Inference-time dense convolution with eval-mode BN folded into its weights and the
/// activation in the epilogue: `act(W' * x + shift)`, the packed operand `[O, C*k*k + 1]`
/// being [`crate::fold_batch_norm`] of the weight flattened to `[O, C*k*k]`. Forward only.
///
/// Why: the stem's output is the network's largest tensor after the first depthwise layer
/// (`[32, 32, 112, 112]`, 51 MB at batch 32); a separate BN + activation pass reads and writes
/// it once more. Here the column matrices go through the same register-tiled kernel as the
/// pointwise convs, with shift and activation applied before the single store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldedDenseConv {
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding2d,
    pub activation: crate::Activation,
}

fn folded_forward_typed<T: GemmElement + crate::folded_pointwise::Element>(
    op: &FoldedDenseConv,
    (xs, xl): (&CpuStorage, &Layout),
    (ps, pl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let (n, c, h, w) = dims4(xl, "input")?;
    let k = op.kernel;
    let out_c = match pl.dims() {
        &[o, packed] if packed == c * k * k + 1 => o,
        d => candle_core::bail!(
            "folded dense conv: packed weight must be [O, {}] ([O, C*k*k] weights and a shift column) \
             for a {c}-channel input and a {k}x{k} kernel, got {d:?}",
            c * k * k + 1
        ),
    };
    let g = ConvShape::new((n, c, h, w), (out_c, c, k, k), op.stride, op.padding)?;
    let x = contiguous_slice::<T>(xs, xl)?;
    let packed = contiguous_slice::<T>(ps, pl)?;
    let in_image = c * h * w;
    let (rows, plane) = (g.col_rows(), g.out_plane());
    // One task per (image, column-matrix row): an image's im2col alone is a third of the
    // stem at batch 1, on one thread.
    let mut cols = vec![T::zero(); n * rows * plane];
    cols.par_chunks_mut(plane.max(1)).enumerate().for_each(|(i, dst)| {
        g.im2col_row(&x[(i / rows) * in_image..(i / rows + 1) * in_image], i % rows, dst)
    });
    let out = crate::folded_pointwise::folded_forward(
        op.activation,
        (&cols, (n, rows, plane)),
        (&packed, out_c),
        None,
        None,
    );
    Ok((out, Shape::from((n, out_c, g.out_height, g.out_width))))
}

impl CustomOp2 for FoldedDenseConv {
    fn name(&self) -> &'static str {
        "fairnas-folded-dense-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if self.stride == 0 || self.kernel == 0 {
            candle_core::bail!("folded dense conv: kernel and stride must be positive");
        }
        dispatch_f32_f64(
            "folded dense conv",
            &[s1.dtype(), s2.dtype()],
            || folded_forward_typed::<f32>(self, (s1, l1), (s2, l2)),
            || folded_forward_typed::<f64>(self, (s1, l1), (s2, l2)),
        )
    }
}

/// `act(bn(conv(x)))` for eval-mode BN folded into `packed` (see [`FoldedDenseConv`]). CPU only.
pub fn folded_dense_conv2d(
    x: &Tensor,
    packed: &Tensor,
    kernel: usize,
    stride: usize,
    padding: Padding2d,
    activation: crate::Activation,
) -> Result<Tensor> {
    x.apply_op2_no_bwd(packed, &FoldedDenseConv { kernel, stride, padding, activation })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fold_batch_norm, Activation};
    use candle_core::{DType, Device};

    /// The folded op against the unfused graph (our dense conv, then `x * scale + shift` and
    /// the activation as candle ops, in f64): stem-like 3x3 stride 2 with symmetric and
    /// TF-SAME padding, and a strided 1x1 projection.
    #[test]
    fn folded_matches_conv_then_batch_norm_and_activation() -> Result<()> {
        let dev = Device::Cpu;
        for (c, o, size, k, s, pad) in [
            (3, 32, 23, 3, 2, Padding2d::symmetric(3)),
            (3, 16, 20, 3, 2, Padding2d::tf_same(20, 20, 3, 2)),
            (24, 40, 14, 1, 2, Padding2d::symmetric(1)),
        ] {
            let x = Tensor::randn(0f64, 1., (2, c, size, size), &dev)?;
            let weight = Tensor::randn(0f64, 0.3, (o, c, k, k), &dev)?;
            let scale = Tensor::randn(0f64, 1., o, &dev)?;
            let shift = Tensor::randn(0f64, 1., o, &dev)?;
            for activation in [Activation::Relu6, Activation::Swish] {
                let y = dense_conv2d(&x, &weight, s, pad)?;
                let y = y
                    .broadcast_mul(&scale.reshape((1, o, 1, 1))?)?
                    .broadcast_add(&shift.reshape((1, o, 1, 1))?)?;
                let want = activation.forward(&y)?;
                let flat = weight.reshape((o, c * k * k))?;
                for dtype in [DType::F64, DType::F32] {
                    let packed = fold_batch_norm(
                        &flat.to_dtype(dtype)?,
                        &scale.to_dtype(dtype)?,
                        &shift.to_dtype(dtype)?,
                    )?;
                    let got = folded_dense_conv2d(&x.to_dtype(dtype)?, &packed, k, s, pad, activation)?;
                    assert_eq!(got.dims(), want.dims());
                    let diff = (got.to_dtype(DType::F64)? - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
                    let scale = want.abs()?.max_all()?.to_scalar::<f64>()?;
                    let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
                    assert!(
                        diff / scale < tol,
                        "{dtype:?} {:?} {activation}: {}",
                        (c, o, size, k, s),
                        diff / scale
                    );
                }
            }
        }
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev)?;
        let bad = Tensor::zeros((4, 27), DType::F32, &dev)?;
        let err = folded_dense_conv2d(&x, &bad, 3, 2, Padding2d::symmetric(3), Activation::Relu).unwrap_err();
        assert!(err.to_string().contains("[O, 28]"), "{err}");
        Ok(())
    }
}
