//! Gradients of the depthwise convolution, as two more custom ops (so each is an ordinary
//! tensor op, parallel over planes or channels like the forward):
//!
//! - input gradient: a transposed depthwise convolution. Each (n, c) plane is independent and
//!   computed as a gather per stride phase (see `PhaseGrid`);
//! - weight gradient: for each channel, every tap is the dot product of a shifted input window
//!   with the output gradient, summed over the batch. One task per channel sums in a fixed order,
//!   so the result does not depend on the thread count.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};

use crate::buffer::par_filled_chunks;
use crate::depthwise::{column_block, conv_output_size, DwElement, DwShape, Padding2d, COLUMN_BLOCK};
use crate::layout::{contiguous_slice, dispatch_f32_f64};
use crate::linear::dot;

/// d(loss)/d(input) from d(loss)/d(output) `[N, C, Ho, Wo]` and the weight `[C, 1, k, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseInputGrad {
    pub stride: usize,
    pub padding: Padding2d,
    /// Spatial size of the forward input (several input sizes map to one output size).
    pub height: usize,
    pub width: usize,
    /// On CUDA, the one-thread-per-input gather instead of the blocked kernels (the GPU check
    /// times both; the gather is what other strides and kernel sizes run). Ignored on the CPU.
    pub simple_cuda_kernel: bool,
}

/// d(loss)/d(weight) `[C, 1, k, k]` from the forward input `[N, C, H, W]` and d(loss)/d(output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseWeightGrad {
    pub stride: usize,
    pub padding: Padding2d,
    pub kernel: usize,
    /// On CUDA, the per-position kernel (each thread re-reads its k x k window) instead of the
    /// by-columns one (the GPU check times both; strides above 2 run it). Ignored on the CPU.
    pub simple_cuda_kernel: bool,
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

/// The zero-padded input plane split into `s x s` stride phases: padded position `(py, px)`
/// lives in phase `(py % s, px % s)` at row `py / s`, column `px / s`. Output `(oy, ox)` then
/// reads tap `(ky, kx)` at `at(ky, kx) + oy * cols + ox`, so when the output (or its
/// gradient) is laid out with the phases' row pitch `cols` (zeros in the columns past `Wo`),
/// every tap is ONE contiguous run of `Ho * cols` elements: no bounds checks, no per-row
/// ranges, and long vectors even for the 4x4 planes of NAS-Bench-Macro's last layers. The
/// previous kernels worked row by row and tap by tap over ranges of a few columns and took 28%
/// of a supernet step (5x the forward).
///
/// Junk positions (columns `Wo..cols` of a pitched output row) pair a zero with a finite
/// padded-plane value, so they add exact zeros.
#[derive(Debug, Clone, Copy)]
struct PhaseGrid {
    g: DwShape,
    s: usize,
    /// Rows and columns of one phase.
    rows: usize,
    cols: usize,
}

impl PhaseGrid {
    fn new(g: DwShape) -> Self {
        let s = g.stride;
        let p = g.padding;
        let rows = (g.height + p.top + p.bottom).div_ceil(s);
        let cols = (g.width + p.left + p.right).div_ceil(s);
        PhaseGrid { g, s, rows, cols }
    }

    fn phase_len(&self) -> usize {
        self.rows * self.cols
    }

    /// Elements of an output plane at the phases' row pitch, rounded up to whole blocks.
    fn pitched_len(&self) -> usize {
        (self.g.out_height * self.cols).next_multiple_of(COLUMN_BLOCK)
    }

    /// Index of padded position `(py, px)` in the phase buffer.
    #[inline(always)]
    fn at(&self, py: usize, px: usize) -> usize {
        let s = self.s;
        ((py % s) * s + px % s) * self.phase_len() + (py / s) * self.cols + px / s
    }

    /// Length of a phase buffer: all phases plus slack for the last block's junk reads (the
    /// largest tap offset plus a pitched plane ends at most `k + COLUMN_BLOCK` past them).
    fn buffer_len(&self) -> usize {
        self.s * self.s * self.phase_len() + self.g.kernel + COLUMN_BLOCK
    }

    /// The input columns `x0, x0 + s, ...` of column phase `rx` and the phase column of `x0`:
    /// padded column `x + left` lies in phase `(x + left) % s`.
    #[inline(always)]
    fn column_phase(&self, rx: usize) -> Option<(usize, usize)> {
        let (s, left) = (self.s, self.g.padding.left);
        let x0 = (rx + s - left % s) % s;
        (x0 < self.g.width).then_some((x0, (x0 + left) / s))
    }

    /// Writes an input plane into its zeroed phase buffer.
    #[inline(always)]
    fn scatter<T: DwElement>(&self, plane: &[T], buf: &mut [T]) {
        let (w, p) = (self.g.width, self.g.padding);
        for (y, row) in plane.chunks_exact(w).enumerate() {
            let py = y + p.top;
            if self.s == 1 {
                let at = self.at(py, p.left);
                buf[at..at + w].copy_from_slice(row);
                continue;
            }
            for rx in 0..self.s {
                let Some((x0, col)) = self.column_phase(rx) else { continue };
                let at = self.at(py, rx) + col;
                for (d, &v) in buf[at..].iter_mut().zip(row[x0..].iter().step_by(self.s)) {
                    *d = v;
                }
            }
        }
    }

    /// The inverse of [`PhaseGrid::scatter`]: the interior of a phase buffer whose phases are
    /// `phase_stride` apart.
    #[inline(always)]
    fn gather<T: DwElement>(&self, buf: &[T], phase_stride: usize, plane: &mut [T]) {
        let (w, p, s) = (self.g.width, self.g.padding, self.s);
        for (y, row) in plane.chunks_exact_mut(w).enumerate() {
            let py = y + p.top;
            let row_at = (py / s) * self.cols;
            for rx in 0..s {
                let Some((x0, col)) = self.column_phase(rx) else { continue };
                let at = ((py % s) * s + rx) * phase_stride + row_at + col;
                for (d, &v) in row[x0..].iter_mut().step_by(s).zip(&buf[at..]) {
                    *d = v;
                }
            }
        }
    }

    /// Copies an output-sized plane into a zeroed buffer with the phases' row pitch, starting
    /// at `margin`.
    #[inline(always)]
    fn pitch<T: DwElement>(&self, plane: &[T], buf: &mut [T], margin: usize) {
        let wo = self.g.out_width;
        for (oy, row) in plane.chunks_exact(wo).enumerate() {
            let at = margin + oy * self.cols;
            buf[at..at + wo].copy_from_slice(row);
        }
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
    let grid = PhaseGrid::new(shape);
    let DwShape { batch: n, channels: c, height: h, width: w, kernel: k, .. } = shape;
    let s = shape.stride;
    let out_plane = shape.out_height * shape.out_width;
    let grad_out = contiguous_slice::<T>(gs, gl)?;
    let weight = contiguous_slice::<T>(ws, wl)?;
    // The input gradient is a gather: padded position q of phase (ry, rx) receives
    // `w[ky, kx] * g[q - row_shift * cols - col_shift]` from every tap of that phase
    // (ky = s * row_shift + ry, kx = s * col_shift + rx). With the pitched gradient behind a
    // zero margin, each phase is a forward-style register-blocked sum over its taps.
    let margin = ((k - 1) / s) * grid.cols + (k - 1) / s;
    let phase_blocks = grid.phase_len().next_multiple_of(COLUMN_BLOCK);
    let pitched_buffer = margin + phase_blocks.max(grid.pitched_len()) + COLUMN_BLOCK;
    let out = par_filled_chunks(n * c * h * w, h * w, |plane, dst| {
        crate::simd::wide(
            #[inline(always)]
            || {
                let filter = &weight[(plane % c) * k * k..(plane % c + 1) * k * k];
                let mut pitched = vec![T::zero(); pitched_buffer];
                grid.pitch(&grad_out[plane * out_plane..(plane + 1) * out_plane], &mut pitched, margin);
                let mut phases = vec![T::zero(); s * s * phase_blocks];
                let mut taps: Vec<(usize, T)> = Vec::with_capacity(k * k);
                for ry in 0..s {
                    for rx in 0..s {
                        taps.clear();
                        for ky in (ry..k).step_by(s) {
                            for kx in (rx..k).step_by(s) {
                                taps.push((margin - (ky / s) * grid.cols - kx / s, filter[ky * k + kx]));
                            }
                        }
                        let phase =
                            &mut phases[(ry * s + rx) * phase_blocks..(ry * s + rx + 1) * phase_blocks];
                        for (block, out) in phase.chunks_exact_mut(COLUMN_BLOCK).enumerate() {
                            out.copy_from_slice(&column_block(&pitched, block * COLUMN_BLOCK, &taps));
                        }
                    }
                }
                grid.gather(&phases, phase_blocks, dst);
            },
        )
    });
    Ok((out, shape.input_shape()))
}

fn weight_grad_typed<T: DwElement>(
    op: &DepthwiseWeightGrad,
    xs: &CpuStorage,
    xl: &Layout,
    gs: &CpuStorage,
    gl: &Layout,
) -> Result<(Vec<T>, Shape)> {
    let shape = op.shape(xl, gl)?;
    let grid = PhaseGrid::new(shape);
    let DwShape { batch: n, channels: c, height: h, width: w, kernel: k, .. } = shape;
    let out_plane = shape.out_height * shape.out_width;
    let input = contiguous_slice::<T>(xs, xl)?;
    let grad_out = contiguous_slice::<T>(gs, gl)?;
    // Tap (ky, kx) of output (0, 0) reads padded position (ky, kx).
    let offsets: Vec<usize> = (0..k * k).map(|t| grid.at(t / k, t % k)).collect();
    let run = grid.pitched_len();
    let out = par_filled_chunks(c * k * k, k * k, |channel, taps| {
        crate::simd::wide(
            #[inline(always)]
            || {
                let mut phases = vec![T::zero(); grid.buffer_len()];
                let mut pitched = vec![T::zero(); run];
                for sample in 0..n {
                    let plane = sample * c + channel;
                    // Padding and junk columns stay zero: only the interior is rewritten per sample.
                    grid.scatter(&input[plane * h * w..(plane + 1) * h * w], &mut phases);
                    grid.pitch(&grad_out[plane * out_plane..(plane + 1) * out_plane], &mut pitched, 0);
                    for (tap, &offset) in taps.iter_mut().zip(&offsets) {
                        *tap += dot(&pitched, &phases[offset..offset + run]);
                    }
                }
            },
        )
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
        let vec = crate::cuda::vector_rows(dev, &g, shape.out_width);
        let plan = crate::cuda_plan::depthwise_input_grad(shape, vec, self.simple_cuda_kernel)?;
        Ok((crate::cuda::run_op(dev, &plan, &[&g, &wt], 0)?, shape.input_shape()))
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
            let shape = self.shape(l1, l2)?;
            let vec = crate::cuda_emulator::vector_rows(shape.out_width);
            let plan = crate::cuda_plan::depthwise_input_grad(shape, vec, self.simple_cuda_kernel)?;
            return Ok((crate::cuda_emulator::run_op(&plan, &[(s1, l1), (s2, l2)], 0)?, shape.input_shape()));
        }
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
        let plan = crate::cuda_plan::depthwise_weight_grad(shape, self.simple_cuda_kernel)?;
        let k = shape.kernel;
        Ok((crate::cuda::run_op(dev, &plan, &[&x, &g], 0)?, Shape::from((shape.channels, 1, k, k))))
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
            let shape = self.shape(l1, l2)?;
            let plan = crate::cuda_plan::depthwise_weight_grad(shape, self.simple_cuda_kernel)?;
            let k = shape.kernel;
            let out = crate::cuda_emulator::run_op(&plan, &[(s1, l1), (s2, l2)], 0)?;
            return Ok((out, Shape::from((shape.channels, 1, k, k))));
        }
        dispatch_f32_f64(
            "depthwise weight grad",
            &[s1.dtype(), s2.dtype()],
            || weight_grad_typed::<f32>(self, s1, l1, s2, l2),
            || weight_grad_typed::<f64>(self, s1, l1, s2, l2),
        )
    }
}
