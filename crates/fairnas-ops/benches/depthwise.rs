//! Our depthwise convolution and squeeze-excite against candle's built-in equivalents, on
//! MBConv-sized tensors, and the memory-bandwidth bound of the stride-1 case (a parallel copy
//! of its input into a fresh output). `cargo bench -p fairnas-ops --bench depthwise` (results
//! in BENCHMARKS.md).

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fairnas_ops::{depthwise_conv2d, squeeze_excite, Activation, Padding2d};

/// As in the `fairnas` binary (its `allocator` module): mimalloc, keeping freed memory, so
/// each call's output reuses the last one's pages instead of faulting fresh ones in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn depthwise(c: &mut Criterion) {
    // SAFETY: sets an integer option (`mi_option_purge_delay` = 15) to -1; no preconditions.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (32, 144, 56, 56), &dev).unwrap();
    let mut group = c.benchmark_group("depthwise_32x144x56x56");
    group.sample_size(10).measurement_time(std::time::Duration::from_secs(16));
    for (k, s) in [(3usize, 1usize), (5, 2)] {
        let w = Tensor::randn(0f32, 1., (144, 1, k, k), &dev).unwrap();
        let id = format!("k{k}_s{s}");
        group.bench_function(BenchmarkId::new("fairnas", &id), |b| {
            b.iter(|| depthwise_conv2d(&x, &w, s, Padding2d::symmetric(k)).unwrap())
        });
        group.bench_function(BenchmarkId::new("candle_conv2d_groups", &id), |b| {
            b.iter(|| x.conv2d(&w, k / 2, s, 1, 144).unwrap())
        });
    }
    // The memory-bandwidth bound of the stride-1 case: read the input once and write an
    // output of the same size into a fresh buffer, planes in parallel (as the kernel does).
    group.bench_function(BenchmarkId::new("copy_in_out", "k3_s1"), |b| {
        b.iter(|| {
            let (storage, layout) = x.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { unreachable!() };
            let src = &cpu.as_slice::<f32>().unwrap()[layout.start_offset()..];
            let plane = 56 * 56;
            let out = fairnas_ops::buffer::par_filled_chunks(x.elem_count(), plane, |i, dst| {
                dst.copy_from_slice(&src[i * plane..(i + 1) * plane])
            });
            Tensor::from_vec(out, x.shape(), &Device::Cpu).unwrap()
        })
    });
    group.finish();
}

fn se(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (n, ch, r) = (32, 240, 40);
    let x = Tensor::randn(0f32, 1., (n, ch, 28, 28), &dev).unwrap();
    let rw = Tensor::randn(0f32, 0.1, (r, ch, 1, 1), &dev).unwrap();
    let rb = Tensor::randn(0f32, 0.1, r, &dev).unwrap();
    let ew = Tensor::randn(0f32, 0.1, (ch, r, 1, 1), &dev).unwrap();
    let eb = Tensor::randn(0f32, 0.1, ch, &dev).unwrap();
    let mut group = c.benchmark_group("squeeze_excite_32x240x28x28");
    group.sample_size(20);
    group.bench_function("fairnas_fused", |b| {
        b.iter(|| squeeze_excite(&x, &rw, &rb, &ew, &eb, Activation::Swish).unwrap())
    });
    group.bench_function("candle_ops", |b| {
        b.iter(|| {
            let pooled = x.mean_keepdim((2, 3)).unwrap().reshape((n, ch)).unwrap();
            let z = pooled
                .matmul(&rw.reshape((r, ch)).unwrap().t().unwrap())
                .unwrap()
                .broadcast_add(&rb)
                .unwrap();
            let z = z.silu().unwrap();
            let g = z.matmul(&ew.reshape((ch, r)).unwrap().t().unwrap()).unwrap().broadcast_add(&eb).unwrap();
            let g = candle_nn::ops::sigmoid(&g).unwrap();
            x.broadcast_mul(&g.reshape((n, ch, 1, 1)).unwrap()).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, depthwise, se);
criterion_main!(benches);
