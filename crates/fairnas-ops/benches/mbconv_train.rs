//! One MBConv training step (forward + backward, batch 32) split into its parts, to check that
//! the depthwise convolution does not dominate training, and our depthwise backward against
//! candle's built-in grouped-conv backward (the peer).
//!
//! The block is FairNAS-sized: input [32, 40, 28, 28], expansion 6 (hidden 240), depthwise 5x5
//! stride 1, projection back to 40 with a residual. Two versions: as the supernet runs it (each
//! conv + training BN + ReLU6 one fused node, pointwise convs as GEMMs), and with BN, ReLU6 and
//! the pointwise convolutions as candle ops (broadcast batched matmuls), the way it ran before.
//! `cargo bench -p fairnas-ops --bench mbconv_train` (results in BENCHMARKS.md).

use candle_core::{Device, Result, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use fairnas_ops::depthwise_backward::{DepthwiseInputGrad, DepthwiseWeightGrad};
use fairnas_ops::{conv_bn_act, depthwise_conv2d, Activation, BnConv, Padding2d};

const N: usize = 32;
const C: usize = 40;
const H: usize = 240;
const S: usize = 28;
const K: usize = 5;

/// Training-mode BN over (N, H, W) with affine parameters, from candle ops.
fn batch_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    let mean = x.mean_keepdim((0, 2, 3))?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
    let normed = centered.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    normed.broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?.broadcast_add(&beta.reshape((1, c, 1, 1))?)
}

/// 1x1 convolution as a batched matmul (weight broadcast on the left).
fn pointwise(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let o = w.dim(0)?;
    w.broadcast_left(n)?.matmul(&x.reshape((n, c, h * wd))?)?.reshape((n, o, h, wd))
}

struct Block {
    expand: Var,
    dw: Var,
    project: Var,
    bn: Vec<(Var, Var)>,
}

impl Block {
    fn new(dev: &Device) -> Self {
        let v = |shape: &[usize], std: f64| {
            Var::from_tensor(&Tensor::randn(0f32, std as f32, shape, dev).unwrap()).unwrap()
        };
        let ones =
            |c: usize| Var::from_tensor(&Tensor::ones(c, candle_core::DType::F32, dev).unwrap()).unwrap();
        let zeros =
            |c: usize| Var::from_tensor(&Tensor::zeros(c, candle_core::DType::F32, dev).unwrap()).unwrap();
        Block {
            expand: v(&[H, C], 0.15),
            dw: v(&[H, 1, K, K], 0.2),
            project: v(&[C, H], 0.06),
            bn: vec![(ones(H), zeros(H)), (ones(H), zeros(H)), (ones(C), zeros(C))],
        }
    }

    fn forward(&self, x: &Tensor, depthwise: impl Fn(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let bn = |i: usize, t: &Tensor| batch_norm(t, self.bn[i].0.as_tensor(), self.bn[i].1.as_tensor());
        let h = bn(0, &pointwise(x, self.expand.as_tensor())?)?.clamp(0f32, 6f32)?;
        let h = bn(1, &depthwise(&h, self.dw.as_tensor())?)?.clamp(0f32, 6f32)?;
        bn(2, &pointwise(&h, self.project.as_tensor())?)? + x
    }
}

impl Block {
    /// As `fairnas_supernet` runs a candidate: each conv + BN + activation one fused node.
    fn forward_fused(&self, x: &Tensor) -> Result<Tensor> {
        let step = |i: usize, t: &Tensor, w: &Var, conv, act| {
            let (g, b) = (self.bn[i].0.as_tensor(), self.bn[i].1.as_tensor());
            conv_bn_act(t, w.as_tensor(), conv, g, b, 1e-5, act).map(|r| r.0)
        };
        let dw = BnConv::Depthwise { stride: 1, padding: Padding2d::symmetric(K) };
        let h = step(0, x, &self.expand, BnConv::Pointwise, Activation::Relu6)?;
        let h = step(1, &h, &self.dw, dw, Activation::Relu6)?;
        step(2, &h, &self.project, BnConv::Pointwise, Activation::Identity)? + x
    }
}

fn ours(h: &Tensor, w: &Tensor) -> Result<Tensor> {
    depthwise_conv2d(h, w, 1, Padding2d::symmetric(K))
}

fn candle_grouped(h: &Tensor, w: &Tensor) -> Result<Tensor> {
    h.conv2d(w, K / 2, 1, 1, H)
}

fn mbconv(c: &mut Criterion) {
    let dev = Device::Cpu;
    let block = Block::new(&dev);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (N, C, S, S), &dev).unwrap()).unwrap();
    let hidden = Var::from_tensor(&Tensor::randn(0f32, 1., (N, H, S, S), &dev).unwrap()).unwrap();
    let probe = Tensor::randn(0f32, 1., (N, H, S, S), &dev).unwrap();
    let mut group = c.benchmark_group("mbconv_train_32x40x28x28_e6_k5");
    group.sample_size(10).measurement_time(std::time::Duration::from_secs(20));
    group.bench_function("block_fwd_bwd", |b| {
        b.iter(|| block.forward_fused(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap())
    });
    group.bench_function("block_fwd_bwd_candle_bn_and_matmul", |b| {
        b.iter(|| block.forward(x.as_tensor(), ours).unwrap().sum_all().unwrap().backward().unwrap())
    });
    group.bench_function("depthwise_fwd_bwd_fairnas", |b| {
        b.iter(|| {
            (ours(hidden.as_tensor(), block.dw.as_tensor()).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    // The three depthwise kernels alone, without the autograd bookkeeping and the probe loss
    // that the `_fwd_bwd` figures include: the depthwise share of the block.
    let pad = Padding2d::symmetric(K);
    group.bench_function("depthwise_kernel_forward", |b| {
        b.iter(|| depthwise_conv2d(hidden.as_tensor(), block.dw.as_tensor(), 1, pad).unwrap())
    });
    group.bench_function("depthwise_kernel_input_grad", |b| {
        let op =
            DepthwiseInputGrad { stride: 1, padding: pad, height: S, width: S, simple_cuda_kernel: false };
        b.iter(|| probe.apply_op2_no_bwd(block.dw.as_tensor(), &op).unwrap())
    });
    group.bench_function("depthwise_kernel_weight_grad", |b| {
        let op = DepthwiseWeightGrad { stride: 1, padding: pad, kernel: K, simple_cuda_kernel: false };
        b.iter(|| hidden.as_tensor().apply_op2_no_bwd(&probe, &op).unwrap())
    });
    group.bench_function("depthwise_fwd_bwd_candle_conv2d_groups", |b| {
        b.iter(|| {
            (candle_grouped(hidden.as_tensor(), block.dw.as_tensor()).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, mbconv);
criterion_main!(benches);
