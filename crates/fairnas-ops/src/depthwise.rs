//! Depthwise 2-D convolution (one k x k filter per channel, `groups == channels`).
//!
//! Layout: input `[N, C, H, W]`, weight `[C, 1, k, k]` (PyTorch's), output `[N, C, Ho, Wo]`.
//! Each (n, c) output plane is independent, which is the unit of rayon parallelism. Within a plane
//! the loop order is output row -> kernel tap -> output columns, and the column range whose input
//! index falls inside the image is computed up front, so the innermost loop is a branch-free
//! multiply-add over contiguous (stride 1) or evenly strided (stride 2) memory that the compiler
//! vectorises. Padding is never materialised.

use crate::buffer::par_filled_chunks;
use crate::depthwise_backward::{DepthwiseInputGrad, DepthwiseWeightGrad};
use crate::layout::{contiguous_slice, dispatch_f32_f64, on_device};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// Zero padding on each side of the spatial dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Padding2d {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding2d {
    /// PyTorch's `padding = k // 2` on every side.
    pub fn symmetric(kernel: usize) -> Self {
        let p = kernel / 2;
        Padding2d { top: p, bottom: p, left: p, right: p }
    }

    /// TensorFlow "SAME": total `max((ceil(i/s) - 1) * s + k - i, 0)` per axis, the smaller half
    /// before and the rest after (so stride-2 layers pad asymmetrically).
    pub fn tf_same(height: usize, width: usize, kernel: usize, stride: usize) -> Self {
        let total = |i: usize| ((i.div_ceil(stride) - 1) * stride + kernel).saturating_sub(i);
        let (th, tw) = (total(height), total(width));
        Padding2d { top: th / 2, bottom: th - th / 2, left: tw / 2, right: tw - tw / 2 }
    }

    pub fn is_symmetric(&self) -> bool {
        self.top == self.bottom && self.left == self.right
    }
}

/// Output spatial size of a convolution, or an error when the padded input is smaller than the
/// kernel.
pub fn conv_output_size(
    input: usize,
    pad_before: usize,
    pad_after: usize,
    kernel: usize,
    stride: usize,
) -> Result<usize> {
    let padded = input + pad_before + pad_after;
    if padded < kernel || stride == 0 {
        candle_core::bail!(
            "convolution: padded input {padded} is smaller than kernel {kernel} (or stride is 0)"
        );
    }
    Ok((padded - kernel) / stride + 1)
}

/// The depthwise convolution op. The kernel size is taken from the weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseConv2d {
    pub stride: usize,
    pub padding: Padding2d,
}

/// The shape of one depthwise convolution, checked once and shared by the forward and backward
/// ops and by their CPU and CUDA kernels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DwShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding2d,
    pub out_height: usize,
    pub out_width: usize,
}

impl DwShape {
    pub(crate) fn input_shape(&self) -> Shape {
        Shape::from((self.batch, self.channels, self.height, self.width))
    }

    pub(crate) fn output_shape(&self) -> Shape {
        Shape::from((self.batch, self.channels, self.out_height, self.out_width))
    }
}

impl DepthwiseConv2d {
    fn geometry(&self, input: &Layout, weight: &Layout) -> Result<DwShape> {
        let (batch, channels, height, width) = match input.dims() {
            &[n, c, h, w] => (n, c, h, w),
            d => candle_core::bail!("depthwise conv: input must be [N, C, H, W], got {d:?}"),
        };
        let kernel = match weight.dims() {
            &[c, 1, kh, kw] if c == channels && kh == kw => kh,
            d => candle_core::bail!(
                "depthwise conv: weight must be [{channels}, 1, k, k] for a {channels}-channel input, got {d:?}"
            ),
        };
        let p = self.padding;
        Ok(DwShape {
            batch,
            channels,
            height,
            width,
            kernel,
            stride: self.stride,
            padding: p,
            out_height: conv_output_size(height, p.top, p.bottom, kernel, self.stride)?,
            out_width: conv_output_size(width, p.left, p.right, kernel, self.stride)?,
        })
    }
}

pub(crate) trait DwElement:
    candle_core::WithDType + Default + std::ops::Mul<Output = Self> + std::ops::AddAssign
{
}
impl DwElement for f32 {}
impl DwElement for f64 {}

/// Output columns accumulated in registers at a time: two AVX2 vectors of f32.
pub(crate) const COLUMN_BLOCK: usize = 16;

/// `COLUMN_BLOCK` adjacent outputs: the sum over taps of `weight * phases[base + offset ..]`. A
/// small function with fixed-size arrays, so the accumulators live in vector registers.
#[inline(always)]
pub(crate) fn column_block<T: DwElement>(
    phases: &[T],
    base: usize,
    taps: &[(usize, T)],
) -> [T; COLUMN_BLOCK] {
    let mut acc = [T::default(); COLUMN_BLOCK];
    for &(offset, wv) in taps {
        let src: &[T; COLUMN_BLOCK] = phases[base + offset..base + offset + COLUMN_BLOCK]
            .try_into()
            .expect("a block of the phase buffer");
        for (a, &x) in acc.iter_mut().zip(src) {
            *a += wv * x;
        }
    }
    acc
}

/// One output plane; `out` must be zero on entry.
///
/// The plane is first copied into a zero-padded buffer (for stride `s`, de-interleaved into `s`
/// column phases, so column `s * j + r` of the padded row is element `j` of phase `r`): every tap
/// of every output then reads contiguous memory with no bounds checks. Each block of 16 output
/// columns is accumulated in registers over all k x k taps and stored once; the previous loop
/// added each tap into the output row in memory (a load and a store per tap and element) and
/// took 39% of a FairNAS-A forward pass. The sum order (ky, then kx) is unchanged, so results
/// are bit-identical.
#[inline(always)]
fn forward_plane<T: DwElement>(input: &[T], filter: &[T], out: &mut [T], g: &DwShape) {
    let (k, s, pad) = (g.kernel, g.stride, g.padding);
    let padded_h = g.height + pad.top + pad.bottom;
    let padded_w = g.width + pad.left + pad.right;
    let phase_w = padded_w.div_ceil(s);
    let phase_len = padded_h * phase_w;
    // Slack after the last phase: a block near a row's end reads up to a block past it (those
    // columns are computed and dropped), so every block takes the same vectorised path.
    let mut phases = vec![T::zero(); s * phase_len + COLUMN_BLOCK];
    for y in 0..g.height {
        let row = &input[y * g.width..(y + 1) * g.width];
        let at = (y + pad.top) * phase_w;
        if s == 1 {
            phases[at + pad.left..at + pad.left + g.width].copy_from_slice(row);
        } else {
            // Phase `rx` holds padded columns rx, rx + s, ...: input columns x0, x0 + s, ...
            // from the first x0 with (x0 + left) % s == rx, stored contiguously. (A division
            // per element, with `s` unknown at compile time, took most of the stride-2 time.)
            for rx in 0..s {
                let x0 = (rx + s - pad.left % s) % s;
                if x0 >= g.width {
                    continue;
                }
                let start = rx * phase_len + at + (x0 + pad.left) / s;
                let count = (g.width - x0).div_ceil(s);
                for (d, &v) in phases[start..start + count].iter_mut().zip(row[x0..].iter().step_by(s)) {
                    *d = v;
                }
            }
        }
    }
    // Offset of tap (ky, kx) from the first input of output (0, 0), in the phase buffer.
    let taps: Vec<(usize, T)> = (0..k * k)
        .map(|t| {
            let (ky, kx) = (t / k, t % k);
            ((kx % s) * phase_len + ky * phase_w + kx / s, filter[t])
        })
        .collect();
    for oy in 0..g.out_height {
        let out_row = &mut out[oy * g.out_width..(oy + 1) * g.out_width];
        let row_base = oy * s * phase_w;
        for (block, dst) in out_row.chunks_mut(COLUMN_BLOCK).enumerate() {
            let acc = column_block(&phases, row_base + block * COLUMN_BLOCK, &taps);
            dst.copy_from_slice(&acc[..dst.len()]);
        }
    }
}

fn forward_typed<T: DwElement>(
    op: &DepthwiseConv2d,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(Vec<T>, Shape)> {
    forward_with_epilogue(
        op,
        s1,
        l1,
        s2,
        l2,
        #[inline(always)]
        |_, _| {},
    )
}

/// The depthwise forward with `epilogue(channel, plane)` run on each output plane right after
/// it is computed, while it is still in cache. The epilogue must be `#[inline(always)]`-deep
/// (it runs inside [`crate::simd::wide`]).
fn forward_with_epilogue<T: DwElement>(
    op: &DepthwiseConv2d,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    epilogue: impl Fn(usize, &mut [T]) + Sync,
) -> Result<(Vec<T>, Shape)> {
    let g = op.geometry(l1, l2)?;
    let input = contiguous_slice::<T>(s1, l1)?;
    let weight = contiguous_slice::<T>(s2, l2)?;
    let in_plane = g.height * g.width;
    let out_plane = g.out_height * g.out_width;
    let kk = g.kernel * g.kernel;
    let out = par_filled_chunks(g.batch * g.channels * out_plane, out_plane, |plane, dst| {
        let c = plane % g.channels;
        let src = &input[plane * in_plane..(plane + 1) * in_plane];
        let filter = &weight[c * kk..(c + 1) * kk];
        crate::simd::wide(
            #[inline(always)]
            || {
                forward_plane(src, filter, dst, &g);
                epilogue(c, dst);
            },
        );
    });
    Ok((out, g.output_shape()))
}

impl CustomOp2 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "fairnas-depthwise-conv2d"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if self.stride == 0 {
            candle_core::bail!("depthwise conv: stride must be positive");
        }
        let g = self.geometry(l1, l2)?;
        let dev = s1.device();
        let x = crate::cuda::f32_view(s1, l1, "depthwise conv")?;
        let w = crate::cuda::f32_view(s2, l2, "depthwise conv")?;
        let out = crate::cuda::depthwise_forward(dev, &x, &w, None, crate::Activation::Identity, g, false)?;
        Ok((crate::cuda::wrap(out, dev), g.output_shape()))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if self.stride == 0 {
            candle_core::bail!("depthwise conv: stride must be positive");
        }
        dispatch_f32_f64(
            "depthwise conv",
            &[s1.dtype(), s2.dtype()],
            || forward_typed::<f32>(self, s1, l1, s2, l2),
            || forward_typed::<f64>(self, s1, l1, s2, l2),
        )
    }

    /// Gradients through our own kernels (see `depthwise_backward`); candle's grouped conv
    /// backward takes tens of seconds per layer at training sizes.
    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, height, width) = input.dims4()?;
        let grad_output = &on_device(grad_output)?;
        let grad_input = grad_output.apply_op2_no_bwd(
            weight,
            &DepthwiseInputGrad { stride: self.stride, padding: self.padding, height, width },
        )?;
        let grad_weight = input.apply_op2_no_bwd(
            grad_output,
            &DepthwiseWeightGrad { stride: self.stride, padding: self.padding, kernel: weight.dim(2)? },
        )?;
        Ok((Some(grad_input), Some(grad_weight)))
    }
}

/// Depthwise convolution with eval-mode BN (as a per-channel affine) and the activation fused
/// into its epilogue: `act(conv(x) * affine[0][c] + affine[1][c])`. Inference only (no
/// backward): training uses `conv_bn`, whose BN needs batch statistics.
///
/// Inputs: `x` `[N, C, H, W]`, weight `[C, 1, k, k]`, `affine` `[2, C]` (scale; shift).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseAffineAct {
    pub stride: usize,
    pub padding: Padding2d,
    pub activation: crate::Activation,
    /// Run the one-thread-per-output CUDA kernel even where the tiled one applies (for the GPU
    /// check, which compares and times both); ignored on the CPU.
    pub force_direct: bool,
}

fn check_affine(affine: &Layout, channels: usize) -> Result<()> {
    if affine.dims() != [2, channels] {
        candle_core::bail!(
            "depthwise + affine: affine must be [2, {channels}] (scale; shift), got {:?}",
            affine.dims()
        );
    }
    Ok(())
}

fn affine_typed<T: DwElement + num_traits::Float>(
    op: &DepthwiseAffineAct,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let conv = DepthwiseConv2d { stride: op.stride, padding: op.padding };
    let g = conv.geometry(l1, l2)?;
    check_affine(l3, g.channels)?;
    let affine = contiguous_slice::<T>(s3, l3)?;
    forward_with_epilogue::<T>(
        &conv,
        s1,
        l1,
        s2,
        l2,
        #[inline(always)]
        |c, dst| {
            let (scale, shift) = (affine[c], affine[g.channels + c]);
            crate::activation::with_activation!(op.activation, T, act => {
                for v in dst.iter_mut() {
                    *v = act(*v * scale + shift);
                }
            })
        },
    )
}

impl CustomOp3 for DepthwiseAffineAct {
    fn name(&self) -> &'static str {
        "fairnas-depthwise-affine-act"
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
        if self.stride == 0 {
            candle_core::bail!("depthwise conv: stride must be positive");
        }
        dispatch_f32_f64(
            "depthwise + affine",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || affine_typed::<f32>(self, (s1, l1), (s2, l2), (s3, l3)),
            || affine_typed::<f64>(self, (s1, l1), (s2, l2), (s3, l3)),
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
        if self.stride == 0 {
            candle_core::bail!("depthwise conv: stride must be positive");
        }
        let conv = DepthwiseConv2d { stride: self.stride, padding: self.padding };
        let g = conv.geometry(l1, l2)?;
        check_affine(l3, g.channels)?;
        let dev = s1.device();
        let x = crate::cuda::f32_view(s1, l1, "depthwise + affine")?;
        let w = crate::cuda::f32_view(s2, l2, "depthwise + affine")?;
        let affine = crate::cuda::f32_view(s3, l3, "depthwise + affine")?;
        let (scale, shift) = (affine.slice(..g.channels), affine.slice(g.channels..));
        let out = crate::cuda::depthwise_forward(
            dev,
            &x,
            &w,
            Some((&scale, &shift)),
            self.activation,
            g,
            self.force_direct,
        )?;
        Ok((crate::cuda::wrap(out, dev), g.output_shape()))
    }
}

/// `act(depthwise_conv2d(x, weight) * affine[0] + affine[1])` per channel, in one pass
/// (`affine` `[2, C]`: eval-mode BN's scale and shift).
pub fn depthwise_affine_act(
    input: &Tensor,
    weight: &Tensor,
    affine: &Tensor,
    stride: usize,
    padding: Padding2d,
    activation: crate::Activation,
) -> Result<Tensor> {
    let op = DepthwiseAffineAct { stride, padding, activation, force_direct: false };
    on_device(input)?.apply_op3_no_bwd(&on_device(weight)?, &on_device(affine)?, &op)
}

/// Depthwise convolution of `input` `[N, C, H, W]` with `weight` `[C, 1, k, k]`.
pub fn depthwise_conv2d(
    input: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: Padding2d,
) -> Result<Tensor> {
    on_device(input)?.apply_op2(&on_device(weight)?, DepthwiseConv2d { stride, padding })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// candle's own grouped convolution as the reference (slow, but independent of our kernel).
    fn reference(x: &Tensor, w: &Tensor, stride: usize, pad: Padding2d) -> Result<Tensor> {
        let x = x.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
        let channels = x.dim(1)?;
        x.conv2d(w, 0, stride, 1, channels)
    }

    fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[test]
    fn matches_candle_grouped_conv_for_all_variants() -> Result<()> {
        let dev = Device::Cpu;
        for &k in &[3usize, 5, 7] {
            for &s in &[1usize, 2] {
                for &(h, w) in &[(9usize, 11usize), (14, 14), (7, 6)] {
                    let x = Tensor::randn(0f32, 1., (2, 5, h, w), &dev)?;
                    let wt = Tensor::randn(0f32, 1., (5, 1, k, k), &dev)?;
                    for pad in [Padding2d::symmetric(k), Padding2d::tf_same(h, w, k, s)] {
                        let got = depthwise_conv2d(&x, &wt, s, pad)?;
                        let want = reference(&x, &wt, s, pad)?;
                        assert_eq!(got.dims(), want.dims(), "k{k} s{s} {h}x{w} {pad:?}");
                        let err = max_rel_err(&got, &want);
                        assert!(err < 1e-5, "k{k} s{s} {h}x{w} {pad:?}: rel err {err}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn reads_strided_inputs_through_the_layout() -> Result<()> {
        let dev = Device::Cpu;
        let base = Tensor::randn(0f32, 1., (2, 4, 10, 10), &dev)?;
        let x = base.transpose(2, 3)?; // non-contiguous view
        let wt = Tensor::randn(0f32, 1., (4, 1, 3, 3), &dev)?;
        let pad = Padding2d::symmetric(3);
        let got = depthwise_conv2d(&x, &wt, 1, pad)?;
        let want = depthwise_conv2d(&x.contiguous()?, &wt, 1, pad)?;
        assert_eq!(max_rel_err(&got, &want), 0.0);
        Ok(())
    }

    #[test]
    fn f64_matches_f32() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1., (1, 3, 8, 8), &dev)?;
        let wt = Tensor::randn(0f64, 1., (3, 1, 5, 5), &dev)?;
        let pad = Padding2d::tf_same(8, 8, 5, 2);
        let a = depthwise_conv2d(&x, &wt, 2, pad)?.to_dtype(DType::F32)?;
        let b = depthwise_conv2d(&x.to_dtype(DType::F32)?, &wt.to_dtype(DType::F32)?, 2, pad)?;
        assert!(max_rel_err(&b, &a) < 1e-6);
        Ok(())
    }

    #[test]
    fn fused_affine_activation_equals_the_unfused_graph() -> Result<()> {
        let dev = Device::Cpu;
        for act in [crate::Activation::Relu6, crate::Activation::Swish, crate::Activation::Identity] {
            for (k, s) in [(3usize, 1usize), (5, 2), (7, 1)] {
                let x = Tensor::randn(0f32, 1., (2, 6, 13, 11), &dev)?;
                let w = Tensor::randn(0f32, 1., (6, 1, k, k), &dev)?;
                let scale = Tensor::randn(0f32, 1., 6, &dev)?;
                let shift = Tensor::randn(0f32, 1., 6, &dev)?;
                let pad = Padding2d::tf_same(13, 11, k, s);
                let affine = Tensor::stack(&[&scale, &shift], 0)?;
                let got = depthwise_affine_act(&x, &w, &affine, s, pad, act)?;
                let conv = depthwise_conv2d(&x, &w, s, pad)?;
                let want = act.forward(
                    &conv
                        .broadcast_mul(&scale.reshape((1, 6, 1, 1))?)?
                        .broadcast_add(&shift.reshape((1, 6, 1, 1))?)?,
                )?;
                // Same f32 operations in the same order: the same bits, except that our swish
                // and sigmoid take `activation::exp_f32` where candle calls libm's expf (both
                // within 2e-7 of the exact value).
                let tolerance = if matches!(act, crate::Activation::Swish | crate::Activation::Sigmoid) {
                    1e-6
                } else {
                    0.0
                };
                let err = max_rel_err(&got, &want);
                assert!(err <= tolerance, "{act} k{k} s{s}: {err}");
            }
        }
        let x = Tensor::zeros((1, 4, 5, 5), DType::F32, &dev)?;
        let w = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev)?;
        let bad = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let err = depthwise_affine_act(&x, &w, &bad, 1, Padding2d::symmetric(3), crate::Activation::Relu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 4]"), "{err}");
        Ok(())
    }

    #[test]
    fn tf_same_padding_follows_the_formula() {
        // 112 -> 56 with k3 s2: total 1, all after; k5 s2: total 3, 1 before and 2 after.
        assert_eq!(Padding2d::tf_same(112, 112, 3, 2), Padding2d { top: 0, bottom: 1, left: 0, right: 1 });
        assert_eq!(Padding2d::tf_same(112, 112, 5, 2), Padding2d { top: 1, bottom: 2, left: 1, right: 2 });
        assert_eq!(Padding2d::tf_same(14, 14, 5, 1), Padding2d::symmetric(5));
    }

    #[test]
    fn rejects_bad_shapes_with_a_clear_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
        let wt = Tensor::zeros((3, 1, 3, 3), DType::F32, &dev).unwrap();
        let err = depthwise_conv2d(&x, &wt, 1, Padding2d::symmetric(3)).unwrap_err().to_string();
        assert!(err.contains("[4, 1, k, k]"), "{err}");
        let wt16 = Tensor::zeros((4, 1, 3, 3), DType::F16, &dev).unwrap();
        let err = depthwise_conv2d(&x.to_dtype(DType::F16).unwrap(), &wt16, 1, Padding2d::symmetric(3))
            .unwrap_err()
            .to_string();
        assert!(err.contains("F16"), "{err}");
    }
}
