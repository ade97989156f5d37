//! The launch side of the CUDA kernels in `cuda/kernels.cu` (f32 only): each function here is
//! called from the `cuda_fwd` of the custom op whose `cpu_fwd` is its reference.
//!
//! The PTX is compiled by `build.rs` and loaded once per device (candle caches the module by
//! name). Inputs must be contiguous: the public op wrappers make them so on CUDA.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};

use crate::depthwise::DwShape;
use crate::Activation;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "fairnas_ops_kernels";

/// Threads per block of the element-wise (grid-stride) kernels.
const THREADS: u32 = 256;

/// The kernels' activation codes (`activate` in kernels.cu).
fn code(activation: Activation) -> i32 {
    match activation {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Relu6 => 2,
        Activation::Swish => 3,
        Activation::Sigmoid => 4,
    }
}

/// The f32 elements of a contiguous CUDA storage viewed through `layout`, or an error naming
/// the op and what is wrong.
pub(crate) fn f32_view<'a>(storage: &'a CudaStorage, layout: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    if storage.dtype() != DType::F32 {
        candle_core::bail!("{op}: the CUDA kernels run in f32, got {:?}", storage.dtype());
    }
    let slice = storage.as_cuda_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => {
            candle_core::bail!("{op}: CUDA inputs must be contiguous (got strides {:?})", layout.stride())
        }
    }
}

pub(crate) fn wrap(slice: CudaSlice<f32>, device: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, device.clone())
}

/// Enough blocks of `THREADS` to give each thread a few elements (grid-stride loops).
fn grid_for(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(THREADS as usize).clamp(1, 132 * 32) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| candle_core::Error::msg(format!("{what} = {v} exceeds the CUDA kernels' i32 range")))
}

static POISON_OUTPUTS: AtomicBool = AtomicBool::new(false);

/// When on, every output buffer of these kernels is filled with NaN before the kernel runs (the
/// GPU check turns it on: an element a kernel forgets to write then shows up as NaN instead of
/// whatever the allocator's recycled memory held).
pub fn set_poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, Ordering::Relaxed);
}

/// An output buffer of `len` (at least 1) f32 elements, NaN-filled when poisoning is on.
///
/// # Safety
/// The caller's kernel must write every element it later exposes (unless poisoned, the memory is
/// uninitialised).
unsafe fn output(dev: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: forwarded to the caller (see above).
    let out = unsafe { dev.alloc::<f32>(len.max(1))? };
    if POISON_OUTPUTS.load(Ordering::Relaxed) {
        let func = dev.get_or_load_custom_func("fill_f32", MODULE, PTX)?;
        let (total, value) = (len.max(1) as i64, f32::NAN);
        let mut b = func.builder();
        b.arg(&out).arg(&total).arg(&value);
        // SAFETY: argument list matches `fill_f32`; `out` holds `total` elements.
        unsafe { b.launch(grid_for(len.max(1))) }.w()?;
    }
    Ok(out)
}

/// A null device pointer for optional kernel arguments.
const NULL: u64 = 0;

/// Which forward kernel a shape runs on: the shared-memory tiled one for the sizes it is built
/// for when the plane is at least a tile wide, else one thread per output.
pub fn depthwise_forward_variant(kernel: usize, stride: usize, out_width: usize) -> &'static str {
    if matches!(kernel, 3 | 5 | 7) && matches!(stride, 1 | 2) && out_width >= 16 {
        "tiled"
    } else {
        "direct"
    }
}

/// Whether a view may be read with 16-byte vector loads row by row: its start is 16-byte aligned
/// and rows of `width` floats keep that alignment.
fn vector_rows(dev: &CudaDevice, view: &CudaView<f32>, width: usize) -> bool {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let stream = dev.cuda_stream();
    let (ptr, _sync) = view.device_ptr(&stream);
    width.is_multiple_of(4) && ptr.is_multiple_of(16)
}

/// Output rows per thread of the tiled kernels (a tile is 8x that tall): tall tiles amortise the
/// halo and keep more loads in flight; short planes take short tiles so few threads idle.
fn rows_per_thread(out_height: usize) -> usize {
    match out_height {
        48.. => 8,
        24.. => 4,
        _ => 2,
    }
}

/// (tiles across, tiles down, launch) of a tiled kernel over `planes` planes of `h` x `w` outputs.
fn tiled_launch(planes: usize, h: usize, w: usize, rows: usize) -> Result<(i32, i32, LaunchConfig)> {
    let (tiles_x, tiles_y) = (int(w.div_ceil(32), "tiles")?, int(h.div_ceil(8 * rows), "tiles")?);
    let blocks = planes * (tiles_x * tiles_y) as usize;
    let blocks = u32::try_from(blocks).map_err(|_| candle_core::Error::msg("depthwise: too many tiles"))?;
    Ok((
        tiles_x,
        tiles_y,
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 },
    ))
}

/// `act(conv * scale[c] + shift[c])`, or the bare convolution when `affine` is `None`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_forward(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    weight: &CudaView<f32>,
    affine: Option<(&CudaView<f32>, &CudaView<f32>)>,
    activation: Activation,
    s: DwShape,
    force_direct: bool,
) -> Result<CudaSlice<f32>> {
    let total = s.batch * s.channels * s.out_height * s.out_width;
    // SAFETY: every element is written by the kernel below (each output position exactly once).
    let out = unsafe { output(dev, total)? };
    if total == 0 {
        return Ok(out);
    }
    let (channels, h, w) = (int(s.channels, "channels")?, int(s.height, "height")?, int(s.width, "width")?);
    let (ho, wo) = (int(s.out_height, "output height")?, int(s.out_width, "output width")?);
    let (pt, pl, act) = (int(s.padding.top, "padding")?, int(s.padding.left, "padding")?, code(activation));
    let tiled = !force_direct && depthwise_forward_variant(s.kernel, s.stride, s.out_width) == "tiled";
    if tiled {
        let rows = rows_per_thread(s.out_height);
        let vec = if vector_rows(dev, x, s.width) { "_v4" } else { "" };
        let name = format!("dw_forward_tiled_k{}_s{}_r{rows}{vec}", s.kernel, s.stride);
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        let (tiles_x, tiles_y, cfg) = tiled_launch(s.batch * s.channels, s.out_height, s.out_width, rows)?;
        let mut b = func.builder();
        b.arg(x).arg(weight);
        match affine {
            Some((scale, shift)) => b.arg(scale).arg(shift),
            None => b.arg(&NULL).arg(&NULL),
        };
        b.arg(&out).arg(&channels).arg(&h).arg(&w).arg(&ho).arg(&wo).arg(&pt).arg(&pl).arg(&act);
        b.arg(&tiles_x).arg(&tiles_y);
        // SAFETY: argument list matches `dw_forward_tiled_k*_s*`; sizes were checked by the op.
        unsafe { b.launch(cfg) }.w()?;
    } else {
        let func = dev.get_or_load_custom_func("dw_forward_direct", MODULE, PTX)?;
        let (total_i, k, stride) = (total as i64, int(s.kernel, "kernel")?, int(s.stride, "stride")?);
        let mut b = func.builder();
        b.arg(x).arg(weight);
        match affine {
            Some((scale, shift)) => b.arg(scale).arg(shift),
            None => b.arg(&NULL).arg(&NULL),
        };
        b.arg(&out).arg(&total_i).arg(&channels).arg(&h).arg(&w).arg(&ho).arg(&wo);
        b.arg(&k).arg(&stride).arg(&pt).arg(&pl).arg(&act);
        // SAFETY: argument list matches `dw_forward_direct`.
        unsafe { b.launch(grid_for(total)) }.w()?;
    }
    Ok(out)
}

/// d(loss)/d(input) of the depthwise convolution. Stride 1: the tiled forward kernel on the
/// output gradient with the flipped filter and padding `k - 1 - p`. Otherwise a gather, one
/// thread per input element.
pub(crate) fn depthwise_input_grad(
    dev: &CudaDevice,
    grad_out: &CudaView<f32>,
    weight: &CudaView<f32>,
    s: DwShape,
) -> Result<CudaSlice<f32>> {
    let total = s.batch * s.channels * s.height * s.width;
    // SAFETY: the kernel writes every input-gradient element once.
    let out = unsafe { output(dev, total)? };
    if total == 0 {
        return Ok(out);
    }
    let flip_pads = (s.kernel.checked_sub(1 + s.padding.top), s.kernel.checked_sub(1 + s.padding.left));
    if let (1, 3 | 5 | 7, true, (Some(pt), Some(pl))) = (s.stride, s.kernel, s.width >= 16, flip_pads) {
        let rows = rows_per_thread(s.height);
        let vec = if vector_rows(dev, grad_out, s.out_width) { "_v4" } else { "" };
        let name = format!("dw_input_grad_tiled_k{}_r{rows}{vec}", s.kernel);
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        let (tiles_x, tiles_y, cfg) = tiled_launch(s.batch * s.channels, s.height, s.width, rows)?;
        let args = [
            int(s.channels, "channels")?,
            int(s.out_height, "output height")?,
            int(s.out_width, "output width")?,
            int(s.height, "height")?,
            int(s.width, "width")?,
            int(pt, "padding")?,
            int(pl, "padding")?,
            tiles_x,
            tiles_y,
        ];
        let mut b = func.builder();
        b.arg(grad_out).arg(weight).arg(&out);
        for a in &args {
            b.arg(a);
        }
        // SAFETY: argument list matches `dw_input_grad_tiled_k*_r*`.
        unsafe { b.launch(cfg) }.w()?;
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func("dw_input_grad", MODULE, PTX)?;
    let args = [
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
    let total_i = total as i64;
    let mut b = func.builder();
    b.arg(grad_out).arg(weight).arg(&out).arg(&total_i);
    for a in &args {
        b.arg(a);
    }
    // SAFETY: argument list matches `dw_input_grad`.
    unsafe { b.launch(grid_for(total)) }.w()?;
    Ok(out)
}

/// d(loss)/d(weight) `[C, 1, k, k]`: per-(channel, batch chunk) partial sums, then the chunks
/// summed in order (deterministic).
pub(crate) fn depthwise_weight_grad(
    dev: &CudaDevice,
    input: &CudaView<f32>,
    grad_out: &CudaView<f32>,
    s: DwShape,
) -> Result<CudaSlice<f32>> {
    if !matches!(s.kernel, 3 | 5 | 7) {
        candle_core::bail!("depthwise weight grad on CUDA: kernel {} (supported: 3, 5, 7)", s.kernel);
    }
    let kk = s.kernel * s.kernel;
    let len = s.channels * kk;
    // About four blocks per multiprocessor of an H100/H200, never more chunks than samples.
    let chunks = (528usize.div_ceil(s.channels.max(1))).clamp(1, s.batch.max(1));
    // SAFETY: stage 1 writes every (chunk, channel, tap) partial; stage 2 every output.
    let partial = unsafe { output(dev, chunks * len)? };
    let out = unsafe { output(dev, len)? };
    if len == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(&format!("dw_weight_grad_partial_k{}", s.kernel), MODULE, PTX)?;
    let args = [
        int(s.batch, "batch")?,
        int(s.channels, "channels")?,
        int(s.height, "height")?,
        int(s.width, "width")?,
        int(s.out_height, "output height")?,
        int(s.out_width, "output width")?,
        int(s.stride, "stride")?,
        int(s.padding.top, "padding")?,
        int(s.padding.left, "padding")?,
        int(chunks, "chunks")?,
    ];
    let mut b = func.builder();
    b.arg(input).arg(grad_out).arg(&partial);
    for a in &args {
        b.arg(a);
    }
    let cfg = LaunchConfig {
        grid_dim: ((chunks * s.channels) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument list matches `dw_weight_grad_partial_k*`.
    unsafe { b.launch(cfg) }.w()?;
    let sum = dev.get_or_load_custom_func("sum_chunks", MODULE, PTX)?;
    let (len_i, chunks_i) = (int(len, "weight size")?, int(chunks, "chunks")?);
    let mut b = sum.builder();
    b.arg(&partial).arg(&out).arg(&len_i).arg(&chunks_i);
    let cfg = LaunchConfig {
        grid_dim: (len.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument list matches `sum_chunks`; `partial` holds chunks * len elements.
    unsafe { b.launch(cfg) }.w()?;
    Ok(out)
}

/// Per-plane mean of `x` and, with `other`, per-plane sum of `x * other` (`planes` of `hw`).
pub(crate) fn plane_reduce(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    other: Option<&CudaView<f32>>,
    planes: usize,
    hw: usize,
) -> Result<(CudaSlice<f32>, Option<CudaSlice<f32>>)> {
    // SAFETY: one warp per plane writes its mean (and dot) once.
    let mean = unsafe { output(dev, planes)? };
    let dot = match other {
        Some(_) => Some(unsafe { output(dev, planes)? }),
        None => None,
    };
    if planes == 0 {
        return Ok((mean, dot));
    }
    let func = dev.get_or_load_custom_func("plane_reduce", MODULE, PTX)?;
    let (planes_i, hw_i) = (planes as i64, int(hw, "plane size")?);
    let mut b = func.builder();
    b.arg(x);
    match other {
        Some(o) => b.arg(o),
        None => b.arg(&NULL),
    };
    b.arg(&mean);
    match &dot {
        Some(d) => b.arg(d),
        None => b.arg(&NULL),
    };
    b.arg(&planes_i).arg(&hw_i);
    let blocks = u32::try_from((planes * 32).div_ceil(THREADS as usize))
        .map_err(|_| candle_core::Error::msg("plane reduce: too many planes"))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: argument list matches `plane_reduce`.
    unsafe { b.launch(cfg) }.w()?;
    Ok((mean, dot))
}

/// The SE gates `[N, C]` from the pooled means and the packed FC operands.
pub(crate) fn se_gates(
    dev: &CudaDevice,
    pooled: &CudaSlice<f32>,
    reduce: &CudaView<f32>,
    expand: &CudaView<f32>,
    (n, c, r): (usize, usize, usize),
    inner: Activation,
) -> Result<CudaSlice<f32>> {
    // SAFETY: one block per sample writes its C gates.
    let gates = unsafe { output(dev, n * c)? };
    if n * c == 0 {
        return Ok(gates);
    }
    let func = dev.get_or_load_custom_func("se_gates", MODULE, PTX)?;
    let (c_i, r_i, act) = (int(c, "channels")?, int(r, "reduced channels")?, code(inner));
    let mut b = func.builder();
    b.arg(pooled).arg(reduce).arg(expand).arg(&gates).arg(&c_i).arg(&r_i).arg(&act);
    let shared = ((c + r) * 4) as u32;
    if shared > 48 * 1024 {
        candle_core::bail!("squeeze-excite on CUDA: {c} + {r} channels exceed the 48 KiB of shared memory");
    }
    let cfg =
        LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: shared };
    // SAFETY: argument list matches `se_gates`; shared memory holds C + R floats.
    unsafe { b.launch(cfg) }.w()?;
    Ok(gates)
}

/// `x * gate[plane] (+ bias[plane])` over `total` elements in planes of `hw`.
pub(crate) fn scale_planes(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    gate: &CudaView<f32>,
    bias: Option<&CudaView<f32>>,
    total: usize,
    hw: usize,
) -> Result<CudaSlice<f32>> {
    // SAFETY: the kernel writes every element once.
    let out = unsafe { output(dev, total)? };
    if total == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func("scale_planes", MODULE, PTX)?;
    let (total_i, hw_i) = (total as i64, int(hw, "plane size")?);
    let mut b = func.builder();
    b.arg(x).arg(gate);
    match bias {
        Some(v) => b.arg(v),
        None => b.arg(&NULL),
    };
    b.arg(&out).arg(&total_i).arg(&hw_i);
    // SAFETY: argument list matches `scale_planes`.
    unsafe { b.launch(grid_for(total)) }.w()?;
    Ok(out)
}

/// `act(x * scale[c] + shift[c])` over `[N, C, HW]`.
pub(crate) fn channel_affine_act(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    scale: &CudaView<f32>,
    shift: &CudaView<f32>,
    (n, c, hw): (usize, usize, usize),
    activation: Activation,
) -> Result<CudaSlice<f32>> {
    let total = n * c * hw;
    // SAFETY: the kernel writes every element once.
    let out = unsafe { output(dev, total)? };
    if total == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func("channel_affine_act", MODULE, PTX)?;
    let (total_i, c_i, hw_i, act) =
        (total as i64, int(c, "channels")?, int(hw, "plane size")?, code(activation));
    let mut b = func.builder();
    b.arg(x).arg(scale).arg(shift).arg(&out).arg(&total_i).arg(&c_i).arg(&hw_i).arg(&act);
    // SAFETY: argument list matches `channel_affine_act`.
    unsafe { b.launch(grid_for(total)) }.w()?;
    Ok(out)
}
