//! `fairnas bench-step`: time of one supernet training step (all paths of the sampler forward
//! and backward on one batch, one SGD update), the figure `benches/supernet_step.sh` compares
//! with the same step in PyTorch (`benches/peers/supernet_step.py`).

use anyhow::Result;
use clap::Args;
use fairnas_model::search_space::SearchSpace;

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
    let space = SearchSpace::named(&args.space)?;
    let t = fairnas_supernet::bench::time_steps(&space, args.batch, args.warmup, args.steps)?;
    if args.json {
        println!("{}", serde_json::to_string(&t)?);
    } else {
        println!("{t}");
    }
    Ok(())
}
