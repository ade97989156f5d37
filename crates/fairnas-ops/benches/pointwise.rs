//! The folded pointwise conv (1x1 conv + BN + activation [+ residual] in one op) against
//! candle's matmul of the same size (the GEMM alone, no epilogue), on FairNAS-A's pointwise
//! layer shapes at batch 32. Throughput is in multiply-add FLOPs (2 per multiply-add), so
//! criterion's `elem/s` reads as FLOP/s. `cargo bench -p fairnas-ops --bench pointwise`
//! (results in BENCHMARKS.md).

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fairnas_ops::{fold_batch_norm, folded_pointwise, Activation};

/// (input channels, output channels, plane side, residual): FairNAS-A's expand, project and
/// head convs, early (large plane, shallow) to late (7x7, deep).
const SHAPES: [(usize, usize, usize, bool); 7] = [
    (16, 48, 112, false),
    (96, 32, 56, true),
    (40, 240, 28, false),
    (240, 40, 28, true),
    (96, 576, 14, false),
    (1152, 192, 7, true),
    (320, 1280, 7, false),
];

/// As in the `fairnas` binary (its `allocator` module): mimalloc, keeping freed memory, so
/// each call's output reuses the last one's pages instead of faulting fresh ones in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pointwise(c: &mut Criterion) {
    // SAFETY: sets an integer option (`mi_option_purge_delay` = 15) to -1; no preconditions.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let dev = Device::Cpu;
    let n = 32;
    let mut group = c.benchmark_group("pointwise_batch32");
    group.sample_size(10).measurement_time(std::time::Duration::from_secs(4));
    for (ci, co, side, residual) in SHAPES {
        let hw = side * side;
        let x = Tensor::randn(0f32, 1., (n, ci, side, side), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (co, ci, 1, 1), &dev).unwrap();
        let scale = Tensor::randn(1f32, 0.1, co, &dev).unwrap();
        let shift = Tensor::randn(0f32, 0.1, co, &dev).unwrap();
        let packed = fold_batch_norm(&w, &scale, &shift).unwrap();
        let r = residual.then(|| Tensor::randn(0f32, 1., (n, co, side, side), &dev).unwrap());
        let id = format!("{ci}x{co}_{side}x{side}{}", if residual { "_res" } else { "" });
        group.throughput(Throughput::Elements((2 * n * hw * ci * co) as u64));
        group.bench_function(BenchmarkId::new("fairnas_folded", &id), |b| {
            b.iter(|| folded_pointwise(&x, &packed, Activation::Relu6, r.as_ref()).unwrap())
        });
        let wm = w.reshape((1, co, ci)).unwrap().broadcast_as((n, co, ci)).unwrap();
        let xm = x.reshape((n, ci, hw)).unwrap();
        group.bench_function(BenchmarkId::new("candle_matmul", &id), |b| b.iter(|| wm.matmul(&xm).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, pointwise);
criterion_main!(benches);
