//! Running a kernel body with wider vectors when the CPU has them.
//!
//! The build targets baseline x86-64 (SSE2: 4 f32 lanes per instruction), so the binary runs on
//! any x86-64 machine. The hot per-plane loops are written for the compiler to vectorise; under
//! [`wide`] they are compiled again with AVX2 (8 lanes) and AVX-512F (16 lanes), and the widest
//! the CPU has is picked at run time. The
//! operations and their order are the same (Rust never fuses `a * b + c` into an FMA, and our
//! partial sums are explicit lane arrays, not the vector width), so both builds of a kernel
//! give the same bits.

use std::sync::atomic::{AtomicU8, Ordering};

/// The widest build [`wide`] may pick; lowered by tests to compare the builds.
static WIDEST: AtomicU8 = AtomicU8::new(Build::Avx512 as u8);

/// The builds of a kernel body, narrowest first.
#[allow(dead_code)] // `Baseline` is only named by the tests' cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Build {
    Baseline,
    Avx2,
    Avx512,
}

/// Runs `body`, compiled with the widest vectors the CPU supports. `body` itself and everything
/// it calls must be `#[inline(always)]` (closures too: `wide(#[inline(always)] || ...)`) to be
/// compiled along with it; otherwise LLVM may keep it out of line, in the baseline build.
#[inline(always)]
pub(crate) fn wide<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        let widest = WIDEST.load(Ordering::Relaxed);
        if widest >= Build::Avx512 as u8 && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { with_avx512(body) };
        }
        if widest >= Build::Avx2 as u8 && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { with_avx2(body) };
        }
    }
    body()
}

/// Whether kernels written for AVX-512F only (with intrinsics, not through [`wide`]) may run:
/// the CPU has it and the tests' cap allows it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_allowed() -> bool {
    WIDEST.load(Ordering::Relaxed) >= Build::Avx512 as u8 && std::is_x86_feature_detected!("avx512f")
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(body: impl FnOnce() -> R) -> R {
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
    use crate::{
        batch_norm_act, depthwise_affine_act, depthwise_conv2d, folded_pointwise, Activation, Padding2d,
    };
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
        // The inference ops' epilogues: depthwise + affine + activation, folded pointwise.
        let wave = |len: usize, rate: f64, offset: f64| {
            let t =
                Tensor::arange(0u32, len as u32, &dev).unwrap().to_dtype(candle_core::DType::F32).unwrap();
            ((t * rate).unwrap().sin().unwrap() + offset).unwrap()
        };
        let affine = Tensor::stack(&[wave(c, 0.7, 1.5), wave(c, 1.3, 0.0)], 0).unwrap();
        let eval = depthwise_affine_act(
            x.as_tensor(),
            w.as_tensor(),
            &affine,
            stride,
            Padding2d::symmetric(5),
            Activation::Relu6,
        )
        .unwrap();
        let packed = (wave(c * (c + 1), 0.11, 0.0).reshape((c, c + 1)).unwrap() * 0.3).unwrap();
        let projected = folded_pointwise(&eval, &packed, Activation::Swish, Some(&z)).unwrap();
        vec![
            bits(&eval),
            bits(&projected),
            bits(&z),
            bits(&moments),
            bits(g.get(x).unwrap()),
            bits(g.get(w).unwrap()),
            bits(g.get(&gamma).unwrap()),
            bits(g.get(&beta).unwrap()),
        ]
    }

    /// The AVX-512 and AVX2 builds of the kernels give the baseline build's bits (a build the
    /// CPU lacks falls back to the next narrower one, which is then compared with itself).
    #[test]
    fn every_build_of_the_kernels_gives_the_same_bits() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 24, 13, 11), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (24, 1, 5, 5), &dev).unwrap()).unwrap();
        for stride in [1, 2] {
            let mut runs = Vec::new();
            for build in [Build::Avx512, Build::Avx2, Build::Baseline] {
                WIDEST.store(build as u8, Ordering::Relaxed);
                runs.push((build, kernels_run(&x, &w, stride)));
            }
            WIDEST.store(Build::Avx512 as u8, Ordering::Relaxed);
            for (build, run) in &runs[..2] {
                assert!(*run == runs[2].1, "stride {stride}: {build:?} and baseline kernels differ");
            }
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
