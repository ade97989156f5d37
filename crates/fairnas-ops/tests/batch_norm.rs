//! The fused training-mode BN + activation against candle's own autograd through the unfused
//! formula (an independent implementation), against central finite differences in f64, and for
//! thread-count independence; the eval-mode affine against the plain formula.

use candle_core::{DType, Device, Result, Tensor, Var};
use fairnas_ops::{batch_norm_act, channel_affine_act, channel_moments, Activation};

mod common;
use common::{max_rel, numeric_grad};

const EPS: f64 = 1e-5;
const ACTIVATIONS: [Activation; 5] =
    [Activation::Identity, Activation::Relu, Activation::Relu6, Activation::Swish, Activation::Sigmoid];

/// PyTorch's training-mode `F.batch_norm` then the activation, as candle element-wise ops.
fn unfused(x: &Tensor, w: &Tensor, b: &Tensor, act: Activation) -> Result<Tensor> {
    let c = x.dim(1)?;
    let shape = (1, c, 1, 1);
    let mean = x.mean_keepdim((0, 2, 3))?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
    let scale = (var + EPS)?.sqrt()?.recip()?.broadcast_mul(&w.reshape(shape)?)?;
    let y = x.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(&b.reshape(shape)?)?;
    act.forward(&y)
}

fn vars(dtype: DType, n: usize, c: usize, h: usize, w: usize) -> Result<(Var, Var, Var)> {
    let dev = Device::Cpu;
    // A per-channel offset and spread, so the normalisation is not a no-op.
    let offset = Tensor::arange(0f32, c as f32, &dev)?.reshape((1, c, 1, 1))?;
    let x = (Tensor::randn(0f32, 1., (n, c, h, w), &dev)?
        .broadcast_mul(&(offset.clone() + 1.0)?)?
        .broadcast_add(&(offset * 0.5)?))?
    .to_dtype(dtype)?;
    let wt = Tensor::randn(1f32, 0.5, c, &dev)?.to_dtype(dtype)?;
    let bs = Tensor::randn(0f32, 0.5, c, &dev)?.to_dtype(dtype)?;
    Ok((Var::from_tensor(&x)?, Var::from_tensor(&wt)?, Var::from_tensor(&bs)?))
}

#[test]
fn forward_and_gradients_match_candle_autograd() -> Result<()> {
    for act in ACTIVATIONS {
        for (n, c, h, w) in [(4, 3, 5, 6), (2, 8, 4, 4), (16, 5, 1, 1)] {
            let (x, wt, bs) = vars(DType::F32, n, c, h, w)?;
            let (ours, moments) = batch_norm_act(x.as_tensor(), wt.as_tensor(), bs.as_tensor(), EPS, act)?;
            let err = max_rel(&moments, &channel_moments(x.as_tensor())?);
            assert!(err < 1e-6, "{act} moments: rel err {err:.2e}");
            let theirs = unfused(x.as_tensor(), wt.as_tensor(), bs.as_tensor(), act)?;
            let err = max_rel(&ours, &theirs);
            assert!(err < 1e-5, "{act} {n}x{c}x{h}x{w} forward: rel err {err:.2e}");
            let probe = Tensor::randn(0f32, 1., ours.dims(), &Device::Cpu)?;
            let g_ours = (ours * &probe)?.sum_all()?.backward()?;
            let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
            for (name, v) in [("input", &x), ("weight", &wt), ("bias", &bs)] {
                let err = max_rel(g_ours.get(v).expect("our gradient"), g_theirs.get(v).expect("candle's"));
                assert!(err < 1e-4, "{act} {n}x{c}x{h}x{w} {name}: rel err {err:.2e}");
            }
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    // Smooth activations only: finite differences across a ReLU kink are meaningless.
    for act in [Activation::Identity, Activation::Swish, Activation::Sigmoid] {
        let (x, wt, bs) = vars(DType::F64, 3, 2, 3, 4)?;
        let probe = Tensor::randn(0f32, 1., (3, 2, 3, 4), &Device::Cpu)?.to_dtype(DType::F64)?;
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
            (batch_norm_act(x, w, b, EPS, act).unwrap().0 * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let y = batch_norm_act(x.as_tensor(), wt.as_tensor(), bs.as_tensor(), EPS, act)?.0;
        let grads = (y * &probe)?.sum_all()?.backward()?;
        let checks: [(&str, &Var, Vec<f64>); 3] = [
            ("input", &x, numeric_grad(x.as_tensor(), |v| loss(v, wt.as_tensor(), bs.as_tensor()))),
            ("weight", &wt, numeric_grad(wt.as_tensor(), |v| loss(x.as_tensor(), v, bs.as_tensor()))),
            ("bias", &bs, numeric_grad(bs.as_tensor(), |v| loss(x.as_tensor(), wt.as_tensor(), v))),
        ];
        for (name, v, numeric) in checks {
            let want = Tensor::from_vec(numeric, v.dims(), &Device::Cpu)?;
            let err = max_rel(grads.get(v).unwrap(), &want);
            assert!(err < 1e-6, "{act} {name}: analytic vs finite differences rel err {err:.2e}");
        }
    }
    Ok(())
}

#[test]
fn results_do_not_depend_on_thread_count() -> Result<()> {
    let (x, wt, bs) = vars(DType::F32, 8, 24, 9, 9)?;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let y = batch_norm_act(x.as_tensor(), wt.as_tensor(), bs.as_tensor(), EPS, Activation::Relu6)
                .unwrap()
                .0;
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (flat(&y), flat(g.get(&x).unwrap()), flat(g.get(&wt).unwrap()), flat(g.get(&bs).unwrap()))
        })
    };
    assert_eq!(run(1), run(2));
    Ok(())
}

#[test]
fn moments_and_eval_affine_match_the_formulas() -> Result<()> {
    let (x, wt, bs) = vars(DType::F32, 4, 6, 5, 5)?;
    let x = x.as_tensor();
    let m = channel_moments(x)?;
    let mean = x.mean_keepdim((0, 2, 3))?.flatten_all()?;
    let var = x.broadcast_sub(&mean.reshape((1, 6, 1, 1))?)?.sqr()?.mean_keepdim((0, 2, 3))?.flatten_all()?;
    assert!(max_rel(&m.get(0)?, &mean) < 1e-6);
    assert!(max_rel(&m.get(1)?, &var) < 1e-6);
    for act in ACTIVATIONS {
        let got = channel_affine_act(x, wt.as_tensor(), bs.as_tensor(), act)?;
        let want = act.forward(
            &x.broadcast_mul(&wt.as_tensor().reshape((1, 6, 1, 1))?)?
                .broadcast_add(&bs.as_tensor().reshape((1, 6, 1, 1))?)?,
        )?;
        assert!(max_rel(&got, &want) < 1e-6, "{act}");
    }
    // Wrong shapes are refused with the expected shape named.
    let err = batch_norm_act(x, &wt.as_tensor().narrow(0, 0, 5)?, bs.as_tensor(), EPS, Activation::Relu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[1, 6]") && err.contains("[5]"), "{err}");
    Ok(())
}

/// At training sizes (65,536 values per channel, as in a NAS-Bench-Macro stem at batch 64) the
/// f32 kernels, which sum each plane in f32 lanes and the planes in f64, stay within 1e-4 of
/// the unfused formula evaluated in f64.
#[test]
fn f32_gradients_at_training_size_match_the_f64_formula() -> Result<()> {
    for act in [Activation::Relu, Activation::Swish] {
        let (x, wt, bs) = vars(DType::F32, 64, 3, 32, 32)?;
        let (ours, _) = batch_norm_act(x.as_tensor(), wt.as_tensor(), bs.as_tensor(), EPS, act)?;
        let probe = Tensor::randn(0f32, 1., ours.dims(), &Device::Cpu)?;
        let g_ours = (ours * &probe)?.sum_all()?.backward()?;
        let wide = |v: &Var| Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let (x64, w64, b64) = (wide(&x), wide(&wt), wide(&bs));
        let reference = unfused(x64.as_tensor(), w64.as_tensor(), b64.as_tensor(), act)?;
        let g_ref = (reference * probe.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
        for (name, v, r) in [("input", &x, &x64), ("weight", &wt, &w64), ("bias", &bs, &b64)] {
            let err = max_rel(g_ours.get(v).expect("our gradient"), g_ref.get(r).expect("reference"));
            assert!(err < 1e-4, "{act} {name}: rel err {err:.2e} vs f64");
        }
    }
    Ok(())
}
