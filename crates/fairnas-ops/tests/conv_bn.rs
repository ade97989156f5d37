//! The fused conv + BN + activation node against the same ops as separate autograd nodes: the
//! same kernels run in the same order, so outputs, moments and all four gradients must be
//! identical bit for bit (the separate nodes' gradients only pass through `0 + g`).

use candle_core::{Device, Result, Tensor, Var};
use fairnas_ops::{
    batch_norm_act, conv_bn_act, dense_conv2d, depthwise_conv2d, pointwise_conv, Activation, BnConv,
    Padding2d,
};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn fused_equals_separate_ops_bit_for_bit() -> Result<()> {
    let dev = Device::Cpu;
    let cases = [
        (BnConv::Pointwise, (4, 6, 5, 5), vec![10, 6, 1, 1], Activation::Relu6),
        (BnConv::Pointwise, (3, 8, 4, 4), vec![5, 8], Activation::Identity),
        (
            BnConv::Depthwise { stride: 1, padding: Padding2d::symmetric(3) },
            (4, 6, 7, 7),
            vec![6, 1, 3, 3],
            Activation::Relu,
        ),
        (
            BnConv::Depthwise { stride: 2, padding: Padding2d::tf_same(9, 8, 5, 2) },
            (2, 5, 9, 8),
            vec![5, 1, 5, 5],
            Activation::Swish,
        ),
        (
            BnConv::Dense { stride: 2, padding: Padding2d::tf_same(9, 8, 3, 2) },
            (2, 3, 9, 8),
            vec![5, 3, 3, 3],
            Activation::Relu,
        ),
        (
            BnConv::Dense { stride: 2, padding: Padding2d::default() },
            (3, 4, 6, 6),
            vec![7, 4, 1, 1],
            Activation::Identity,
        ),
    ];
    for (conv, xs, ws, act) in cases {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., xs, &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, ws.as_slice(), &dev)?)?;
        let channels = ws[0];
        let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, channels, &dev)?)?;
        let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, channels, &dev)?)?;
        let (fused, m1) =
            conv_bn_act(x.as_tensor(), w.as_tensor(), conv, gamma.as_tensor(), beta.as_tensor(), 1e-5, act)?;
        let c = match conv {
            BnConv::Pointwise => pointwise_conv(x.as_tensor(), w.as_tensor())?,
            BnConv::Depthwise { stride, padding } => {
                depthwise_conv2d(x.as_tensor(), w.as_tensor(), stride, padding)?
            }
            BnConv::Dense { stride, padding } => dense_conv2d(x.as_tensor(), w.as_tensor(), stride, padding)?,
        };
        let (separate, m2) = batch_norm_act(&c, gamma.as_tensor(), beta.as_tensor(), 1e-5, act)?;
        assert_eq!(flat(&fused), flat(&separate), "{conv:?} forward");
        assert_eq!(flat(&m1), flat(&m2), "{conv:?} moments");
        let probe = Tensor::randn(0f32, 1., fused.dims(), &dev)?;
        let g1 = (fused * &probe)?.sum_all()?.backward()?;
        let g2 = (separate * &probe)?.sum_all()?.backward()?;
        for (name, v) in [("input", &x), ("conv weight", &w), ("bn weight", &gamma), ("bn bias", &beta)] {
            let (a, b) = (g1.get(v).expect("fused gradient"), g2.get(v).expect("separate gradient"));
            assert_eq!(a.dims(), v.dims(), "{conv:?} {name} shape");
            assert_eq!(flat(a), flat(b), "{conv:?} {name} gradient");
        }
    }
    Ok(())
}
