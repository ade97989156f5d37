//! The dense convolution op (stem, strided 1x1 projections) against candle's conv2d and its
//! autograd, an independent implementation, and against f64 finite differences.

use candle_core::{DType, Device, Result, Tensor, Var};
use fairnas_ops::{dense_conv2d, Padding2d};

mod common;
use common::{max_rel, numeric_grad};

/// candle's conv2d on an explicitly padded input, with the trailing rows/columns no window
/// reaches cut off (candle's conv backward fails on them; they receive zero gradient anyway).
fn candle_conv(x: &Tensor, w: &Tensor, stride: usize, pad: Padding2d) -> Result<Tensor> {
    let k = w.dim(2)?;
    let xp = x.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
    let (ph, pw) = (xp.dim(2)?, xp.dim(3)?);
    let xp = xp.narrow(2, 0, ph - (ph - k) % stride)?.narrow(3, 0, pw - (pw - k) % stride)?;
    xp.conv2d(w, 0, stride, 1, 1)
}

#[test]
fn matches_candle_conv2d_and_its_gradients() -> Result<()> {
    let dev = Device::Cpu;
    for (k, s) in [(3usize, 1usize), (3, 2), (1, 2), (1, 1), (5, 2)] {
        for (h, w) in [(9usize, 11usize), (8, 8), (5, 6)] {
            for pad in [Padding2d::symmetric(k), Padding2d::tf_same(h, w, k, s)] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 4, h, w), &dev)?)?;
                let wt = Var::from_tensor(&Tensor::randn(0f32, 0.5, (6, 4, k, k), &dev)?)?;
                let ours = dense_conv2d(x.as_tensor(), wt.as_tensor(), s, pad)?;
                let theirs = candle_conv(x.as_tensor(), wt.as_tensor(), s, pad)?;
                assert_eq!(ours.dims(), theirs.dims(), "k{k} s{s} {h}x{w} {pad:?}");
                let err = max_rel(&ours, &theirs);
                assert!(err < 1e-5, "k{k} s{s} {h}x{w} {pad:?} forward: rel err {err:.2e}");
                let probe = Tensor::randn(0f32, 1., ours.dims(), &dev)?;
                let g_ours = (ours * &probe)?.sum_all()?.backward()?;
                let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
                for (name, v) in [("input", &x), ("weight", &wt)] {
                    let err =
                        max_rel(g_ours.get(v).expect("our gradient"), g_theirs.get(v).expect("candle's"));
                    assert!(err < 1e-5, "k{k} s{s} {h}x{w} {pad:?} {name}: rel err {err:.2e}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences_in_f64() -> Result<()> {
    let dev = Device::Cpu;
    let pad = Padding2d::tf_same(7, 6, 3, 2);
    let x = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 3, 7, 6), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f64, 0.5, (4, 3, 3, 3), &dev)?)?;
    let probe = Tensor::randn(0f64, 1., (2, 4, 4, 3), &dev)?;
    let loss = |x: &Tensor, w: &Tensor| -> f64 {
        (dense_conv2d(x, w, 2, pad).unwrap() * &probe).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let grads = (dense_conv2d(x.as_tensor(), wt.as_tensor(), 2, pad)? * &probe)?.sum_all()?.backward()?;
    let cases: [(&str, &Var, Vec<f64>); 2] = [
        ("input", &x, numeric_grad(x.as_tensor(), |t| loss(t, wt.as_tensor()))),
        ("weight", &wt, numeric_grad(wt.as_tensor(), |t| loss(x.as_tensor(), t))),
    ];
    for (name, v, numeric) in cases {
        let want = Tensor::from_vec(numeric, v.dims(), &dev)?;
        let err = max_rel(grads.get(v).expect("gradient"), &want);
        assert!(err < 1e-6, "{name}: analytic vs finite differences rel err {err:.2e}");
    }
    Ok(())
}

/// The stem's input is the image batch: no input gradient is computed (or stored) for it.
#[test]
fn an_untracked_input_gets_no_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 0.5, (5, 3, 3, 3), &dev)?)?;
    let grads = dense_conv2d(&x, wt.as_tensor(), 1, Padding2d::symmetric(3))?.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none());
    assert_eq!(grads.get(&wt).expect("weight gradient").dims(), &[5, 3, 3, 3]);
    Ok(())
}

#[test]
fn weight_gradient_does_not_depend_on_thread_count() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (19, 3, 10, 10), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 0.5, (8, 3, 3, 3), &dev)?)?;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let y = dense_conv2d(x.as_tensor(), wt.as_tensor(), 2, Padding2d::symmetric(3)).unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let flat =
                |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
            (flat(g.get(&x).unwrap()), flat(g.get(&wt).unwrap()))
        })
    };
    assert_eq!(run(1), run(2));
    assert_eq!(run(1), run(4));
    Ok(())
}

#[test]
fn rejects_mismatched_shapes_naming_them() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev).unwrap();
    let err = dense_conv2d(&x, &w, 1, Padding2d::symmetric(3)).unwrap_err().to_string();
    assert!(err.contains("[4, 2, 3, 3]") && err.contains("3-channel"), "{err}");
}
