//! Supernet training with strict fairness. Built so far: the path samplers (strict fairness,
//! uniform single path, expectation fairness, fixed path). The supernet itself, the trainer,
//! checkpoints and BN recalibration follow in the supernet issue.

pub mod sampler;

pub use sampler::{ExpectationFair, FixedPath, Path, PathSampler, StrictFair, UniformSinglePath};
