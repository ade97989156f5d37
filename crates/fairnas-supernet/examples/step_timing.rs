#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::{Device, Tensor};
use fairnas_model::search_space::SearchSpace;
use fairnas_supernet::*;
fn main() {
    let dev = Device::Cpu;
    let space = SearchSpace::nas_bench_macro();
    let sn = Supernet::new(&space, 1, &dev).unwrap();
    let sampler = StrictFair::new(&space.choice_counts(), 7).unwrap();
    let x = Tensor::randn(0f32, 1., (64, 3, 32, 32), &dev).unwrap();
    let y = Tensor::from_vec((0..64u32).map(|i| i % 10).collect::<Vec<_>>(), 64, &dev).unwrap();
    let mut sgd = Sgd::new(SgdConfig::default());
    for s in 0..4u64 {
        let t = std::time::Instant::now();
        let st = train_step(&sn, &sampler.paths(s), &x, &y, &StepOptions::default(), &mut sgd, 0.01).unwrap();
        println!("step {s}: {:?} {:?}", t.elapsed(), st.losses);
    }
}
