//! What each CUDA op launches, as data: kernel names, grids, blocks and argument lists.
//!
//! Why a plan instead of launching directly: the same plan is executed by two runners, the real
//! one (`cuda.rs`, on a GPU) and the CPU emulator (`cuda_emulator.rs`, which runs the kernels'
//! own source compiled for the host). So CI, which has no GPU, tests the kernel selection, the
//! tiling arithmetic and every argument list against the CPU ops, and the GPU machine only has
//! to confirm the device agrees. Compiled in every build: it needs nothing from CUDA.
//!
//! Buffers are numbered: the op's inputs first, then the buffers the plan allocates (`outputs`,
//! in order; the op's result is among them, temporaries too). Every allocated element that an op
//! exposes is written by one of the plan's launches (each constructor says which).

use candle_core::Result;

use crate::depthwise::{CudaDepthwiseKernel, DwShape, Stride2Rows, TiledDepthwise};
use crate::Activation;

/// Threads per block of the element-wise (grid-stride) kernels.
const THREADS: u32 = 256;
/// Output columns of a tiled depthwise block (`TILE_W` in kernels.cu).
const TILE_W: usize = 32;
/// Thread rows of a tiled depthwise block (`BLOCK_Y` in kernels.cu).
const BLOCK_Y: usize = 8;
/// Threads of a weight-gradient block (`WG_THREADS` in kernels.cu).
const WG_THREADS: u32 = 256;
/// Grid-stride kernels never launch more blocks than this (32 per multiprocessor of an H100/H200).
const MAX_GRID_BLOCKS: usize = 132 * 32;

/// One kernel argument, as the kernel's C signature takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    /// A pointer `offset` elements into buffer `index` (inputs first, then the plan's outputs).
    Buffer {
        index: usize,
        offset: usize,
    },
    /// A null pointer (an optional operand the kernel skips).
    Null,
    I32(i32),
    I64(i64),
    /// (Only the GPU's poisoning fill and the emulator's tests pass one.)
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    F32(f32),
}

impl KernelArg {
    /// Bytes of the parameter in the kernel's signature (the emulator checks them).
    pub fn size(&self) -> usize {
        match self {
            KernelArg::Buffer { .. } | KernelArg::Null | KernelArg::I64(_) => 8,
            KernelArg::I32(_) | KernelArg::F32(_) => 4,
        }
    }
}

/// One kernel launch.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelLaunch {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    pub args: Vec<KernelArg>,
}

/// The launches of one op, in order, and the buffers they need.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// How many input buffers the op passes (numbered `0..inputs`).
    pub inputs: usize,
    /// Element counts of the buffers the plan allocates (numbered from `inputs` on). Each is
    /// allocated with at least one element, so an empty op still has a valid pointer.
    pub outputs: Vec<usize>,
    pub launches: Vec<KernelLaunch>,
}

fn buffer(index: usize) -> KernelArg {
    KernelArg::Buffer { index, offset: 0 }
}

fn int(v: usize, what: &str) -> Result<KernelArg> {
    Ok(KernelArg::I32(int_value(v, what)?))
}

fn int_value(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| candle_core::Error::msg(format!("{what} = {v} exceeds the CUDA kernels' i32 range")))
}

fn long(v: usize) -> KernelArg {
    KernelArg::I64(v as i64)
}

/// The kernels' activation codes (`activate` in kernels.cu).
fn code(activation: Activation) -> KernelArg {
    KernelArg::I32(match activation {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Relu6 => 2,
        Activation::Swish => 3,
        Activation::Sigmoid => 4,
    })
}

/// A grid-stride launch over `total` elements: enough blocks of `THREADS` to give each thread a
/// few elements.
fn grid_stride(kernel: &str, total: usize, args: Vec<KernelArg>) -> KernelLaunch {
    let blocks = total.div_ceil(THREADS as usize).clamp(1, MAX_GRID_BLOCKS) as u32;
    KernelLaunch {
        kernel: kernel.into(),
        grid: [blocks, 1, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
        args,
    }
}

/// Which forward kernel a shape runs on: the shared-memory tiled one for the sizes it is built
/// for when the plane is at least a tile wide, else one thread per output.
pub fn depthwise_forward_variant(kernel: usize, stride: usize, out_width: usize) -> &'static str {
    if matches!(kernel, 3 | 5 | 7) && matches!(stride, 1 | 2) && out_width >= 16 {
        "tiled"
    } else {
        "direct"
    }
}

/// Whether rows of `width` floats starting at `address` may be read with 16-byte vector loads
/// (the `_v4` kernels): the start is 16-byte aligned and every row keeps that alignment.
pub fn vector_rows(address: u64, width: usize) -> bool {
    width.is_multiple_of(4) && address.is_multiple_of(16)
}

/// The largest second and third grid dimension CUDA launches take.
const MAX_GRID_YZ: usize = 65535;

/// How a tiled kernel runs: blocks of `block` threads (across, down), each thread `rows`
/// outputs tall; `grid_3d`: the grid is (tile, channel, sample) instead of one flat index.
struct TiledLaunch {
    block: [usize; 2],
    rows: usize,
    grid_3d: bool,
}

/// A tiled kernel's launch over the `channels` x `batch` planes of `h` x `w` outputs; its last
/// two arguments are the tile counts across and down, which this appends.
fn tiled(
    kernel: String,
    (channels, batch): (usize, usize),
    (h, w): (usize, usize),
    how: TiledLaunch,
    mut args: Vec<KernelArg>,
) -> Result<KernelLaunch> {
    let [bw, bh] = how.block;
    let (tiles_x, tiles_y) = (w.div_ceil(bw), h.div_ceil(bh * how.rows));
    let too_many = || candle_core::Error::msg("depthwise: too many tiles for one CUDA launch");
    let grid = if how.grid_3d {
        [u32::try_from(tiles_x * tiles_y).map_err(|_| too_many())?, channels as u32, batch as u32]
    } else {
        [u32::try_from(channels * batch * tiles_x * tiles_y).map_err(|_| too_many())?, 1, 1]
    };
    args.push(int(tiles_x, "tiles")?);
    args.push(int(tiles_y, "tiles")?);
    Ok(KernelLaunch { kernel, grid, block: [bw as u32, bh as u32, 1], shared_bytes: 0, args })
}

/// Strip height, block shape and kernel-name suffix of the tiled forward kernel variant `t`
/// (fitted 28-wide tiles or the 32-wide ones) for `s`, staged as `vec`, `layout` and
/// `chunk_staging` say.
fn tile_geometry(
    s: &DwShape,
    t: &TiledDepthwise,
    (vec, layout, chunk_staging, input_vector_rows): (&str, Stride2Rows, bool, bool),
) -> Result<(usize, [usize; 2], String)> {
    Ok(if t.fitted {
        let fit = TiledDepthwise::fitted_tile(s.out_height, s.out_width);
        let Some((rows, block_rows)) = fit.filter(|_| {
            input_vector_rows
                && !chunk_staging
                && (s.stride == 1 || layout != Stride2Rows::Plain)
                && t.rows_per_thread.is_none()
        }) else {
            candle_core::bail!(
                "depthwise: no fitted CUDA tile for {}x{} outputs (they take widths and heights \
                 that are multiples of 28, 16-byte aligned rows, row staging, stride-2 rows \
                 read in pairs or de-interleaved, and their own strip height)",
                s.out_height,
                s.out_width
            );
        };
        (rows, [28, block_rows], format!("{vec}_w28x{block_rows}"))
    } else {
        let rows = match t.rows_per_thread {
            Some(r @ (2 | 4 | 8)) => usize::from(r),
            Some(r) => candle_core::bail!(
                "depthwise: the tiled CUDA kernel takes 2, 4 or 8 output rows per thread, not {r}"
            ),
            None => CudaDepthwiseKernel::auto_strip_height(s.out_height),
        };
        (rows, [TILE_W, BLOCK_Y], vec.to_string())
    })
}

/// Depthwise forward, `act(conv * scale[c] + shift[c])` or the bare convolution.
///
/// Inputs: 0 x `[N, C, H, W]`, 1 weight `[C, 1, k, k]`, and with `affine` 2 `[2, C]` (scale;
/// shift). Output 0 (buffer `inputs`): y, every element written once.
pub fn depthwise_forward(
    s: DwShape,
    affine: bool,
    activation: Activation,
    kernel: CudaDepthwiseKernel,
    input_vector_rows: bool,
) -> Result<LaunchPlan> {
    let inputs = if affine { 3 } else { 2 };
    let total = s.batch * s.channels * s.out_height * s.out_width;
    let mut plan = LaunchPlan { inputs, outputs: vec![total], launches: Vec::new() };
    if total == 0 {
        return Ok(plan);
    }
    let mut args = vec![buffer(0), buffer(1)];
    if affine {
        args.push(buffer(2));
        args.push(KernelArg::Buffer { index: 2, offset: s.channels });
    } else {
        args.extend([KernelArg::Null, KernelArg::Null]);
    }
    args.push(buffer(inputs));
    let shape = [
        int(s.channels, "channels")?,
        int(s.height, "height")?,
        int(s.width, "width")?,
        int(s.out_height, "output height")?,
        int(s.out_width, "output width")?,
    ];
    let (pad_top, pad_left) = (int(s.padding.top, "padding")?, int(s.padding.left, "padding")?);
    let tiled_shape = depthwise_forward_variant(s.kernel, s.stride, s.out_width) == "tiled";
    let tiled_variant = match kernel {
        CudaDepthwiseKernel::Auto if tiled_shape => Some(TiledDepthwise::default()),
        CudaDepthwiseKernel::Auto | CudaDepthwiseKernel::Direct => None,
        CudaDepthwiseKernel::Tiled(t) if tiled_shape => Some(t),
        CudaDepthwiseKernel::Tiled(_) => candle_core::bail!(
            "depthwise: the tiled CUDA kernel does not cover k{} s{} with {} output columns \
             (it takes k 3/5/7, strides 1/2 and planes at least 16 outputs wide)",
            s.kernel,
            s.stride,
            s.out_width
        ),
    };
    let launch = if let Some(t) = tiled_variant {
        // The row-staged kernels' 3-D grid holds at most 65535 channels and samples; `Auto`
        // takes the chunk-staged kernel (a 1-D grid) beyond. Scalar staging has a 1-D grid.
        let grid_fits = !input_vector_rows || (s.channels <= MAX_GRID_YZ && s.batch <= MAX_GRID_YZ);
        if !grid_fits && !t.chunk_staging && kernel != CudaDepthwiseKernel::Auto {
            candle_core::bail!(
                "depthwise: the row-staged CUDA kernel takes at most {MAX_GRID_YZ} channels and \
                 samples, not {} x {} (the chunk-staged one takes any)",
                s.channels,
                s.batch
            );
        }
        let chunk_staging = t.chunk_staging || !grid_fits;
        let layout = match (s.stride, t.stride2_rows) {
            (1, _) => Stride2Rows::Plain,
            // Past the 3-D grid's limits `Auto` keeps conflict-free reads with chunk staging.
            (_, Stride2Rows::PlainPairs) if chunk_staging && kernel == CudaDepthwiseKernel::Auto => {
                Stride2Rows::DeInterleaved
            }
            (_, layout) => layout,
        };
        // Scalar staging (rows not 16-byte aligned) has one layout and one staging.
        let vec = match (input_vector_rows, layout, chunk_staging) {
            (false, _, _) => "",
            (true, Stride2Rows::Plain, true) => "_v4",
            (true, Stride2Rows::Plain, false) => "_v4r",
            (true, Stride2Rows::DeInterleaved, true) => "_v4s",
            (true, Stride2Rows::DeInterleaved, false) => "_v4sr",
            (true, Stride2Rows::PlainPairs, false) => "_v4pr",
            (true, Stride2Rows::PlainPairs, true) => candle_core::bail!(
                "depthwise: the CUDA kernel reading taps in pairs stages its rows row by row, not chunk by chunk"
            ),
        };
        let (rows, block, suffix) = tile_geometry(&s, &t, (vec, layout, chunk_staging, input_vector_rows))?;
        args.extend(shape);
        args.extend([pad_top, pad_left, code(activation)]);
        let name = format!("dw_forward_tiled_k{}_s{}_r{rows}{suffix}", s.kernel, s.stride);
        // Row-staged kernels read their tile, channel and sample from a 3-D grid.
        let how = TiledLaunch { block, rows, grid_3d: vec.ends_with('r') };
        tiled(name, (s.channels, s.batch), (s.out_height, s.out_width), how, args)?
    } else {
        args.push(long(total));
        args.extend(shape);
        args.extend([
            int(s.kernel, "kernel")?,
            int(s.stride, "stride")?,
            pad_top,
            pad_left,
            code(activation),
        ]);
        grid_stride("dw_forward_direct", total, args)
    };
    plan.launches.push(launch);
    Ok(plan)
}

/// Row pairs per thread of the stride-2 input gradient (`RP` of `dw_input_grad_s2`).
const INPUT_GRAD_S2_ROW_PAIRS: usize = 2;

/// d(loss)/d(input) of the depthwise convolution. Stride 1: the tiled forward kernel on the
/// output gradient with the flipped filter and padding `k - 1 - p`. Stride 2: 2x2 blocks per
/// thread, one parity class of taps per output (`dw_input_grad_s2`). Otherwise, or when
/// `simple`, a gather, one thread per input element.
///
/// Inputs: 0 the output gradient `[N, C, Ho, Wo]`, 1 the weight. Output 0: dx, every element
/// written once.
pub fn depthwise_input_grad(s: DwShape, grad_vector_rows: bool, simple: bool) -> Result<LaunchPlan> {
    let total = s.batch * s.channels * s.height * s.width;
    let mut plan = LaunchPlan { inputs: 2, outputs: vec![total], launches: Vec::new() };
    if total == 0 {
        return Ok(plan);
    }
    let flip_pads = (s.kernel.checked_sub(1 + s.padding.top), s.kernel.checked_sub(1 + s.padding.left));
    // (g, w, dx, channels, ho, wo, h, w): how both blocked kernels start.
    let mut args = vec![
        buffer(0),
        buffer(1),
        buffer(2),
        int(s.channels, "channels")?,
        int(s.out_height, "output height")?,
        int(s.out_width, "output width")?,
        int(s.height, "height")?,
        int(s.width, "width")?,
    ];
    let launch = if let (false, 1, 3 | 5 | 7, true, (Some(pt), Some(pl))) =
        (simple, s.stride, s.kernel, s.width >= 16, flip_pads)
    {
        let rows = CudaDepthwiseKernel::auto_strip_height(s.height);
        let vec = if grad_vector_rows { "_v4" } else { "" };
        args.extend([int(pt, "padding")?, int(pl, "padding")?]);
        let name = format!("dw_input_grad_tiled_k{}_r{rows}{vec}", s.kernel);
        let how = TiledLaunch { block: [TILE_W, BLOCK_Y], rows, grid_3d: false };
        tiled(name, (s.channels, s.batch), (s.height, s.width), how, args)?
    } else if let (false, 2, 3 | 5 | 7) = (simple, s.stride, s.kernel) {
        // A block covers 2 TILE_W columns and 2 INPUT_GRAD_S2_ROW_PAIRS BLOCK_Y rows of dx.
        let tiles_x = s.width.div_ceil(2 * TILE_W);
        let tiles_y = s.height.div_ceil(2 * INPUT_GRAD_S2_ROW_PAIRS * BLOCK_Y);
        let blocks = u32::try_from(s.batch * s.channels * tiles_x * tiles_y).map_err(|_| {
            candle_core::Error::msg("depthwise input grad: too many tiles for one CUDA launch")
        })?;
        args.extend([
            int(s.padding.top, "padding")?,
            int(s.padding.left, "padding")?,
            int(tiles_x, "tiles")?,
            int(tiles_y, "tiles")?,
        ]);
        KernelLaunch {
            kernel: format!("dw_input_grad_s2_k{}_p{}{}", s.kernel, s.padding.top % 2, s.padding.left % 2),
            grid: [blocks, 1, 1],
            block: [TILE_W as u32, BLOCK_Y as u32, 1],
            shared_bytes: 0,
            args,
        }
    } else {
        let args = vec![
            buffer(0),
            buffer(1),
            buffer(2),
            long(total),
            int(s.channels, "channels")?,
            int(s.height, "height")?,
            int(s.width, "width")?,
            int(s.out_height, "output height")?,
            int(s.out_width, "output width")?,
            int(s.kernel, "kernel")?,
            int(s.stride, "stride")?,
            int(s.padding.top, "padding")?,
            int(s.padding.left, "padding")?,
        ];
        grid_stride("dw_input_grad", total, args)
    };
    plan.launches.push(launch);
    Ok(plan)
}

/// d(loss)/d(weight) `[C, 1, k, k]`: per-(channel, batch chunk) partial sums (stride 1 and 2:
/// `dw_weight_grad_columns`, walking each output column's input rows; else, or when `simple`,
/// `dw_weight_grad_partial`), then the chunks summed in order (deterministic).
///
/// Inputs: 0 x, 1 the output gradient. Outputs: 0 (buffer 2) the weight gradient, written by the
/// second launch; 1 (buffer 3) the partial sums, every (chunk, channel, tap) written by the first.
pub fn depthwise_weight_grad(s: DwShape, simple: bool) -> Result<LaunchPlan> {
    if !matches!(s.kernel, 3 | 5 | 7) {
        candle_core::bail!("depthwise weight grad on CUDA: kernel {} (supported: 3, 5, 7)", s.kernel);
    }
    let len = s.channels * s.kernel * s.kernel;
    // Stride 1 and 2: the by-columns kernel, one wave of 8 blocks (of 256 threads) per
    // multiprocessor of an H100/H200; otherwise about four blocks per multiprocessor. Never more
    // chunks than samples.
    let columns = !simple && matches!(s.stride, 1 | 2);
    let blocks_wanted: usize = if columns { 132 * 8 } else { 528 };
    let chunks = blocks_wanted.div_ceil(s.channels.max(1)).clamp(1, s.batch.max(1));
    let mut plan = LaunchPlan { inputs: 2, outputs: vec![len, chunks * len], launches: Vec::new() };
    if len == 0 {
        return Ok(plan);
    }
    let blocks = u32::try_from(chunks * s.channels).map_err(|_| {
        candle_core::Error::msg("depthwise weight grad: too many channels for one CUDA launch")
    })?;
    let mut args = vec![
        buffer(0),
        buffer(1),
        buffer(3),
        int(s.batch, "batch")?,
        int(s.channels, "channels")?,
        int(s.height, "height")?,
        int(s.width, "width")?,
        int(s.out_height, "output height")?,
        int(s.out_width, "output width")?,
    ];
    if !columns {
        args.push(int(s.stride, "stride")?);
    }
    args.extend([int(s.padding.top, "padding")?, int(s.padding.left, "padding")?, int(chunks, "chunks")?]);
    plan.launches.push(if columns {
        KernelLaunch {
            kernel: format!("dw_weight_grad_columns_k{}_s{}", s.kernel, s.stride),
            grid: [blocks, 1, 1],
            block: [TILE_W as u32, BLOCK_Y as u32, 1],
            shared_bytes: 0,
            args,
        }
    } else {
        KernelLaunch {
            kernel: format!("dw_weight_grad_partial_k{}", s.kernel),
            grid: [blocks, 1, 1],
            block: [WG_THREADS, 1, 1],
            shared_bytes: 0,
            args,
        }
    });
    plan.launches.push(KernelLaunch {
        kernel: "sum_chunks".into(),
        grid: [len.div_ceil(THREADS as usize) as u32, 1, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
        args: vec![buffer(3), buffer(2), int(len, "weight size")?, int(chunks, "chunks")?],
    });
    Ok(plan)
}

/// One warp per plane: the mean of each of `planes` planes of `hw` elements of buffer `x`
/// into buffer `mean`, and with `other` the per-plane sum of `x * other` into `dot`.
fn plane_reduce(
    x: usize,
    other: Option<usize>,
    mean: KernelArg,
    dot: KernelArg,
    planes: usize,
    hw: usize,
) -> Result<KernelLaunch> {
    let blocks = u32::try_from((planes * 32).div_ceil(THREADS as usize))
        .map_err(|_| candle_core::Error::msg("plane reduce: too many planes for one CUDA launch"))?;
    Ok(KernelLaunch {
        kernel: "plane_reduce".into(),
        grid: [blocks, 1, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
        args: vec![
            buffer(x),
            other.map_or(KernelArg::Null, buffer),
            mean,
            dot,
            long(planes),
            int(hw, "plane size")?,
        ],
    })
}

/// Fused squeeze-excite forward: pool (a warp per plane), the two FCs (a block per sample),
/// scale: x is read twice and written once.
///
/// Inputs: 0 x `[N, C, H, W]`, 1 reduce `[R, C + 1]`, 2 expand `[C, R + 1]` (packed FCs).
/// Outputs: 0 (buffer 3) y, 1 the pooled means `[N, C]`, 2 the gates `[N, C]`; each written
/// whole by its launch.
pub fn squeeze_excite((n, c, hw, r): (usize, usize, usize, usize), inner: Activation) -> Result<LaunchPlan> {
    let (planes, total) = (n * c, n * c * hw);
    let mut plan = LaunchPlan { inputs: 3, outputs: vec![total, planes, planes], launches: Vec::new() };
    if total == 0 {
        return Ok(plan);
    }
    let shared = ((c + r) * 4) as u32;
    if shared > 48 * 1024 {
        candle_core::bail!("squeeze-excite on CUDA: {c} + {r} channels exceed the 48 KiB of shared memory");
    }
    plan.launches.push(plane_reduce(0, None, buffer(4), KernelArg::Null, planes, hw)?);
    plan.launches.push(KernelLaunch {
        kernel: "se_gates".into(),
        grid: [
            u32::try_from(n).map_err(|_| candle_core::Error::msg("squeeze-excite: batch too large"))?,
            1,
            1,
        ],
        block: [THREADS, 1, 1],
        shared_bytes: shared,
        args: vec![
            buffer(4),
            buffer(1),
            buffer(2),
            buffer(5),
            int(c, "channels")?,
            int(r, "reduced channels")?,
            code(inner),
        ],
    });
    plan.launches.push(scale_planes_launch(0, 5, None, 3, total, hw)?);
    Ok(plan)
}

/// Per-plane mean of x and sum of `x * y` (the SE backward's one read of both).
///
/// Inputs: 0 x, 1 y, `planes` planes of `hw`. Output 0 (buffer 2): `[2, planes]`, means then
/// dot products, both halves written.
pub fn plane_stats(planes: usize, hw: usize) -> Result<LaunchPlan> {
    let mut plan = LaunchPlan { inputs: 2, outputs: vec![2 * planes], launches: Vec::new() };
    if planes == 0 {
        return Ok(plan);
    }
    let dot = KernelArg::Buffer { index: 2, offset: planes };
    plan.launches.push(plane_reduce(0, Some(1), buffer(2), dot, planes, hw)?);
    Ok(plan)
}

fn scale_planes_launch(
    x: usize,
    gate: usize,
    bias: Option<usize>,
    y: usize,
    total: usize,
    hw: usize,
) -> Result<KernelLaunch> {
    let args = vec![
        buffer(x),
        buffer(gate),
        bias.map_or(KernelArg::Null, buffer),
        buffer(y),
        long(total),
        int(hw, "plane size")?,
    ];
    Ok(grid_stride("scale_planes", total, args))
}

/// `x * gate[plane] (+ bias[plane])` over `total` elements in planes of `hw`.
///
/// Inputs: 0 x, 1 gate, and with `bias` 2 bias. Output 0: y, every element written once.
pub fn scale_planes(total: usize, hw: usize, bias: bool) -> Result<LaunchPlan> {
    let inputs = if bias { 3 } else { 2 };
    let mut plan = LaunchPlan { inputs, outputs: vec![total], launches: Vec::new() };
    if total == 0 {
        return Ok(plan);
    }
    plan.launches.push(scale_planes_launch(0, 1, bias.then_some(2), inputs, total, hw)?);
    Ok(plan)
}

/// `act(x * scale[c] + shift[c])` over `[N, C, HW]`.
///
/// Inputs: 0 x, 1 scale `[C]`, 2 shift `[C]`. Output 0: y, every element written once.
pub fn channel_affine_act((n, c, hw): (usize, usize, usize), activation: Activation) -> Result<LaunchPlan> {
    let total = n * c * hw;
    let mut plan = LaunchPlan { inputs: 3, outputs: vec![total], launches: Vec::new() };
    if total == 0 {
        return Ok(plan);
    }
    let args = vec![
        buffer(0),
        buffer(1),
        buffer(2),
        buffer(3),
        long(total),
        int(c, "channels")?,
        int(hw, "plane size")?,
        code(activation),
    ];
    plan.launches.push(grid_stride("channel_affine_act", total, args));
    Ok(plan)
}

/// The NaN fill of a poisoned output buffer (`fill_f32`): buffer `index` of `len` elements.
#[cfg(feature = "cuda")]
pub fn fill_nan(index: usize, len: usize) -> KernelLaunch {
    grid_stride("fill_f32", len, vec![buffer(index), long(len), KernelArg::F32(f32::NAN)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Padding2d;
    use CudaDepthwiseKernel::{Auto, Direct, Tiled};

    fn shape(k: usize, s: usize, h: usize, w: usize) -> DwShape {
        let padding = Padding2d::symmetric(k);
        let out = |v: usize| (v + 2 * (k / 2) - k) / s + 1;
        DwShape {
            batch: 2,
            channels: 3,
            height: h,
            width: w,
            kernel: k,
            stride: s,
            padding,
            out_height: out(h),
            out_width: out(w),
        }
    }

    #[test]
    fn tiled_forward_covers_every_output_with_its_tiles() {
        // 112x112, k7 s2 -> 56x56: rows per thread 8, tiles 64 tall and 32 wide.
        let plan = depthwise_forward(shape(7, 2, 112, 112), true, Activation::Relu6, Auto, true).unwrap();
        let launch = &plan.launches[0];
        assert_eq!(launch.kernel, "dw_forward_tiled_k7_s2_r8_v4pr");
        assert_eq!(launch.block, [32, 8, 1]);
        let tiles = |i: usize| match launch.args[launch.args.len() - i] {
            KernelArg::I32(v) => v as u32,
            ref a => panic!("{a:?}"),
        };
        let (tiles_x, tiles_y) = (tiles(2), tiles(1));
        assert_eq!((tiles_x, tiles_y), (2, 1));
        // Row-staged: a 3-D grid of (tile, channel, sample).
        assert_eq!(launch.grid, [tiles_x * tiles_y, 3, 2]);
        assert_eq!(plan.outputs, vec![2 * 3 * 56 * 56]);
        // The affine's shift is the second row of the [2, C] operand.
        assert_eq!(launch.args[3], KernelArg::Buffer { index: 2, offset: 3 });
        assert_eq!(launch.args[4], KernelArg::Buffer { index: 3, offset: 0 });
    }

    fn rows(r: u8) -> CudaDepthwiseKernel {
        Tiled(TiledDepthwise { rows_per_thread: Some(r), ..Default::default() })
    }

    #[test]
    fn forced_rows_per_thread_keep_the_layout_and_retile_the_plane() {
        let launch = |kernel| {
            depthwise_forward(shape(7, 2, 112, 112), true, Activation::Relu6, kernel, true).unwrap().launches
                [0]
            .clone()
        };
        // 56 output rows: 4 tiles of 16 rows at r2, 2 of 32 at r4; 2 tiles across either way.
        for (r, tiles_y) in [(2u8, 4u32), (4, 2), (8, 1)] {
            let l = launch(rows(r));
            assert_eq!(l.kernel, format!("dw_forward_tiled_k7_s2_r{r}_v4pr"));
            assert_eq!(l.grid, [2 * tiles_y, 3, 2]);
            assert_eq!(l.args[l.args.len() - 1], KernelArg::I32(tiles_y as i32));
        }
        assert_eq!(launch(rows(8)), launch(Auto));
        assert_eq!(launch(Tiled(TiledDepthwise::default())), launch(Auto));
        let err = |kernel, k, w| {
            depthwise_forward(shape(k, 1, 40, w), false, Activation::Identity, kernel, false)
                .unwrap_err()
                .to_string()
        };
        assert!(err(rows(3), 3, 40).contains("2, 4 or 8 output rows per thread, not 3"));
        // No silent fall-back to the direct kernel: a timing would be labelled wrongly.
        assert!(err(rows(2), 3, 7).contains("does not cover k3 s1 with 7 output columns"));
        assert!(err(Tiled(TiledDepthwise::default()), 9, 40).contains("does not cover k9 s1"));
    }

    #[test]
    fn fitted_tiles_cover_planes_of_multiples_of_28_with_no_thread_past_the_edge() {
        let fitted = Tiled(TiledDepthwise { fitted: true, ..Default::default() });
        let launch = |k, s, size, kernel, vec| {
            depthwise_forward(shape(k, s, size, size), true, Activation::Relu6, kernel, vec)
                .map(|p| p.launches[0].clone())
        };
        // 112 -> 56 (k7 s2): 28 x 56 tiles, 2 x 1 of them; 56 -> 28: 28 x 28 tiles.
        let l = launch(7, 2, 112, fitted, true).unwrap();
        assert_eq!(l.kernel, "dw_forward_tiled_k7_s2_r7_v4pr_w28x8");
        assert_eq!((l.block, l.grid), ([28, 8, 1], [2, 3, 2]));
        let l = launch(7, 2, 56, fitted, true).unwrap();
        assert_eq!(l.kernel, "dw_forward_tiled_k7_s2_r4_v4pr_w28x7");
        assert_eq!((l.block, l.grid), ([28, 7, 1], [1, 3, 2]));
        let l = launch(3, 1, 112, fitted, true).unwrap();
        assert_eq!(l.kernel, "dw_forward_tiled_k3_s1_r7_v4r_w28x8");
        assert_eq!(l.grid, [4 * 2, 3, 2]);
        for (k, s, size, kernel, vec) in [
            (3, 1, 40, fitted, true),  // 40 is no multiple of 28
            (3, 1, 56, fitted, false), // rows not aligned: scalar staging has no fitted tile
            (
                7,
                2,
                112,
                Tiled(TiledDepthwise {
                    fitted: true,
                    chunk_staging: true,
                    stride2_rows: Stride2Rows::DeInterleaved,
                    ..Default::default()
                }),
                true,
            ),
            (
                7,
                2,
                112,
                Tiled(TiledDepthwise {
                    fitted: true,
                    stride2_rows: Stride2Rows::Plain,
                    ..Default::default()
                }),
                true,
            ),
            (
                7,
                2,
                112,
                Tiled(TiledDepthwise { fitted: true, rows_per_thread: Some(8), ..Default::default() }),
                true,
            ),
        ] {
            let err = launch(k, s, size, kernel, vec).unwrap_err().to_string();
            assert!(err.contains("no fitted CUDA tile"), "{k} {s} {size} {kernel:?}: {err}");
        }
        let de_interleaved =
            TiledDepthwise { fitted: true, stride2_rows: Stride2Rows::DeInterleaved, ..Default::default() };
        let l = launch(7, 2, 112, Tiled(de_interleaved), true).unwrap();
        assert_eq!(l.kernel, "dw_forward_tiled_k7_s2_r7_v4sr_w28x8");
        assert_eq!(TiledDepthwise::fitted_tile(14, 14), None);
        assert_eq!(TiledDepthwise::fitted_tile(28, 56), Some((4, 7)));
        assert_eq!(TiledDepthwise::fitted_tile(56, 28), Some((7, 8)));
    }

    #[test]
    fn batches_past_the_grid_limit_take_the_chunk_staged_kernel_and_its_flat_grid() {
        let big = DwShape { batch: 70_000, ..shape(3, 1, 40, 40) };
        let plan = depthwise_forward(big, false, Activation::Identity, Auto, true).unwrap();
        let launch = &plan.launches[0];
        assert_eq!(launch.kernel, "dw_forward_tiled_k3_s1_r4_v4");
        assert_eq!(launch.grid, [70_000 * 3 * 4, 1, 1]);
        let s2 = DwShape { batch: 70_000, ..shape(3, 2, 40, 40) };
        let plan = depthwise_forward(s2, false, Activation::Identity, Auto, true).unwrap();
        assert_eq!(plan.launches[0].kernel, "dw_forward_tiled_k3_s2_r2_v4s");
        let err = depthwise_forward(big, false, Activation::Identity, Tiled(TiledDepthwise::default()), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 65535 channels and samples, not 3 x 70000"), "{err}");
    }

    #[test]
    fn narrow_planes_and_other_kernel_sizes_take_the_direct_kernel() {
        let narrow = depthwise_forward(shape(3, 1, 7, 7), false, Activation::Identity, Auto, false).unwrap();
        assert_eq!(narrow.launches[0].kernel, "dw_forward_direct");
        let k9 = depthwise_forward(shape(9, 1, 40, 40), false, Activation::Identity, Auto, false).unwrap();
        assert_eq!(k9.launches[0].kernel, "dw_forward_direct");
        let forced =
            depthwise_forward(shape(3, 1, 40, 40), false, Activation::Identity, Direct, false).unwrap();
        assert_eq!(forced.launches[0].kernel, "dw_forward_direct");
    }

    #[test]
    fn rows_are_staged_row_by_row_and_read_in_pairs_at_stride_two_unless_asked_otherwise() {
        let name = |s, kernel, vec| {
            let plan =
                depthwise_forward(shape(5, s, 40, 40), false, Activation::Identity, kernel, vec).unwrap();
            plan.launches[0].kernel.clone()
        };
        let tiled = |stride2_rows, chunk_staging| {
            Tiled(TiledDepthwise { stride2_rows, chunk_staging, ..Default::default() })
        };
        use Stride2Rows::{DeInterleaved, Plain, PlainPairs};
        assert_eq!(name(2, Auto, true), "dw_forward_tiled_k5_s2_r2_v4pr");
        assert_eq!(name(2, tiled(DeInterleaved, false), true), "dw_forward_tiled_k5_s2_r2_v4sr");
        assert_eq!(name(2, tiled(DeInterleaved, true), true), "dw_forward_tiled_k5_s2_r2_v4s");
        assert_eq!(name(2, tiled(Plain, false), true), "dw_forward_tiled_k5_s2_r2_v4r");
        assert_eq!(name(2, tiled(PlainPairs, false), true), "dw_forward_tiled_k5_s2_r2_v4pr");
        // The 2026-11-28 kernel.
        assert_eq!(name(2, tiled(Plain, true), true), "dw_forward_tiled_k5_s2_r2_v4");
        // Scalar staging has one layout and one staging; stride 1 never splits.
        assert_eq!(name(2, Auto, false), "dw_forward_tiled_k5_s2_r2");
        assert_eq!(name(2, tiled(Plain, true), false), "dw_forward_tiled_k5_s2_r2");
        assert_eq!(name(2, tiled(PlainPairs, false), false), "dw_forward_tiled_k5_s2_r2");
        assert_eq!(name(1, Auto, true), "dw_forward_tiled_k5_s1_r4_v4r");
        assert_eq!(name(1, tiled(DeInterleaved, true), true), "dw_forward_tiled_k5_s1_r4_v4");
        assert_eq!(name(1, tiled(PlainPairs, false), true), "dw_forward_tiled_k5_s1_r4_v4r");
        let plan = depthwise_forward(
            shape(5, 2, 40, 40),
            false,
            Activation::Identity,
            tiled(PlainPairs, true),
            true,
        );
        assert!(plan.unwrap_err().to_string().contains("stages its rows row by row"));
    }

    #[test]
    fn stride_two_input_gradients_pick_the_kernel_of_their_pad_parities() {
        let mut s = shape(7, 2, 112, 112);
        s.padding = Padding2d { top: 2, bottom: 3, left: 3, right: 2 };
        let plan = depthwise_input_grad(s, true, false).unwrap();
        let launch = &plan.launches[0];
        assert_eq!(launch.kernel, "dw_input_grad_s2_k7_p01");
        // 64 columns and 32 rows of dx per block: 2 x 4 tiles per plane.
        assert_eq!(launch.grid[0], 2 * 3 * 2 * 4);
        assert_eq!(plan.outputs, vec![2 * 3 * 112 * 112]);
        // Stride 3 has no blocked kernel: the gather.
        let plan = depthwise_input_grad(shape(3, 3, 30, 30), true, false).unwrap();
        assert_eq!(plan.launches[0].kernel, "dw_input_grad");
    }

    #[test]
    fn weight_gradients_walk_columns_at_strides_one_and_two() {
        let plan = depthwise_weight_grad(shape(7, 2, 112, 112), false).unwrap();
        assert_eq!(plan.launches[0].kernel, "dw_weight_grad_columns_k7_s2");
        assert_eq!(plan.launches[0].block, [32, 8, 1]);
        // 2 samples: 2 chunks of 3 channels; the partials are (chunk, channel, tap).
        assert_eq!(plan.launches[0].grid[0], 2 * 3);
        assert_eq!(plan.outputs, vec![3 * 49, 2 * 3 * 49]);
        assert_eq!(plan.launches[1].kernel, "sum_chunks");
        let plan = depthwise_weight_grad(shape(3, 3, 30, 30), false).unwrap();
        assert_eq!(plan.launches[0].kernel, "dw_weight_grad_partial_k3");
    }

    #[test]
    fn empty_ops_launch_nothing_but_still_own_an_output() {
        let mut s = shape(3, 1, 8, 8);
        s.batch = 0;
        let plan = depthwise_forward(s, false, Activation::Identity, Auto, false).unwrap();
        assert!(plan.launches.is_empty());
        assert_eq!(plan.outputs, vec![0]);
    }

    #[test]
    fn vector_rows_need_alignment_and_a_width_multiple_of_four() {
        assert!(vector_rows(64, 40));
        assert!(!vector_rows(68, 40));
        assert!(!vector_rows(64, 41));
    }
}
