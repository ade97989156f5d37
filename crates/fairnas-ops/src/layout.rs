//! Reading candle storages: through their layouts, and by dtype.

use std::borrow::Cow;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, WithDType};

/// The elements of `storage` viewed through `layout`, in row-major order: borrowed when the view
/// is contiguous, gathered into a fresh buffer when it is strided (transposed, broadcast, narrowed).
pub fn contiguous_slice<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<Cow<'a, [T]>> {
    let data = storage.as_slice::<T>()?;
    if let Some((start, end)) = layout.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[start..end]));
    }
    let dims = layout.dims();
    let stride = layout.stride();
    let count: usize = dims.iter().product();
    let mut out = Vec::with_capacity(count);
    let mut index = vec![0usize; dims.len()];
    let mut offset = layout.start_offset();
    for _ in 0..count {
        out.push(data[offset]);
        // Odometer increment over the multi-index, keeping the storage offset in step.
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            offset += stride[d];
            if index[d] < dims[d] {
                break;
            }
            offset -= stride[d] * dims[d];
            index[d] = 0;
        }
    }
    Ok(Cow::Owned(out))
}

/// An op input as the kernels read it: the CUDA kernels take contiguous memory (made so here);
/// on the CPU strided views are gathered by the op itself (`contiguous_slice`).
pub(crate) fn on_device(t: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    if t.device().is_cuda() {
        t.contiguous()
    } else {
        Ok(t.clone())
    }
}

/// Runs the f32 or f64 instance of a kernel, refusing other or mixed dtypes (`dtypes`: those of
/// every input), naming the kernel.
pub(crate) fn dispatch_f32_f64<F32, F64>(
    name: &str,
    dtypes: &[DType],
    f32_fn: F32,
    f64_fn: F64,
) -> Result<(CpuStorage, Shape)>
where
    F32: FnOnce() -> Result<(Vec<f32>, Shape)>,
    F64: FnOnce() -> Result<(Vec<f64>, Shape)>,
{
    if dtypes.iter().all(|d| *d == DType::F32) {
        f32_fn().map(|(v, s)| (CpuStorage::F32(v), s))
    } else if dtypes.iter().all(|d| *d == DType::F64) {
        f64_fn().map(|(v, s)| (CpuStorage::F64(v), s))
    } else {
        candle_core::bail!("{name} supports f32 or f64 with matching dtypes, got {dtypes:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn gathers_transposed_and_narrowed_views() -> Result<()> {
        let t = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((2, 3, 4))?;
        for view in [t.transpose(1, 2)?, t.narrow(2, 1, 2)?, t.i_last()?] {
            let (storage, layout) = view.storage_and_layout();
            let cpu = match &*storage {
                candle_core::Storage::Cpu(s) => s,
                _ => unreachable!(),
            };
            let got = contiguous_slice::<f32>(cpu, layout)?.into_owned();
            let want = view.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(got, want);
        }
        Ok(())
    }

    trait LastSlice {
        fn i_last(&self) -> Result<Tensor>;
    }
    impl LastSlice for Tensor {
        fn i_last(&self) -> Result<Tensor> {
            self.narrow(0, 1, 1)?.transpose(0, 2)
        }
    }
}
