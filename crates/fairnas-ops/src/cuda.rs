//! The launch side of the CUDA kernels in `cuda/kernels.cu` (f32 only): runs the launch plans of
//! [`crate::cuda_plan`] (which the CPU emulator also runs, so their logic is tested in CI) from
//! the `cuda_fwd` of the custom op whose `cpu_fwd` is the reference.
//!
//! The PTX is compiled by `build.rs` and loaded once per device (candle caches the module by
//! name). Inputs must be contiguous: the public op wrappers make them so on CUDA.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};

use crate::cuda_plan::{fill_nan, KernelArg, LaunchPlan};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "fairnas_ops_kernels";

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

static POISON_OUTPUTS: AtomicBool = AtomicBool::new(false);

/// When on, every output buffer of these kernels is filled with NaN before the kernel runs (the
/// GPU check turns it on: an element a kernel forgets to write then shows up as NaN instead of
/// whatever the allocator's recycled memory held).
pub fn set_poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, Ordering::Relaxed);
}

/// Whether `view`'s rows of `width` floats may be read with 16-byte vector loads.
pub(crate) fn vector_rows(dev: &CudaDevice, view: &CudaView<f32>, width: usize) -> bool {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let stream = dev.cuda_stream();
    let (ptr, _sync) = view.device_ptr(&stream);
    crate::cuda_plan::vector_rows(ptr, width)
}

/// A null device pointer for optional kernel arguments.
const NULL: u64 = 0;

fn config(launch: &crate::cuda_plan::KernelLaunch) -> LaunchConfig {
    let [gx, gy, gz] = launch.grid;
    let [bx, by, bz] = launch.block;
    LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (bx, by, bz), shared_mem_bytes: launch.shared_bytes }
}

/// Runs `plan` on the device with `inputs` and returns the buffers it allocates, in order.
pub(crate) fn execute(
    dev: &CudaDevice,
    plan: &LaunchPlan,
    inputs: &[&CudaView<f32>],
) -> Result<Vec<CudaSlice<f32>>> {
    if inputs.len() != plan.inputs {
        candle_core::bail!("CUDA launch plan takes {} inputs, got {}", plan.inputs, inputs.len());
    }
    let poison = POISON_OUTPUTS.load(Ordering::Relaxed);
    let mut outputs = Vec::with_capacity(plan.outputs.len());
    for (i, &len) in plan.outputs.iter().enumerate() {
        // SAFETY: the plan's constructor guarantees its launches write every element the op
        // exposes (see `cuda_plan`); poisoning fills the rest with NaN.
        outputs.push(unsafe { dev.alloc::<f32>(len.max(1))? });
        if poison {
            launch(dev, &fill_nan(plan.inputs + i, len.max(1)), inputs, &outputs)?;
        }
    }
    for l in &plan.launches {
        launch(dev, l, inputs, &outputs)?;
    }
    Ok(outputs)
}

fn launch(
    dev: &CudaDevice,
    l: &crate::cuda_plan::KernelLaunch,
    inputs: &[&CudaView<f32>],
    outputs: &[CudaSlice<f32>],
) -> Result<()> {
    let func = dev.get_or_load_custom_func(&l.kernel, MODULE, PTX)?;
    let mut views = Vec::with_capacity(l.args.len());
    for arg in &l.args {
        views.push(match *arg {
            KernelArg::Buffer { index, offset } if index < inputs.len() => {
                Some(inputs[index].slice(offset..))
            }
            KernelArg::Buffer { index, offset } => {
                let out = outputs.get(index - inputs.len()).ok_or_else(|| {
                    candle_core::Error::msg(format!("{}: buffer {index} does not exist", l.kernel))
                })?;
                Some(out.slice(offset..))
            }
            _ => None,
        });
    }
    let mut b = func.builder();
    for (arg, view) in l.args.iter().zip(&views) {
        match (arg, view) {
            (_, Some(v)) => b.arg(v),
            (KernelArg::I32(v), None) => b.arg(v),
            (KernelArg::I64(v), None) => b.arg(v),
            (KernelArg::F32(v), None) => b.arg(v),
            (_, None) => b.arg(&NULL),
        };
    }
    // SAFETY: the plan's argument list matches the kernel's signature (the emulator checks every
    // plan's parameter sizes against the C signatures in CI) and its index ranges stay inside the
    // buffers (the GPU check runs under compute-sanitizer).
    unsafe { b.launch(config(l)) }.w()?;
    Ok(())
}

/// Runs `plan` and returns its allocated buffer `output` (the op's result) as a storage.
pub(crate) fn run_op(
    dev: &CudaDevice,
    plan: &LaunchPlan,
    inputs: &[&CudaView<f32>],
    output: usize,
) -> Result<CudaStorage> {
    let mut outputs = execute(dev, plan, inputs)?;
    if output >= outputs.len() {
        candle_core::bail!("CUDA launch plan has no output {output}");
    }
    Ok(wrap(outputs.swap_remove(output), dev))
}
