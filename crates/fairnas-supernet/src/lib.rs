//! Supernet training with strict fairness. Built so far: the path samplers (strict fairness,
//! uniform single path, expectation fairness, fixed path) and the differentiable supernet of any
//! [`fairnas_model::search_space::SearchSpace`]. The trainer, checkpoints, BN recalibration and
//! the CLI follow in the supernet issue.

pub mod checkpoint;
pub mod sampler;
pub mod schedule;
pub mod step;
pub mod supernet;

pub use sampler::{ExpectationFair, FixedPath, Path, PathSampler, StrictFair, UniformSinglePath};
pub use step::{train_step, Sgd, SgdConfig, SharedGradient, StepOptions, StepStats};
pub use supernet::{Mode, Supernet};
