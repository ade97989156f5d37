//! The time of one strictly fair training step on synthetic data (all paths forward and
//! backward on one batch, one SGD update): the figure `benches/supernet_step.sh` compares with
//! the same step in PyTorch (`benches/peers/supernet_step.py`).

use std::time::Instant;

use candle_core::{Device, Tensor};
use fairnas_model::search_space::SearchSpace;
use serde::{Deserialize, Serialize};

use crate::sampler::{PathSampler, StrictFair};
use crate::step::{train_step, Sgd, SgdConfig, StepOptions};
use crate::supernet::Supernet;
use crate::trainer::TrainError;

/// Step times of a run of [`time_steps`] (what `fairnas bench-step --json` prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub batch: usize,
    pub implementation: String,
    pub max_step_s: f64,
    pub median_step_s: f64,
    pub min_step_s: f64,
    pub paths_per_step: usize,
    pub space: String,
    pub steps: u64,
    pub steps_per_s: f64,
    pub threads: usize,
}

impl std::fmt::Display for StepTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {} threads, {} batch {}: median {:.0} ms/step (min {:.0}, max {:.0}), {:.3} steps/s",
            self.implementation,
            self.threads,
            self.space,
            self.batch,
            self.median_step_s * 1e3,
            self.min_step_s * 1e3,
            self.max_step_s * 1e3,
            self.steps_per_s
        )
    }
}

/// Times `steps` strictly fair steps of `space`'s supernet at `batch` after `warmup` untimed
/// ones, on seeded random images and labels.
pub fn time_steps(
    space: &SearchSpace,
    batch: usize,
    warmup: u64,
    steps: u64,
) -> Result<StepTiming, TrainError> {
    if steps == 0 || batch == 0 {
        return Err(TrainError::Config(format!(
            "timing needs at least one step and image, got {steps} steps of {batch}"
        )));
    }
    let device = Device::Cpu;
    let supernet = Supernet::new(space, 0, &device)?;
    let sampler = StrictFair::new(&space.choice_counts(), 0)?;
    let size = space.base.input_size;
    let mut rng = fairnas_ops::rng::SampleRng::new(1, 2, 3);
    let pixels: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let x = Tensor::from_vec(pixels, (batch, 3, size, size), &device)?;
    let labels: Vec<u32> = (0..batch).map(|_| rng.up_to(space.base.classes as u32 - 1)).collect();
    let y = Tensor::from_vec(labels, batch, &device)?;
    let mut sgd = Sgd::new(SgdConfig::default());
    let mut times = Vec::new();
    for step in 0..warmup + steps {
        let started = Instant::now();
        train_step(&supernet, &sampler.paths(step), &x, &y, &StepOptions::default(), &mut sgd, 0.01)?;
        if step >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(StepTiming {
        batch,
        implementation: "fairnas-rs".into(),
        max_step_s: times[times.len() - 1],
        median_step_s: median,
        min_step_s: times[0],
        paths_per_step: sampler.paths_per_step(),
        space: space.name.clone(),
        steps,
        steps_per_s: 1.0 / median,
        threads: rayon::current_num_threads(),
    })
}
