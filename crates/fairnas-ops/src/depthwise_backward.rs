//! Gradients of the depthwise convolution, as two more custom ops (so each is an ordinary
//! tensor op, parallel over planes or channels like the forward):
//!
//! - input gradient: a transposed depthwise convolution. Each (n, c) plane is independent: for
//!   every output row and kernel tap, the matching input columns receive `w * grad_out`, an
//!   axpy over contiguous memory (stride 1) or over de-interleaved phases (stride s);
//! - weight gradient: for each channel, every tap is the dot product of a shifted input window
//!   with the output gradient, summed over the batch. One task per channel sums in a fixed order,
//!   so the result does not depend on the thread count.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};

use crate::buffer::par_filled_chunks;
use crate::depthwise::{conv_output_size, valid_range, DwElement, DwShape, Padding2d};
use crate::layout::{contiguous_slice, dispatch_f32_f64};

/// d(loss)/d(input) from d(loss)/d(output) `[N, C, Ho, Wo]` and the weight `[C, 1, k, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseInputGrad {
    pub stride: usize,
    pub padding: Padding2d,
    /// Spatial size of the forward input (several input sizes map to one output size).
    pub height: usize,
    pub width: usize,
}

/// d(loss)/d(weight) `[C, 1, k, k]` from the forward input `[N, C, H, W]` and d(loss)/d(output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseWeightGrad {
    pub stride: usize,
    pub padding: Padding2d,
    pub kernel: usize,
}

fn check_output(
    p: Padding2d,
    stride: usize,
    kernel: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
) -> Result<()> {
    let want = (
        conv_output_size(h, p.top, p.bottom, kernel, stride)?,
        conv_output_size(w, p.left, p.right, kernel, stride)?,
    );
    if want != (ho, wo) {
        candle_core::bail!(
            "depthwise backward: output gradient is {ho}x{wo} but a {h}x{w} input gives {}x{}",
            want.0,
            want.1
        );
    }
    Ok(())
}

impl DepthwiseInputGrad {
    /// The convolution's shape from the output gradient and the weight, checked.
    fn shape(&self, grad: &Layout, weight: &Layout) -> Result<DwShape> {
        let (batch, channels, out_height, out_width) = match grad.dims() {
            &[n, c, h, w] => (n, c, h, w),
            d => {
                candle_core::bail!("depthwise input grad: output gradient must be [N, C, Ho, Wo], got {d:?}")
            }
        };
        let kernel = match weight.dims() {
            &[cc, 1, kh, kw] if cc == channels && kh == kw => kh,
            d => candle_core::bail!("depthwise input grad: weight must be [{channels}, 1, k, k], got {d:?}"),
        };
        let (height, width, stride, padding) = (self.height, self.width, self.stride, self.padding);
        check_output(padding, stride, kernel, height, width, out_height, out_width)?;
        Ok(DwShape { batch, channels, height, width, kernel, stride, padding, out_height, out_width })
    }
}

impl DepthwiseWeightGrad {
    /// The convolution's shape from the forward input and the output gradient, checked.
    fn shape(&self, input: &Layout, grad: &Layout) -> Result<DwShape> {
        let (batch, channels, height, width) = match input.dims() {
            &[n, c, h, w] => (n, c, h, w),
            d => candle_core::bail!("depthwise weight grad: input must be [N, C, H, W], got {d:?}"),
        };
        let (out_height, out_width) = match grad.dims() {
            &[nn, cc, ho, wo] if nn == batch && cc == channels => (ho, wo),
            d => candle_core::bail!(
                "depthwise weight grad: output gradient must be [{batch}, {channels}, Ho, Wo], got {d:?}"
            ),
        };
        let (kernel, stride, padding) = (self.kernel, self.stride, self.padding);
        check_output(padding, stride, kernel, height, width, out_height, out_width)?;
        Ok(DwShape { batch, channels, height, width, kernel, stride, padding, out_height, out_width })
    }
}

fn input_grad_typed<T: DwElement>(
    op: &DepthwiseInputGrad,
    gs: &CpuStorage,
    gl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
) -> Result<(Vec<T>, Shape)> {
    let shape = op.shape(gl, wl)?;
    let DwShape {
        batch: n,
        channels: c,
        height: h,
        width: w,
        kernel: k,
        stride: s,
        padding: p,
        out_height: ho,
        out_width: wo,
    } = shape;
    let grad_out = contiguous_slice::<T>(gs, gl)?;
    let weight = contiguous_slice::<T>(ws, wl)?;
    let phase_w = w.div_ceil(s);
    let out = par_filled_chunks(n * c * h * w, h * w, |plane, dst| {
        let filter = &weight[(plane % c) * k * k..(plane % c + 1) * k * k];
        let g = &grad_out[plane * ho * wo..(plane + 1) * ho * wo];
        // Accumulate into stride-phase rows (column x lives in phase x % s at x / s) so every
        // tap is a contiguous axpy; for stride 1 the phase buffer is the plane itself.
        let mut phases = if s == 1 { Vec::new() } else { vec![T::zero(); s * h * phase_w] };
        for oy in 0..ho {
            let g_row = &g[oy * wo..(oy + 1) * wo];
            for ky in 0..k {
                let iy = oy * s + ky;
                if iy < p.top || iy - p.top >= h {
                    continue;
                }
                let iy = iy - p.top;
                for kx in 0..k {
                    let wv = filter[ky * k + kx];
                    let (lo, hi) = valid_range(wo, w, kx, p.left, s);
                    if lo >= hi {
                        continue;
                    }
                    let first = lo * s + kx - p.left;
                    let target = if s == 1 {
                        &mut dst[iy * w + first..iy * w + first + (hi - lo)]
                    } else {
                        let start = (first % s) * h * phase_w + iy * phase_w + first / s;
                        &mut phases[start..start + (hi - lo)]
                    };
                    for (t, &gv) in target.iter_mut().zip(&g_row[lo..hi]) {
                        *t += wv * gv;
                    }
                }
            }
        }
        if s > 1 {
            for y in 0..h {
                for (x, d) in dst[y * w..(y + 1) * w].iter_mut().enumerate() {
                    *d = phases[(x % s) * h * phase_w + y * phase_w + x / s];
                }
            }
        }
    });
    Ok((out, shape.input_shape()))
}

/// Independent partial sums of a dot product: a single running sum is a serial dependency chain
/// the compiler may not vectorise (float addition does not reassociate); eight lanes fit the
/// vector registers. The lanes are combined in a fixed order, so the result is deterministic.
const DOT_LANES: usize = 8;

#[inline(always)]
fn dot<T: DwElement>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::default(); DOT_LANES];
    let (ca, cb) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..DOT_LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut acc = T::default();
    for lane in lanes {
        acc += lane;
    }
    for (&x, &y) in ra.iter().zip(rb) {
        acc += x * y;
    }
    acc
}

fn weight_grad_typed<T: DwElement>(
    op: &DepthwiseWeightGrad,
    xs: &CpuStorage,
    xl: &Layout,
    gs: &CpuStorage,
    gl: &Layout,
) -> Result<(Vec<T>, Shape)> {
    let DwShape {
        batch: n,
        channels: c,
        height: h,
        width: w,
        kernel: k,
        stride: s,
        padding: p,
        out_height: ho,
        out_width: wo,
    } = op.shape(xl, gl)?;
    let input = contiguous_slice::<T>(xs, xl)?;
    let grad_out = contiguous_slice::<T>(gs, gl)?;
    let phase_w = w.div_ceil(s);
    let out = par_filled_chunks(c * k * k, k * k, |channel, taps| {
        let mut phases = if s == 1 { Vec::new() } else { vec![T::zero(); s * h * phase_w] };
        for sample in 0..n {
            let plane = sample * c + channel;
            let x = &input[plane * h * w..(plane + 1) * h * w];
            let g = &grad_out[plane * ho * wo..(plane + 1) * ho * wo];
            if s > 1 {
                for y in 0..h {
                    for (col, &v) in x[y * w..(y + 1) * w].iter().enumerate() {
                        phases[(col % s) * h * phase_w + y * phase_w + col / s] = v;
                    }
                }
            }
            for oy in 0..ho {
                let g_row = &g[oy * wo..(oy + 1) * wo];
                for ky in 0..k {
                    let iy = oy * s + ky;
                    if iy < p.top || iy - p.top >= h {
                        continue;
                    }
                    let iy = iy - p.top;
                    for kx in 0..k {
                        let (lo, hi) = valid_range(wo, w, kx, p.left, s);
                        if lo >= hi {
                            continue;
                        }
                        let first = lo * s + kx - p.left;
                        let src = if s == 1 {
                            &x[iy * w + first..iy * w + first + (hi - lo)]
                        } else {
                            let start = (first % s) * h * phase_w + iy * phase_w + first / s;
                            &phases[start..start + (hi - lo)]
                        };
                        taps[ky * k + kx] += dot(src, &g_row[lo..hi]);
                    }
                }
            }
        }
    });
    Ok((out, Shape::from((c, 1, k, k))))
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "fairnas-depthwise-input-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.shape(gl, wl)?;
        let dev = gs.device();
        let g = crate::cuda::f32_view(gs, gl, "depthwise input grad")?;
        let wt = crate::cuda::f32_view(ws, wl, "depthwise input grad")?;
        let out = crate::cuda::depthwise_input_grad(dev, &g, &wt, shape)?;
        Ok((crate::cuda::wrap(out, dev), shape.input_shape()))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_f32_f64(
            "depthwise input grad",
            &[s1.dtype(), s2.dtype()],
            || input_grad_typed::<f32>(self, s1, l1, s2, l2),
            || input_grad_typed::<f64>(self, s1, l1, s2, l2),
        )
    }
}

impl CustomOp2 for DepthwiseWeightGrad {
    fn name(&self) -> &'static str {
        "fairnas-depthwise-weight-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.shape(xl, gl)?;
        let dev = xs.device();
        let x = crate::cuda::f32_view(xs, xl, "depthwise weight grad")?;
        let g = crate::cuda::f32_view(gs, gl, "depthwise weight grad")?;
        let out = crate::cuda::depthwise_weight_grad(dev, &x, &g, shape)?;
        let k = shape.kernel;
        Ok((crate::cuda::wrap(out, dev), Shape::from((shape.channels, 1, k, k))))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_f32_f64(
            "depthwise weight grad",
            &[s1.dtype(), s2.dtype()],
            || weight_grad_typed::<f32>(self, s1, l1, s2, l2),
            || weight_grad_typed::<f64>(self, s1, l1, s2, l2),
        )
    }
}
