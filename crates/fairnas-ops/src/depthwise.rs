//! Depthwise 2-D convolution (one k x k filter per channel, `groups == channels`).
//!
//! Layout: input `[N, C, H, W]`, weight `[C, 1, k, k]` (PyTorch's), output `[N, C, Ho, Wo]`.
//! Each (n, c) output plane is independent; rayon tasks take runs of whole planes. The forward
//! copies each plane into a zero-padded, stride-phase-split buffer (see `PlaneScratch`), so that
//! every tap of a block of outputs is one contiguous, branch-free vector multiply-add; blocks
//! of 4 rows x 16 (or 8) columns accumulate in registers over all taps and are stored once.

use crate::buffer::par_written_chunks;
use crate::depthwise_backward::{DepthwiseInputGrad, DepthwiseWeightGrad};
use crate::layout::{contiguous_slice, dispatch_f32_f64, on_device};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

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
    /// The CUDA launches (`vector_rows(width)`: whether the input's rows allow 16-byte loads).
    #[cfg(any(feature = "cuda", feature = "cuda-emulator"))]
    fn cuda_plan(
        &self,
        input: &Layout,
        weight: &Layout,
        vector_rows: impl FnOnce(usize) -> bool,
    ) -> Result<(DwShape, crate::cuda_plan::LaunchPlan)> {
        let g = self.geometry(input, weight)?;
        let vec = vector_rows(g.width);
        let plan = crate::cuda_plan::depthwise_forward(
            g,
            false,
            crate::Activation::Identity,
            CudaDepthwiseKernel::Auto,
            vec,
        )?;
        Ok((g, plan))
    }

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
    candle_core::WithDType + Default + std::ops::Mul<Output = Self> + std::ops::AddAssign + num_traits::Float
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

/// Output rows accumulated at once: four independent accumulator chains per column block, so
/// a block does not wait on its own additions' latency (a 7x7 filter is 49 dependent adds per
/// output), and each tap's weight is loaded once for four rows.
const ROWS_AT_ONCE: usize = 4; // `convolve_blocks` names its four accumulators

/// Column block of the narrow late-layer planes (7 or fewer output columns): 8 lanes, so a
/// 7-wide row wastes one lane instead of nine.
const NARROW_COLUMN_BLOCK: usize = 8;

/// The zero-padded, phase-split copy of an input plane and the filter's tap offsets into it,
/// allocated once per task and reused for all of its planes (same geometry). The padding and
/// the slack are zeroed once: each plane overwrites exactly the interior.
///
/// For stride `s` the padded plane is de-interleaved into `s` column phases (column `s * j + r`
/// of the padded row is element `j` of phase `r`), so every tap of every output reads
/// contiguous memory with no bounds logic.
struct PlaneScratch<T> {
    phases: Vec<T>,
    /// Per tap `t = ky * k + kx`: its offset in the phase buffer from the first input of
    /// output (0, 0).
    offsets: Vec<usize>,
    /// The current plane's `(offset, weight)` per tap.
    taps: Vec<(usize, T)>,
    phase_w: usize,
    phase_len: usize,
    /// The largest of `offsets`.
    max_offset: usize,
    /// Output columns per accumulator block (16, or 8 for narrow planes).
    block: usize,
    split: PhaseSplit,
}

/// How an input row is spread over the column phases.
#[derive(Clone, Copy)]
enum PhaseSplit {
    /// Stride 1: one phase, the row copied as is.
    None,
    /// Stride 2: even input columns go to phase `even.0` from element `even.1` of the padded
    /// row, odd ones to `odd`.
    Pairs { even: (usize, usize), odd: (usize, usize) },
    /// Any other stride, column by column. (A division per element, with the stride unknown
    /// at compile time, took most of the stride-2 time before the `Pairs` case.)
    Strided,
}

impl<T: DwElement> PlaneScratch<T> {
    fn new(g: &DwShape) -> Self {
        let (k, s, pad) = (g.kernel, g.stride, g.padding);
        let padded_h = g.height + pad.top + pad.bottom;
        let padded_w = g.width + pad.left + pad.right;
        let phase_w = padded_w.div_ceil(s);
        let phase_len = padded_h * phase_w;
        let offsets: Vec<usize> =
            (0..k * k).map(|t| ((t % k) % s) * phase_len + (t / k) * phase_w + (t % k) / s).collect();
        let block = if g.out_width <= NARROW_COLUMN_BLOCK { NARROW_COLUMN_BLOCK } else { COLUMN_BLOCK };
        // The last row group and column block read up to `ROWS_AT_ONCE - 1` rows and a block
        // past the plane (those outputs are computed and dropped): slack so that they stay in
        // the (zeroed) buffer.
        let row_groups = g.out_height.div_ceil(ROWS_AT_ONCE) * ROWS_AT_ONCE;
        let max_offset = offsets.iter().copied().max().unwrap_or(0);
        let reach = (row_groups - 1) * s * phase_w + max_offset + g.out_width.next_multiple_of(block);
        let len = (s * phase_len).max(reach) + block;
        let split = match s {
            1 => PhaseSplit::None,
            // Input column x is padded column x + left: phase (x + left) % 2, element (x + left) / 2.
            2 => PhaseSplit::Pairs {
                even: (pad.left % 2, pad.left / 2),
                odd: ((1 + pad.left) % 2, pad.left.div_ceil(2)),
            },
            _ => PhaseSplit::Strided,
        };
        Self {
            phases: vec![T::zero(); len],
            taps: Vec::with_capacity(k * k),
            offsets,
            max_offset,
            phase_w,
            phase_len,
            block,
            split,
        }
    }

    /// Copies one input plane into the interior of the phase buffer.
    #[inline(always)]
    fn load(&mut self, input: &[T], g: &DwShape) {
        let pad = g.padding;
        for y in 0..g.height {
            let row = &input[y * g.width..(y + 1) * g.width];
            let at = (y + pad.top) * self.phase_w;
            match self.split {
                PhaseSplit::None => copy_row(&mut self.phases[at + pad.left..at + pad.left + g.width], row),
                PhaseSplit::Pairs { even, odd } => {
                    // Stride 2: input columns 2j and 2j + 1 go to element j (plus the padding's
                    // offset) of their phases; a fixed-stride loop the compiler vectorises with
                    // shuffles.
                    let (first, second) = self.phases.split_at_mut(self.phase_len);
                    let (even_phase, odd_phase) = if even.0 == 0 { (first, second) } else { (second, first) };
                    let even_row = &mut even_phase[at + even.1..at + even.1 + g.width.div_ceil(2)];
                    let odd_row = &mut odd_phase[at + odd.1..at + odd.1 + g.width / 2];
                    let pairs = row.chunks_exact(2);
                    if let [last] = pairs.remainder() {
                        even_row[g.width / 2] = *last;
                    }
                    for ((e, o), pair) in even_row.iter_mut().zip(odd_row.iter_mut()).zip(pairs) {
                        *e = pair[0];
                        *o = pair[1];
                    }
                }
                PhaseSplit::Strided => {
                    // Phase `rx` holds padded columns rx, rx + s, ...: input columns x0, x0 + s,
                    // ... from the first x0 with (x0 + left) % s == rx, stored contiguously.
                    let s = g.stride;
                    for rx in 0..s {
                        let x0 = (rx + s - pad.left % s) % s;
                        if x0 >= g.width {
                            continue;
                        }
                        let start = rx * self.phase_len + at + (x0 + pad.left) / s;
                        let count = (g.width - x0).div_ceil(s);
                        let dst = &mut self.phases[start..start + count];
                        for (d, &v) in dst.iter_mut().zip(row[x0..].iter().step_by(s)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    }

    /// One output plane from the loaded input and `filter` (`[k * k]`).
    /// Writes every element of `out` (one output plane), which is returned initialised.
    #[inline(always)]
    fn convolve<'o>(&mut self, filter: &[T], out: &'o mut [MaybeUninit<T>], g: &DwShape) -> &'o mut [T] {
        assert_eq!(out.len(), g.out_height * g.out_width, "an output plane");
        self.taps.clear();
        self.taps.extend(self.offsets.iter().zip(filter).map(|(&o, &w)| (o, w)));
        if self.block == NARROW_COLUMN_BLOCK {
            self.convolve_blocks::<NARROW_COLUMN_BLOCK>(out, g)
        } else {
            self.convolve_blocks::<COLUMN_BLOCK>(out, g)
        }
        // SAFETY: `convolve_blocks` wrote every element (its row groups and column blocks
        // cover all `out_height x out_width` outputs), and `MaybeUninit<T>` has `T`'s layout.
        unsafe { &mut *(out as *mut [MaybeUninit<T>] as *mut [T]) }
    }

    /// Blocks of `ROWS_AT_ONCE` rows x `B` columns, each accumulated in registers over all
    /// k x k taps and stored once. Per output the sum runs over the taps in order (ky, then
    /// kx), as it always has: the results are bit-identical to a plain loop.
    #[inline(always)]
    fn convolve_blocks<const B: usize>(&self, out: &mut [MaybeUninit<T>], g: &DwShape) {
        let row_step = g.stride * self.phase_w;
        let (phases, taps) = (&self.phases[..], &self.taps[..]);
        for oy in (0..g.out_height).step_by(ROWS_AT_ONCE) {
            let rows = ROWS_AT_ONCE.min(g.out_height - oy);
            for x0 in (0..g.out_width).step_by(B) {
                let base = oy * row_step + x0;
                let acc = row_group::<T, B>(phases, base, row_step, (taps, self.max_offset));
                let width = B.min(g.out_width - x0);
                for (r, acc) in acc.iter().enumerate().take(rows) {
                    let at = (oy + r) * g.out_width + x0;
                    if width == B {
                        // Fixed size: an inline vector store (a variable-length loop here
                        // became a `memmove` call per block).
                        let dst: &mut [MaybeUninit<T>; B] =
                            (&mut out[at..at + B]).try_into().expect("a full block");
                        for (d, &v) in dst.iter_mut().zip(acc) {
                            d.write(v);
                        }
                    } else {
                        for (d, &v) in out[at..at + width].iter_mut().zip(&acc[..width]) {
                            d.write(v);
                        }
                    }
                }
            }
        }
    }
}

/// `ROWS_AT_ONCE` rows x `B` columns of outputs from `base` (rows `row_step` apart), summed
/// over the taps. Four named accumulators in a small function of their own, as
/// [`column_block`] has one: with a 2-D array in the caller LLVM's vectoriser gave up and
/// every lane went scalar, through the stack. The bounds are checked once per call, not per
/// tap and row: with a slice check per load the loop was three quarters bookkeeping.
#[inline(always)]
fn row_group<T: DwElement, const B: usize>(
    phases: &[T],
    base: usize,
    row_step: usize,
    (taps, max_offset): (&[(usize, T)], usize),
) -> [[T; B]; ROWS_AT_ONCE] {
    let reach = base + (ROWS_AT_ONCE - 1) * row_step + max_offset + B;
    assert!(
        reach <= phases.len(),
        "row group reads up to {reach} of a {}-element phase buffer",
        phases.len()
    );
    let (mut a0, mut a1, mut a2, mut a3) =
        ([T::default(); B], [T::default(); B], [T::default(); B], [T::default(); B]);
    let first = phases.as_ptr().wrapping_add(base);
    for &(offset, w) in taps {
        debug_assert!(offset <= max_offset);
        let at = first.wrapping_add(offset);
        // SAFETY: `offset <= max_offset` (every tap offset is, by construction in
        // `PlaneScratch`), so each block read, `B` elements from `base + offset + r * row_step`
        // for r < 4, ends by `reach`, inside `phases` (asserted above).
        unsafe {
            add_scaled(&mut a0, w, &*at.cast::<[T; B]>());
            add_scaled(&mut a1, w, &*at.wrapping_add(row_step).cast::<[T; B]>());
            add_scaled(&mut a2, w, &*at.wrapping_add(2 * row_step).cast::<[T; B]>());
            add_scaled(&mut a3, w, &*at.wrapping_add(3 * row_step).cast::<[T; B]>());
        }
    }
    [a0, a1, a2, a3]
}

/// `acc += w * src`, lane by lane.
#[inline(always)]
fn add_scaled<T: DwElement, const B: usize>(acc: &mut [T; B], w: T, src: &[T; B]) {
    for (a, &x) in acc.iter_mut().zip(src) {
        *a += w * x;
    }
}

/// `dst.copy_from_slice(src)` in fixed-size pieces, which compile to inline vector moves: a
/// call to `memmove` per (short) row cost more than the copy itself. The last piece overlaps
/// the one before it (rewriting the same values) instead of a variable-length tail.
#[inline(always)]
fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    #[inline(always)]
    fn piece<T: Copy, const N: usize>(dst: &mut [T], src: &[T], at: usize) {
        let s: &[T; N] = src[at..at + N].try_into().expect("N elements");
        dst[at..at + N].copy_from_slice(s);
    }
    #[inline(always)]
    fn pieces<T: Copy, const N: usize>(dst: &mut [T], src: &[T]) {
        let n = src.len();
        let mut at = 0;
        while at + N <= n {
            piece::<T, N>(dst, src, at);
            at += N;
        }
        if at < n {
            piece::<T, N>(dst, src, n - N);
        }
    }
    assert_eq!(dst.len(), src.len(), "row copy");
    match src.len() {
        16.. => pieces::<T, 16>(dst, src),
        8.. => pieces::<T, 8>(dst, src),
        4.. => pieces::<T, 4>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Output elements per parallel task (whole planes): enough to amortise the task's scratch
/// set-up over several small late-layer planes, few enough to load-balance the early ones.
const TASK_ELEMENTS: usize = 16 * 1024;

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
    let planes = g.batch * g.channels;
    let per_task =
        (TASK_ELEMENTS / out_plane.max(1)).clamp(1, planes.div_ceil(4 * rayon::current_num_threads()).max(1));
    let fill = |task: usize, dst: &mut [MaybeUninit<T>]| {
        let mut scratch = PlaneScratch::new(&g);
        for (i, dst) in dst.chunks_mut(out_plane).enumerate() {
            let plane = task * per_task + i;
            let c = plane % g.channels;
            let src = &input[plane * in_plane..(plane + 1) * in_plane];
            let filter = &weight[c * kk..(c + 1) * kk];
            crate::simd::wide(
                #[inline(always)]
                || {
                    scratch.load(src, &g);
                    let dst = scratch.convolve(filter, dst, &g);
                    epilogue(c, dst);
                },
            );
        }
    };
    // SAFETY: `convolve` writes every element of each output plane, and the pieces are whole
    // planes.
    let out = unsafe { par_written_chunks(planes * out_plane, per_task * out_plane, fill) };
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
        let dev = s1.device();
        let x = crate::cuda::f32_view(s1, l1, "depthwise conv")?;
        let w = crate::cuda::f32_view(s2, l2, "depthwise conv")?;
        let (g, plan) = self.cuda_plan(l1, l2, |width| crate::cuda::vector_rows(dev, &x, width))?;
        Ok((crate::cuda::run_op(dev, &plan, &[&x, &w], 0)?, g.output_shape()))
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
        #[cfg(feature = "cuda-emulator")]
        if crate::cuda_emulator::takes(&[s1.dtype(), s2.dtype()]) {
            let (g, plan) = self.cuda_plan(l1, l2, crate::cuda_emulator::vector_rows)?;
            return Ok((crate::cuda_emulator::run_op(&plan, &[(s1, l1), (s2, l2)], 0)?, g.output_shape()));
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
            &DepthwiseInputGrad {
                stride: self.stride,
                padding: self.padding,
                height,
                width,
                simple_cuda_kernel: false,
            },
        )?;
        let grad_weight = input.apply_op2_no_bwd(
            grad_output,
            &DepthwiseWeightGrad {
                stride: self.stride,
                padding: self.padding,
                kernel: weight.dim(2)?,
                simple_cuda_kernel: false,
            },
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
    /// Which CUDA kernel runs (the GPU check compares and times them all); ignored by the CPU
    /// kernels.
    pub cuda_kernel: CudaDepthwiseKernel,
}

/// The CUDA depthwise forward kernels a shape can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CudaDepthwiseKernel {
    /// The tiled kernel (`TiledDepthwise::default()`) where it applies, else the direct one.
    #[default]
    Auto,
    /// One thread per output, whatever the shape.
    Direct,
    /// A variant of the tiled kernel, whatever it costs: the GPU check times several side by
    /// side so that the choices `Auto` makes rest on measurements. An error for shapes the tiled
    /// kernel does not cover.
    Tiled(TiledDepthwise),
}

/// How the tiled CUDA depthwise kernel runs; the default is what `Auto` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TiledDepthwise {
    /// Output rows per thread (2, 4 or 8); `None`: by the plane's height
    /// (`CudaDepthwiseKernel::auto_strip_height`). Taller strips read shared memory less per
    /// output but hold more accumulators (k7 s2: 32, 64 and 77 registers), so fewer blocks fit
    /// on a multiprocessor.
    pub rows_per_thread: Option<u8>,
    /// How stride-2 rows lie in shared memory (stride 1 has one layout).
    pub stride2_rows: Stride2Rows,
    /// Stage the input patch chunk by chunk, re-deriving each chunk's row and column (the
    /// 2026-11-28 kernels' staging) instead of row by row.
    pub chunk_staging: bool,
    /// Tiles 28 outputs wide and 56 or 28 tall (7 or 4 rows per thread) instead of 32 x 8R, so
    /// that 112-, 56- and 28-wide planes have no thread past their edge (32-wide tiles compute
    /// 77% useful outputs there). Only for planes whose sides are multiples of 28, with row
    /// staging and 16-byte aligned rows; an error elsewhere.
    pub fitted: bool,
}

/// The shared-memory layout of the tiled kernel's input rows at stride 2, where a warp's 32
/// threads read every other column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stride2Rows {
    /// As they lie in memory, each thread's taps read as 64-bit pairs from an even column
    /// (conflict-free, (k + 2) / 2 reads per row instead of k); row staging only. The default:
    /// of the three, the fewest instructions and registers (k7 s2: 901 SASS instructions per
    /// thread and 48 registers at r8, against 1016 and 78 de-interleaved; not yet timed on a
    /// GPU: the standing GPU check times it, NOTES.md).
    #[default]
    PlainPairs,
    /// Even columns, then odd ones: each tap read is conflict-free.
    DeInterleaved,
    /// As they lie in memory: each tap read hits every bank twice (the layout the 2026-11-28
    /// GPU run timed).
    Plain,
}

impl TiledDepthwise {
    /// The fitted tile (`fitted`) of planes `out_height` x `out_width`: output rows per thread
    /// and thread rows of a 28-wide block, if one covers the plane exactly.
    pub fn fitted_tile(out_height: usize, out_width: usize) -> Option<(usize, usize)> {
        match (out_width % 28, out_height % 56, out_height % 28) {
            (0, 0, _) => Some((7, 8)),
            (0, _, 0) => Some((4, 7)),
            _ => None,
        }
    }
}

impl CudaDepthwiseKernel {
    /// Output rows per thread that `Auto` gives the tiled kernels on planes `out_height` tall (a
    /// tile is 8 times that): tall tiles amortise the halo and keep more loads in flight; short
    /// planes take short tiles so few threads idle. The GPU check times the other choices beside
    /// this one.
    pub fn auto_strip_height(out_height: usize) -> usize {
        match out_height {
            48.. => 8,
            24.. => 4,
            _ => 2,
        }
    }
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
        #[cfg(feature = "cuda-emulator")]
        if crate::cuda_emulator::takes(&[s1.dtype(), s2.dtype(), s3.dtype()]) {
            let (g, plan) = self.cuda_plan(l1, l2, l3, crate::cuda_emulator::vector_rows)?;
            return Ok((
                crate::cuda_emulator::run_op(&plan, &[(s1, l1), (s2, l2), (s3, l3)], 0)?,
                g.output_shape(),
            ));
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
        let dev = s1.device();
        let x = crate::cuda::f32_view(s1, l1, "depthwise + affine")?;
        let w = crate::cuda::f32_view(s2, l2, "depthwise + affine")?;
        let affine = crate::cuda::f32_view(s3, l3, "depthwise + affine")?;
        let (g, plan) = self.cuda_plan(l1, l2, l3, |width| crate::cuda::vector_rows(dev, &x, width))?;
        Ok((crate::cuda::run_op(dev, &plan, &[&x, &w, &affine], 0)?, g.output_shape()))
    }
}

#[cfg(any(feature = "cuda", feature = "cuda-emulator"))]
impl DepthwiseAffineAct {
    /// The CUDA launches (`vector_rows(width)`: whether the input's rows allow 16-byte loads).
    fn cuda_plan(
        &self,
        l1: &Layout,
        l2: &Layout,
        l3: &Layout,
        vector_rows: impl FnOnce(usize) -> bool,
    ) -> Result<(DwShape, crate::cuda_plan::LaunchPlan)> {
        let conv = DepthwiseConv2d { stride: self.stride, padding: self.padding };
        let g = conv.geometry(l1, l2)?;
        check_affine(l3, g.channels)?;
        let vec = vector_rows(g.width);
        Ok((g, crate::cuda_plan::depthwise_forward(g, true, self.activation, self.cuda_kernel, vec)?))
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
    let op = DepthwiseAffineAct { stride, padding, activation, cuda_kernel: CudaDepthwiseKernel::Auto };
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
            for &s in &[1usize, 2, 3] {
                // Narrow (8-column blocks) and wide planes, several 16-column blocks and
                // 4-row groups with remainders, odd and even widths.
                for &(h, w) in &[(9usize, 11usize), (14, 14), (7, 6), (23, 37)] {
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
