//! The pointwise convolution against candle's own conv2d (forward) and candle's autograd through
//! a matmul formulation (backward), against finite differences in f64, and for thread-count
//! independence.

use candle_core::{DType, Device, Result, Tensor, Var};
use fairnas_ops::pointwise_conv;

mod common;
use common::{max_rel, numeric_grad};

/// `W [O, C] x X` per image as candle ops: reshape, transpose, one matmul.
fn candle_pointwise(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let o = w.dim(0)?;
    let cols = x.reshape((n, c, h * wd))?.transpose(0, 1)?.reshape((c, n * h * wd))?;
    w.reshape((o, c))?.matmul(&cols)?.reshape((o, n, h * wd))?.transpose(0, 1)?.reshape((n, o, h, wd))
}

#[test]
fn forward_matches_conv2d_and_gradients_match_candle_autograd() -> Result<()> {
    let dev = Device::Cpu;
    for (n, c, o, h, w) in [(3, 5, 7, 4, 6), (1, 16, 8, 1, 1), (8, 3, 12, 5, 5)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (o, c, 1, 1), &dev)?)?;
        let ours = pointwise_conv(x.as_tensor(), wt.as_tensor())?;
        let conv = x.as_tensor().conv2d(wt.as_tensor(), 0, 1, 1, 1)?;
        let err = max_rel(&ours, &conv);
        assert!(err < 1e-5, "{n}x{c}x{h}x{w} -> {o}: forward vs conv2d rel err {err:.2e}");
        let probe = Tensor::randn(0f32, 1., ours.dims(), &dev)?;
        let g_ours = (ours * &probe)?.sum_all()?.backward()?;
        let theirs = candle_pointwise(x.as_tensor(), wt.as_tensor())?;
        let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
        for (name, v) in [("input", &x), ("weight", &wt)] {
            let (a, b) = (g_ours.get(v).expect("our gradient"), g_theirs.get(v).expect("candle's"));
            assert_eq!(a.dims(), v.dims(), "{name} gradient shape");
            let err = max_rel(a, b);
            assert!(err < 1e-5, "{n}x{c}x{h}x{w} -> {o} {name}: rel err {err:.2e}");
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 3, 2, 3), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f64, 1., (4, 3), &dev)?)?;
    let probe = Tensor::randn(0f64, 1., (2, 4, 2, 3), &dev)?;
    let loss = |x: &Tensor, w: &Tensor| -> f64 {
        (pointwise_conv(x, w).unwrap() * &probe).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let grads = (pointwise_conv(x.as_tensor(), wt.as_tensor())? * &probe)?.sum_all()?.backward()?;
    let checks = [
        ("input", &x, numeric_grad(x.as_tensor(), |v| loss(v, wt.as_tensor()))),
        ("weight", &wt, numeric_grad(wt.as_tensor(), |v| loss(x.as_tensor(), v))),
    ];
    for (name, v, numeric) in checks {
        let want = Tensor::from_vec(numeric, v.dims(), &dev)?;
        let err = max_rel(grads.get(v).unwrap(), &want);
        assert!(err < 1e-7, "{name}: analytic vs finite differences rel err {err:.2e}");
    }
    Ok(())
}

#[test]
fn results_do_not_depend_on_thread_count() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (6, 24, 9, 9), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (40, 24, 1, 1), &dev)?)?;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let y = pointwise_conv(x.as_tensor(), wt.as_tensor()).unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (flat(&y), flat(g.get(&x).unwrap()), flat(g.get(&wt).unwrap()))
        })
    };
    let one = run(1);
    // 1, 2, 4 threads: parallel over the 6 images; 8 threads: parallel inside each GEMM.
    for threads in [2, 4, 8] {
        assert!(run(threads) == one, "{threads} threads differ from 1");
    }
    Ok(())
}

#[test]
fn bad_shapes_name_the_problem() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((4, 5), DType::F32, &dev).unwrap();
    let err = pointwise_conv(&x, &w).unwrap_err().to_string();
    assert!(err.contains("5 input channels") && err.contains("3"), "{err}");
    let w3 = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev).unwrap();
    assert!(pointwise_conv(&x, &w3).unwrap_err().to_string().contains("[4, 3, 3, 3]"));
}
