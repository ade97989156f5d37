//! Running a kernel body with wider vectors when the CPU has them.
//!
//! The build targets baseline x86-64 (SSE2: 4 f32 lanes per instruction), so the binary runs on
//! any x86-64 machine. The hot per-plane loops are written for the compiler to vectorise; under
//! [`wide`] they are compiled a second time with AVX2 (8 lanes) and picked at run time. The
//! operations and their order are the same (Rust never fuses `a * b + c` into an FMA, and our
//! partial sums are explicit lane arrays, not the vector width), so both builds of a kernel
//! give the same bits.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by tests to run the baseline build of every kernel (the comparison of both builds).
static BASELINE_ONLY: AtomicBool = AtomicBool::new(false);

/// Runs `body`, compiled with AVX2 when the CPU supports it. Everything `body` calls must be
/// `#[inline(always)]` to be compiled along with it.
#[inline(always)]
pub(crate) fn wide<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if !BASELINE_ONLY.load(Ordering::Relaxed) && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { with_avx2(body) };
        }
    }
    body()
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{batch_norm_act, depthwise_conv2d, Activation, Padding2d};
    use candle_core::{Device, Tensor, Var};

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// Output and gradients of a depthwise conv + training BN + ReLU6, every value's bits.
    fn kernels_run(x: &Var, w: &Var, stride: usize) -> Vec<Vec<u32>> {
        let dev = Device::Cpu;
        let y = depthwise_conv2d(x.as_tensor(), w.as_tensor(), stride, Padding2d::symmetric(5)).unwrap();
        let c = y.dim(1).unwrap();
        let gamma = Var::from_tensor(&Tensor::ones(c, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let beta = Var::from_tensor(&Tensor::zeros(c, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let (z, moments) =
            batch_norm_act(&y, gamma.as_tensor(), beta.as_tensor(), 1e-5, Activation::Relu6).unwrap();
        let probe = Tensor::arange(0u32, z.elem_count() as u32, &dev).unwrap();
        let probe = ((probe.to_dtype(candle_core::DType::F32).unwrap() * 0.37).unwrap().sin().unwrap())
            .reshape(z.dims())
            .unwrap();
        let g = (&z * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        vec![
            bits(&z),
            bits(&moments),
            bits(g.get(x).unwrap()),
            bits(g.get(w).unwrap()),
            bits(g.get(&gamma).unwrap()),
            bits(g.get(&beta).unwrap()),
        ]
    }

    /// The AVX2 build of the kernels gives the baseline build's bits (on a CPU without AVX2 both
    /// runs take the baseline path and the test compares it with itself).
    #[test]
    fn both_builds_of_the_kernels_give_the_same_bits() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 24, 13, 11), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (24, 1, 5, 5), &dev).unwrap()).unwrap();
        for stride in [1, 2] {
            let wide = kernels_run(&x, &w, stride);
            BASELINE_ONLY.store(true, Ordering::Relaxed);
            let baseline = kernels_run(&x, &w, stride);
            BASELINE_ONLY.store(false, Ordering::Relaxed);
            assert!(wide == baseline, "stride {stride}: AVX2 and baseline kernels differ");
        }
    }

    #[test]
    fn runs_the_body_once_and_returns_its_value() {
        let mut calls = 0;
        assert_eq!(
            super::wide(|| {
                calls += 1;
                41 + 1
            }),
            42
        );
        assert_eq!(calls, 1);
    }
}
