//! The classifier of inference: `x W^T + b`, one dot product per (image, class).
//!
//! Why our own: as one `[N, C] x [C, K]` GEMM an image's logits would depend (in the last bits)
//! on how many images share its batch, and as N matrix-vector products through candle's matmul
//! the GEMM library runs a 1-column product at a small fraction of its speed (FairNAS-A's
//! classifier took 3% of a batch-1 pass at 8 GFLOP/s). Here every logit is `dot` of two
//! contiguous rows, in a fixed order: the same bits for any batch size and thread count.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::layout::{contiguous_slice, dispatch_f32_f64};

/// `sum a[i] b[i]` as 16 lane sums (lane `l` takes `i = l mod 16`), then the tail's sum plus
/// the lanes in lane order. A single running sum is a serial chain the compiler may not
/// vectorise (float addition does not reassociate); this order is fixed, so the result does
/// not depend on the build or the thread count. Shared by the classifier, squeeze-excite's
/// FCs and the depthwise weight gradient.
#[inline(always)]
pub(crate) fn dot<T: num_traits::Float + std::ops::AddAssign>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().fold(tail, |s, &v| s + v)
}

/// `[N, C] x [K, C] (+ [K]) -> [N, K]`. Forward only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear;

/// Classes per parallel task.
const CLASSES_PER_TASK: usize = 64;

fn forward_typed<T: candle_core::WithDType + num_traits::Float + std::ops::AddAssign>(
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    (bs, bl): (&CpuStorage, &Layout),
) -> Result<(Vec<T>, Shape)> {
    let (n, c, k) = match (xl.dims(), wl.dims(), bl.dims()) {
        (&[n, c], &[k, wc], &[bk]) if wc == c && bk == k => (n, c, k),
        (x, w, b) => candle_core::bail!(
            "linear: expected x [N, C], weight [K, C] and bias [K], got {x:?}, {w:?} and {b:?}"
        ),
    };
    let x = contiguous_slice::<T>(xs, xl)?;
    let w = contiguous_slice::<T>(ws, wl)?;
    let b = contiguous_slice::<T>(bs, bl)?;
    let mut out = vec![T::zero(); n * k];
    out.par_chunks_mut(k.max(1)).enumerate().for_each(|(image, logits)| {
        let row = &x[image * c..(image + 1) * c];
        logits.par_chunks_mut(CLASSES_PER_TASK).enumerate().for_each(|(task, logits)| {
            crate::simd::wide(
                #[inline(always)]
                || {
                    for (j, logit) in logits.iter_mut().enumerate() {
                        let class = task * CLASSES_PER_TASK + j;
                        *logit = dot(&w[class * c..(class + 1) * c], row) + b[class];
                    }
                },
            )
        })
    });
    Ok((out, Shape::from((n, k))))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fairnas-linear"
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
        dispatch_f32_f64(
            "linear",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || forward_typed::<f32>((s1, l1), (s2, l2), (s3, l3)),
            || forward_typed::<f64>((s1, l1), (s2, l2), (s3, l3)),
        )
    }
}

/// `x W^T + b` for `x` `[N, C]`, `weight` `[K, C]`, `bias` `[K]` (CPU): each image's logits the
/// same bits whatever the batch.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.apply_op3_no_bwd(weight, bias, &Linear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Against candle's matmul in f64, and an image's logits do not depend on its batch.
    #[test]
    fn matches_matmul_and_does_not_depend_on_the_batch() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1., (5, 1283), &dev)?;
        let w = Tensor::randn(0f64, 0.1, (130, 1283), &dev)?;
        let b = Tensor::randn(0f64, 1., 130, &dev)?;
        let want = x.matmul(&w.t()?)?.broadcast_add(&b)?;
        let got = linear(&x, &w, &b)?;
        let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err < 1e-12, "{err}");
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let all = linear(&f(&x), &f(&w), &f(&b))?;
        let one = linear(&f(&x).narrow(0, 3, 1)?, &f(&w), &f(&b))?;
        assert_eq!(all.get(3)?.to_vec1::<f32>()?, one.get(0)?.to_vec1::<f32>()?);
        let err = linear(&x, &w.t()?, &b).unwrap_err().to_string();
        assert!(err.contains("weight [K, C]"), "{err}");
        Ok(())
    }
}
