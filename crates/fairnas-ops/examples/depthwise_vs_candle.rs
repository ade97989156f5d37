//! The project's depthwise convolution, forward and backward, checked against candle's own
//! grouped convolution (`conv2d` with `groups = C`) and candle's autograd through it.
//!
//! [`fairnas_ops::depthwise_conv2d`] is a candle custom op: it takes candle tensors, returns a
//! candle tensor, and `backward()` through it gives the input and weight gradients like any
//! built-in op. This example runs it on every kernel/stride/padding an MBConv network uses, on an
//! MBConv-sized activation (batch 4, 32 channels, 28x28), and fails unless forward output and
//! both gradients agree with candle's to a relative 1e-5.
//!
//! Run: `cargo run --release -p fairnas-ops --example depthwise_vs_candle`

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use fairnas_ops::{depthwise_conv2d, Padding2d};

/// Allowed relative difference: both sides accumulate in f32, in different orders.
const TOLERANCE: f64 = 1e-5;

/// Largest absolute difference, relative to the largest magnitude of the reference `b` (which
/// must not be all zeros: a comparison of zeros would prove nothing).
fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let b = b.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    if scale == 0.0 || a.len() != b.len() {
        candle_core::bail!(
            "degenerate comparison: {} vs {} elements, reference scale {scale}",
            a.len(),
            b.len()
        );
    }
    Ok(a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale)
}

/// The reference: pad explicitly, then candle's grouped convolution (one group per channel).
/// Rows/columns that no window reaches are cut first: candle's conv backward rejects them when
/// `(padded - k) % stride != 0`, and they get zero gradient either way.
fn candle_depthwise(x: &Tensor, w: &Tensor, stride: usize, pad: Padding2d) -> Result<Tensor> {
    let k = w.dim(2)?;
    let xp = x.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
    let (ph, pw) = (xp.dim(2)?, xp.dim(3)?);
    let xp = xp.narrow(2, 0, ph - (ph - k) % stride)?.narrow(3, 0, pw - (pw - k) % stride)?;
    xp.conv2d(w, 0, stride, 1, x.dim(1)?)
}

fn main() -> Result<()> {
    let device = Device::Cpu;
    let (batch, channels, size) = (4, 32, 28);
    let mut worst: f64 = 0.0;
    for kernel in [3, 5, 7] {
        for stride in [1, 2] {
            // PyTorch-style `k // 2` padding (FairNAS) and TensorFlow "SAME" (EfficientNet-Lite).
            for (name, pad) in [
                ("symmetric", Padding2d::symmetric(kernel)),
                ("tf-same", Padding2d::tf_same(size, size, kernel, stride)),
            ] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, channels, size, size), &device)?)?;
                let w = Var::from_tensor(&Tensor::randn(0f32, 1., (channels, 1, kernel, kernel), &device)?)?;

                let started = Instant::now();
                let ours = depthwise_conv2d(x.as_tensor(), w.as_tensor(), stride, pad)?;
                // A fixed random projection as the loss, so every output element's gradient counts.
                let probe = Tensor::randn(0f32, 1., ours.dims(), &device)?;
                let our_grads = (&ours * &probe)?.sum_all()?.backward()?;
                let ours_time = started.elapsed();

                let started = Instant::now();
                let theirs = candle_depthwise(x.as_tensor(), w.as_tensor(), stride, pad)?;
                let their_grads = (&theirs * &probe)?.sum_all()?.backward()?;
                let theirs_time = started.elapsed();

                let errors = [
                    ("output", max_rel(&ours, &theirs)?),
                    ("d input", max_rel(our_grads.get(&x).unwrap(), their_grads.get(&x).unwrap())?),
                    ("d weight", max_rel(our_grads.get(&w).unwrap(), their_grads.get(&w).unwrap())?),
                ];
                println!(
                    "k{kernel} s{stride} {name:<9} out {:?}: {}  (ours {ours_time:.1?}, candle {theirs_time:.1?})",
                    ours.dims(),
                    errors.iter().map(|(n, e)| format!("{n} {e:.1e}")).collect::<Vec<_>>().join(", "),
                );
                for (what, err) in errors {
                    worst = worst.max(err);
                    if err.is_nan() || err > TOLERANCE {
                        candle_core::bail!(
                            "k{kernel} s{stride} {name}: {what} differs from candle's by {err:.2e} (> {TOLERANCE:.0e})"
                        );
                    }
                }
            }
        }
    }
    println!(
        "ok: forward and both gradients match candle's grouped conv (worst relative difference {worst:.1e})"
    );
    Ok(())
}
