//! Supernet training with strict fairness: path samplers (strict fairness, uniform single path,
//! expectation fairness, fixed path), the differentiable supernet of any
//! [`fairnas_model::search_space::SearchSpace`], the training step (m paths, one update), the
//! epoch loop with atomic, exactly resumable checkpoints, and BN recalibration for scoring
//! sub-networks.

pub mod checkpoint;
#[cfg(feature = "images")]
pub mod images;
pub mod sampler;
pub mod schedule;
pub mod scoring;
pub mod source;
pub mod step;
pub mod supernet;
pub mod trainer;

pub use sampler::{ExpectationFair, FixedPath, Path, PathSampler, StrictFair, UniformSinglePath};
pub use source::{ImageSource, LabelledBatch};
pub use step::{train_step, Sgd, SgdConfig, SharedGradient, StepOptions, StepStats};
pub use supernet::{Mode, Supernet};
pub use trainer::{TrainConfig, TrainError, TrainObserver, TrainingData};
