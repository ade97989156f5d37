//! Gradients of the custom ops, checked two ways: against candle's own (slow) autograd through
//! its grouped convolution / unfused SE graph, and against central finite differences in f64.

use candle_core::{Device, Result, Tensor, Var};
use fairnas_ops::{depthwise_conv2d, squeeze_excite, Activation, Padding2d};

mod common;
use common::{max_rel, numeric_grad};

/// candle's grouped convolution on an explicitly padded input: an independent implementation
/// whose gradients come from candle's autograd. The trailing rows/columns no window reaches are
/// cut off first: candle's conv backward fails on them ("shape mismatch in add") when
/// `(padded - k) % stride != 0`; they receive zero gradient either way.
fn candle_depthwise(x: &Tensor, w: &Tensor, stride: usize, pad: Padding2d) -> Result<Tensor> {
    let k = w.dim(2)?;
    let xp = x.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
    let (ph, pw) = (xp.dim(2)?, xp.dim(3)?);
    let xp = xp.narrow(2, 0, ph - (ph - k) % stride)?.narrow(3, 0, pw - (pw - k) % stride)?;
    xp.conv2d(w, 0, stride, 1, x.dim(1)?)
}

/// A fixed random projection of the output, so every output element's gradient matters.
fn loss(y: &Tensor, probe: &Tensor) -> Result<Tensor> {
    (y * probe)?.sum_all()
}

#[test]
fn depthwise_gradients_match_candle_autograd_for_all_variants() -> Result<()> {
    let dev = Device::Cpu;
    for k in [3usize, 5, 7] {
        for s in [1usize, 2] {
            for (h, w) in [(9usize, 11usize), (8, 8), (7, 6)] {
                for pad in [Padding2d::symmetric(k), Padding2d::tf_same(h, w, k, s)] {
                    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, h, w), &dev)?)?;
                    let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 1, k, k), &dev)?)?;
                    let ours = depthwise_conv2d(x.as_tensor(), wt.as_tensor(), s, pad)?;
                    let probe = Tensor::randn(0f32, 1., ours.dims(), &dev)?;
                    let g_ours = loss(&ours, &probe)?.backward()?;
                    let theirs = candle_depthwise(x.as_tensor(), wt.as_tensor(), s, pad)?;
                    let g_theirs = loss(&theirs, &probe)?.backward()?;
                    for (name, v) in [("input", &x), ("weight", &wt)] {
                        let a = g_ours.get(v).expect("our gradient");
                        let b = g_theirs.get(v).expect("candle gradient");
                        let err = max_rel(a, b);
                        assert!(err < 1e-5, "k{k} s{s} {h}x{w} {pad:?} {name}: rel err {err:.2e}");
                    }
                }
            }
        }
    }
    Ok(())
}

fn assert_close(analytic: &Tensor, numeric: Vec<f64>, what: &str) {
    let want = Tensor::from_vec(numeric, analytic.dims(), analytic.device()).unwrap();
    let err = max_rel(analytic, &want);
    assert!(err < 1e-6, "{what}: analytic vs finite differences rel err {err:.2e}");
}

fn scalar(t: Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

#[test]
fn depthwise_gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    for (k, s, pad) in [
        (3, 1, Padding2d::symmetric(3)),
        (5, 2, Padding2d::tf_same(7, 8, 5, 2)),
        (7, 2, Padding2d::symmetric(7)),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 2, 7, 8), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 1, k, k), &dev)?)?;
        let out = depthwise_conv2d(x.as_tensor(), wt.as_tensor(), s, pad)?;
        let probe = Tensor::randn(0f64, 1., out.dims(), &dev)?;
        let grads = loss(&out, &probe)?.backward()?;
        let f_x = |xv: &Tensor| {
            scalar(loss(&depthwise_conv2d(xv, wt.as_tensor(), s, pad).unwrap(), &probe).unwrap())
        };
        assert_close(grads.get(&x).unwrap(), numeric_grad(x.as_tensor(), f_x), &format!("k{k} s{s} input"));
        let f_w = |wv: &Tensor| {
            scalar(loss(&depthwise_conv2d(x.as_tensor(), wv, s, pad).unwrap(), &probe).unwrap())
        };
        assert_close(
            grads.get(&wt).unwrap(),
            numeric_grad(wt.as_tensor(), f_w),
            &format!("k{k} s{s} weight"),
        );
    }
    Ok(())
}

#[test]
fn depthwise_gradients_do_not_depend_on_thread_count() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 16, 28, 28), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (16, 1, 5, 5), &dev)?)?;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let y = depthwise_conv2d(x.as_tensor(), wt.as_tensor(), 2, Padding2d::symmetric(5)).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let flat = |v: &Var| g.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (flat(&wt), flat(&x))
        })
    };
    assert_eq!(run(1), run(2));
    Ok(())
}

/// The SE block written with candle's own differentiable ops.
fn candle_se(
    x: &Tensor,
    rw: &Tensor,
    rb: &Tensor,
    ew: &Tensor,
    eb: &Tensor,
    inner: Activation,
) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let r = rw.dim(0)?;
    let pooled = x.mean_keepdim((2, 3))?.reshape((n, c))?;
    let z = inner.forward(&pooled.matmul(&rw.reshape((r, c))?.t()?)?.broadcast_add(rb)?)?;
    let g = Activation::Sigmoid.forward(&z.matmul(&ew.reshape((c, r))?.t()?)?.broadcast_add(eb)?)?;
    x.broadcast_mul(&g.reshape((n, c, 1, 1))?)
}

#[test]
fn squeeze_excite_gradients_match_candle_autograd_and_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    for inner in [Activation::Swish, Activation::Relu] {
        let (n, c, r) = (3, 6, 4);
        let vars: Vec<Var> = [
            Tensor::randn(0f64, 1., (n, c, 5, 4), &dev)?,
            Tensor::randn(0f64, 0.5, (r, c, 1, 1), &dev)?,
            Tensor::randn(0f64, 0.5, r, &dev)?,
            Tensor::randn(0f64, 0.5, (c, r, 1, 1), &dev)?,
            Tensor::randn(0f64, 0.5, c, &dev)?,
        ]
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
        let t: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let ours = squeeze_excite(t[0], t[1], t[2], t[3], t[4], inner)?;
        let probe = Tensor::randn(0f64, 1., ours.dims(), &dev)?;
        let g_ours = loss(&ours, &probe)?.backward()?;
        let g_theirs = loss(&candle_se(t[0], t[1], t[2], t[3], t[4], inner)?, &probe)?.backward()?;
        for (i, name) in ["x", "reduce_w", "reduce_b", "expand_w", "expand_b"].iter().enumerate() {
            let a = g_ours.get(&vars[i]).unwrap_or_else(|| panic!("{inner}: no gradient for {name}"));
            let err = max_rel(a, g_theirs.get(&vars[i]).unwrap());
            assert!(err < 1e-10, "{inner} {name}: vs candle autograd rel err {err:.2e}");
            let f = |v: &Tensor| {
                let mut args = t.clone();
                args[i] = v;
                scalar(
                    loss(
                        &squeeze_excite(args[0], args[1], args[2], args[3], args[4], inner).unwrap(),
                        &probe,
                    )
                    .unwrap(),
                )
            };
            assert_close(a, numeric_grad(t[i], f), &format!("{inner} {name}"));
        }
    }
    Ok(())
}
