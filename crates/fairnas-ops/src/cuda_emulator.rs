//! CUDA launch plans (`cuda_plan`) run on the CPU: kernels.cu compiled for the host
//! (src/cuda/emulator.cpp) under a small emulation of threads, blocks, barriers and shuffles.
//!
//! Why: CI has no GPU, and a kernel's indexing, halo and bounds logic is where CUDA bugs live.
//! With [`set_enabled`] on, the f32 CPU path of every op that has a CUDA kernel runs that kernel's
//! plan here instead of the CPU kernel, so the GPU check's correctness harness (`fairnas gpu-check
//! --device cpu --emulate-cuda`) compares the CUDA source against the CPU ops in f64, exactly as
//! it does on a GPU. Built with the `cuda-emulator` feature (test builds turn it on); slow by
//! design (one block at a time), so only for small shapes.

#[cfg(feature = "cuda-emulator")]
pub(crate) use emulated::*;

/// Whether this build carries the emulator (the `cuda-emulator` feature, on in test builds).
pub const AVAILABLE: bool = cfg!(feature = "cuda-emulator");

/// Routes the f32 CPU path of the ops with CUDA kernels through the emulated kernels (process
/// wide; for the GPU check's harness and tests), or says that this build has no emulator.
pub fn set_enabled(on: bool) -> candle_core::Result<()> {
    #[cfg(feature = "cuda-emulator")]
    emulated::ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
    if on && !AVAILABLE {
        candle_core::bail!(
            "this build has no CUDA emulator: it is compiled into test builds (`cargo test`) or with \
             `--features fairnas-ops/cuda-emulator`"
        );
    }
    Ok(())
}

/// Whether ops run their emulated CUDA kernels now (always false without the emulator).
pub fn is_enabled() -> bool {
    #[cfg(feature = "cuda-emulator")]
    return emulated::enabled();
    #[cfg(not(feature = "cuda-emulator"))]
    false
}

#[cfg(feature = "cuda-emulator")]
mod emulated {
    use std::sync::atomic::{AtomicBool, Ordering};

    use candle_core::Result;

    use crate::cuda_plan::{KernelArg, LaunchPlan};

    pub(super) static ENABLED: AtomicBool = AtomicBool::new(false);

    /// Whether ops should run their emulated CUDA kernels.
    pub(super) fn enabled() -> bool {
        ENABLED.load(Ordering::Relaxed)
    }

    mod ffi {
        use std::ffi::{c_char, c_int, c_uint, c_void};

        extern "C" {
            pub fn fairnas_emu_launch(
                name: *const c_char,
                grid: *const c_uint,
                block: *const c_uint,
                shared_bytes: c_uint,
                params: *mut *mut c_void,
                param_sizes: *const usize,
                param_count: usize,
                bad_param: *mut usize,
                reverse: c_int,
            ) -> c_int;
        }
    }

    /// A 16-byte aligned f32 buffer, as `cudaMalloc` returns them (so the emulated kernels take
    /// the same vector-load paths a GPU run would), between guard zones: a kernel that writes
    /// outside its buffer is caught after the launch, and one that reads outside gets NaN.
    struct DeviceBuffer {
        chunks: Vec<Aligned>,
        len: usize,
    }

    #[repr(C, align(16))]
    #[derive(Clone, Copy)]
    struct Aligned([f32; 4]);

    /// Guard floats before a buffer (a multiple of 4, so the data stays 16-byte aligned); at
    /// least as many follow it.
    const GUARD: usize = 64;

    /// The guard zones' bit pattern: a NaN no kernel computes.
    const GUARD_BITS: u32 = 0x7fa5_a5a5;

    impl DeviceBuffer {
        fn new(len: usize, fill: f32) -> Self {
            let chunks = (GUARD + len + GUARD).div_ceil(4);
            let mut b = Self { chunks: vec![Aligned([f32::from_bits(GUARD_BITS); 4]); chunks], len };
            b.data_mut().fill(fill);
            b
        }

        fn from_slice(data: &[f32]) -> Self {
            let mut b = Self::new(data.len(), 0.0);
            b.data_mut().copy_from_slice(data);
            b
        }

        fn all_mut(&mut self) -> &mut [f32] {
            let len = self.chunks.len() * 4;
            // SAFETY: `Aligned` is `repr(C)` around `[f32; 4]` (16 bytes, no padding: checked
            // below), so the chunks are `len` consecutive, initialised f32s borrowed mutably here.
            unsafe { std::slice::from_raw_parts_mut(self.chunks.as_mut_ptr().cast::<f32>(), len) }
        }

        fn data_mut(&mut self) -> &mut [f32] {
            let len = self.len;
            &mut self.all_mut()[GUARD..GUARD + len]
        }

        /// The device pointer the kernels get: the first data element.
        fn ptr(&mut self) -> *mut f32 {
            self.data_mut().as_mut_ptr()
        }

        /// Whether every guard element still holds the guard pattern.
        fn guards_intact(&mut self) -> bool {
            let len = self.len;
            let all = self.all_mut();
            let intact = |v: &f32| v.to_bits() == GUARD_BITS;
            all[..GUARD].iter().all(intact) && all[GUARD + len..].iter().all(intact)
        }
    }

    const _: () = assert!(std::mem::align_of::<Aligned>() == 16 && std::mem::size_of::<Aligned>() == 16);

    /// Runs `plan` with `inputs`; returns its allocated buffers (each `outputs[i]` long), which
    /// start as NaN (the GPU check's poisoning), so an element no launch writes stays NaN.
    ///
    /// The plan runs twice, resuming each block's threads first to last and then last to first;
    /// the two results must agree bit for bit, or threads of one block race on shared memory
    /// between barriers (on a GPU the winner of such a race varies from run to run).
    pub(crate) fn execute(plan: &LaunchPlan, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let forward = execute_in_order(plan, inputs, false)?;
        let reverse = execute_in_order(plan, inputs, true)?;
        for (index, (a, b)) in forward.iter().zip(&reverse).enumerate() {
            if let Some(at) = a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits()) {
                let kernels: Vec<&str> = plan.launches.iter().map(|l| l.kernel.as_str()).collect();
                candle_core::bail!(
                    "emulated CUDA: {} gives different results when threads run in another order \
                     (output {index}, element {at}: {} vs {}): threads of a block race on shared memory",
                    kernels.join(" + "),
                    a[at],
                    b[at]
                );
            }
        }
        Ok(forward)
    }

    fn execute_in_order(plan: &LaunchPlan, inputs: &[&[f32]], reverse: bool) -> Result<Vec<Vec<f32>>> {
        if inputs.len() != plan.inputs {
            candle_core::bail!("emulated CUDA: the plan takes {} inputs, got {}", plan.inputs, inputs.len());
        }
        let mut buffers: Vec<DeviceBuffer> = inputs.iter().map(|d| DeviceBuffer::from_slice(d)).collect();
        buffers.extend(plan.outputs.iter().map(|&len| DeviceBuffer::new(len, f32::NAN)));
        for launch in &plan.launches {
            let mut pointers: Vec<*mut f32> = Vec::with_capacity(launch.args.len());
            for arg in &launch.args {
                pointers.push(match *arg {
                    KernelArg::Buffer { index, offset } => {
                        let b = buffers.get_mut(index).ok_or_else(|| {
                            candle_core::Error::msg(format!(
                                "{}: buffer {index} does not exist",
                                launch.kernel
                            ))
                        })?;
                        if offset > b.len {
                            candle_core::bail!(
                                "{}: offset {offset} past buffer {index} ({})",
                                launch.kernel,
                                b.len
                            );
                        }
                        // SAFETY: `offset <= len` and the allocation holds at least `len` elements.
                        unsafe { b.ptr().add(offset) }
                    }
                    _ => std::ptr::null_mut(),
                });
            }
            // One pointer per parameter to its value, as cuLaunchKernel takes them; `pointers` and
            // `launch.args` are not touched again until the launch returns.
            let mut params: Vec<*mut std::ffi::c_void> = launch
                .args
                .iter()
                .zip(&pointers)
                .map(|(arg, pointer)| match arg {
                    KernelArg::Buffer { .. } | KernelArg::Null => {
                        (pointer as *const *mut f32).cast_mut().cast()
                    }
                    KernelArg::I32(v) => (v as *const i32).cast_mut().cast(),
                    KernelArg::I64(v) => (v as *const i64).cast_mut().cast(),
                    KernelArg::F32(v) => (v as *const f32).cast_mut().cast(),
                })
                .collect();
            let sizes: Vec<usize> = launch.args.iter().map(KernelArg::size).collect();
            let name = std::ffi::CString::new(launch.kernel.as_str())
                .map_err(|_| candle_core::Error::msg("kernel name with a NUL byte"))?;
            let mut bad = 0usize;
            // SAFETY: every parameter pointer points at a live value of the size passed in `sizes`,
            // which the emulator checks against the kernel's C signature before calling it; buffer
            // arguments point into live allocations; the plan's constructors guarantee the kernels'
            // index ranges stay inside the buffers (which the tests, under sanitizers on the GPU
            // check, confirm).
            let status = unsafe {
                ffi::fairnas_emu_launch(
                    name.as_ptr(),
                    launch.grid.as_ptr(),
                    launch.block.as_ptr(),
                    launch.shared_bytes,
                    params.as_mut_ptr(),
                    sizes.as_ptr(),
                    sizes.len(),
                    &mut bad,
                    i32::from(reverse),
                )
            };
            if status == 0 {
                if let Some(i) = buffers.iter_mut().position(|b| !b.guards_intact()) {
                    candle_core::bail!("emulated CUDA: {} wrote outside buffer {i}", launch.kernel);
                }
            }
            match status {
            0 => {}
            1 => candle_core::bail!("emulated CUDA: no kernel named {}", launch.kernel),
            2 => candle_core::bail!("emulated CUDA: {} takes a different number of parameters than {}", launch.kernel, sizes.len()),
            3 => candle_core::bail!(
                "emulated CUDA: parameter {bad} of {} is {} bytes in the plan but not in the kernel's signature",
                launch.kernel,
                sizes[bad]
            ),
            4 => candle_core::bail!("emulated CUDA: {} asks for {} bytes of shared memory", launch.kernel, launch.shared_bytes),
            _ => candle_core::bail!("emulated CUDA: {} has an invalid block {:?}", launch.kernel, launch.block),
        }
        }
        Ok(buffers.into_iter().skip(plan.inputs).map(|mut b| b.data_mut().to_vec()).collect())
    }

    /// Runs `plan` on the f32 contents of an op's CPU inputs and returns its allocated buffer
    /// `output` (the op's result).
    pub(crate) fn run_op(
        plan: &LaunchPlan,
        inputs: &[(&candle_core::CpuStorage, &candle_core::Layout)],
        output: usize,
    ) -> Result<candle_core::CpuStorage> {
        let data = inputs
            .iter()
            .map(|(s, l)| crate::layout::contiguous_slice::<f32>(s, l))
            .collect::<Result<Vec<_>>>()?;
        let slices: Vec<&[f32]> = data.iter().map(|d| d.as_ref()).collect();
        let mut outputs = execute(plan, &slices)?;
        if output >= outputs.len() {
            candle_core::bail!("emulated CUDA: the plan has no output {output}");
        }
        Ok(candle_core::CpuStorage::F32(outputs.swap_remove(output)))
    }

    /// Whether the emulator should run an op whose inputs have these dtypes: it is on, and they are
    /// all f32 (the CUDA kernels' type; f64 stays on the CPU kernels, the GPU check's reference).
    pub(crate) fn takes(dtypes: &[candle_core::DType]) -> bool {
        enabled() && dtypes.iter().all(|&d| d == candle_core::DType::F32)
    }

    /// Emulated buffers are 16-byte aligned, as `cudaMalloc`'s are.
    pub(crate) fn vector_rows(width: usize) -> bool {
        crate::cuda_plan::vector_rows(0, width)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::cuda_plan::KernelLaunch;

        fn fill_plan(len: usize, args: Vec<KernelArg>) -> LaunchPlan {
            LaunchPlan {
                inputs: 0,
                outputs: vec![len],
                launches: vec![KernelLaunch {
                    kernel: "fill_f32".into(),
                    grid: [2, 1, 1],
                    block: [64, 1, 1],
                    shared_bytes: 0,
                    args,
                }],
            }
        }

        #[test]
        fn a_grid_stride_kernel_writes_every_element() {
            let args =
                vec![KernelArg::Buffer { index: 0, offset: 0 }, KernelArg::I64(1000), KernelArg::F32(2.5)];
            let out = execute(&fill_plan(1000, args), &[]).unwrap();
            assert!(out[0].iter().all(|&v| v == 2.5));
        }

        #[test]
        fn an_argument_of_the_wrong_size_is_refused_by_name() {
            // fill_f32 takes (float*, long long, float): an i32 total would read garbage on a GPU.
            let args =
                vec![KernelArg::Buffer { index: 0, offset: 0 }, KernelArg::I32(10), KernelArg::F32(1.0)];
            let err = execute(&fill_plan(10, args), &[]).unwrap_err().to_string();
            assert!(err.contains("parameter 1 of fill_f32"), "{err}");
        }

        #[test]
        fn unknown_kernels_and_missing_buffers_are_errors() {
            let mut plan = fill_plan(
                4,
                vec![KernelArg::Buffer { index: 0, offset: 0 }, KernelArg::I64(4), KernelArg::F32(1.0)],
            );
            plan.launches[0].kernel = "no_such_kernel".into();
            assert!(execute(&plan, &[]).unwrap_err().to_string().contains("no kernel named no_such_kernel"));
            let plan = fill_plan(
                4,
                vec![KernelArg::Buffer { index: 3, offset: 0 }, KernelArg::I64(4), KernelArg::F32(1.0)],
            );
            assert!(execute(&plan, &[]).unwrap_err().to_string().contains("buffer 3 does not exist"));
        }

        #[test]
        fn a_write_past_the_end_of_a_buffer_is_caught() {
            // 12 elements filled into a buffer of 10, and 3 from element 8 on.
            for (offset, count) in [(0, 12), (8, 3)] {
                let args =
                    vec![KernelArg::Buffer { index: 0, offset }, KernelArg::I64(count), KernelArg::F32(0.0)];
                let err = execute(&fill_plan(10, args), &[]).unwrap_err().to_string();
                assert!(err.contains("fill_f32 wrote outside buffer 0"), "{err}");
            }
        }

        #[test]
        fn threads_racing_on_shared_memory_are_caught() {
            let plan = LaunchPlan {
                inputs: 0,
                outputs: vec![64],
                launches: vec![KernelLaunch {
                    kernel: "emu_test_unsynchronised_neighbour".into(),
                    grid: [1, 1, 1],
                    block: [64, 1, 1],
                    shared_bytes: 0,
                    args: vec![KernelArg::Buffer { index: 0, offset: 0 }],
                }],
            };
            let err = execute(&plan, &[]).unwrap_err().to_string();
            assert!(err.contains("threads of a block race"), "{err}");
        }

        #[test]
        fn unwritten_elements_stay_nan() {
            // Only the first 10 of 16 elements are filled.
            let args =
                vec![KernelArg::Buffer { index: 0, offset: 0 }, KernelArg::I64(10), KernelArg::F32(0.0)];
            let out = execute(&fill_plan(16, args), &[]).unwrap();
            assert!(out[0][..10].iter().all(|&v| v == 0.0));
            assert!(out[0][10..].iter().all(|v| v.is_nan()));
        }
    }
}
