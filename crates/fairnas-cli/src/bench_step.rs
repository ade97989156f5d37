//! `fairnas bench-step`: time of one supernet training step (all paths of the sampler forward
//! and backward on one batch, one SGD update), the figure `benches/supernet_step.sh` compares
//! with the same step in PyTorch (`benches/peers/supernet_step.py`).

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use fairnas_model::search_space::SearchSpace;
use fairnas_supernet::{train_step, PathSampler, Sgd, SgdConfig, StepOptions, StrictFair, Supernet};

#[derive(Args, Debug)]
pub struct BenchStepArgs {
    /// Search space (nas-bench-macro: 32x32 inputs, 3 strictly fair paths per step).
    #[arg(long, default_value = "nas-bench-macro")]
    space: String,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    steps: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchStepArgs) -> Result<()> {
    let device = Device::Cpu;
    let space = SearchSpace::named(&args.space).map_err(anyhow::Error::msg)?;
    let supernet = Supernet::new(&space, 0, &device)?;
    let sampler = StrictFair::new(&space.choice_counts(), 0).map_err(anyhow::Error::msg)?;
    let size = space.base.input_size;
    let mut rng = fairnas_ops::rng::SampleRng::new(1, 2, 3);
    let pixels: Vec<f32> =
        (0..args.batch * 3 * size * size).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let x = Tensor::from_vec(pixels, (args.batch, 3, size, size), &device)?;
    let labels: Vec<u32> = (0..args.batch).map(|_| rng.up_to(space.base.classes as u32 - 1)).collect();
    let y = Tensor::from_vec(labels, args.batch, &device)?;
    let mut sgd = Sgd::new(SgdConfig::default());
    let mut times = Vec::new();
    for step in 0..args.warmup + args.steps {
        let started = Instant::now();
        train_step(&supernet, &sampler.paths(step), &x, &y, &StepOptions::default(), &mut sgd, 0.01)?;
        if step >= args.warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let result = serde_json::json!({
        "implementation": "fairnas-rs",
        "threads": rayon::current_num_threads(),
        "space": space.name,
        "batch": args.batch,
        "paths_per_step": sampler.paths_per_step(),
        "steps": args.steps,
        "median_step_s": median,
        "min_step_s": sorted[0],
        "max_step_s": sorted[sorted.len() - 1],
        "steps_per_s": 1.0 / median,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "fairnas-rs, {} threads, {} batch {}: median {:.0} ms/step (min {:.0}, max {:.0}), {:.3} steps/s",
            rayon::current_num_threads(),
            space.name,
            args.batch,
            median * 1e3,
            sorted[0] * 1e3,
            sorted[sorted.len() - 1] * 1e3,
            1.0 / median
        );
    }
    Ok(())
}
