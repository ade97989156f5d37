//! Supernet training with strict fairness: path samplers (strict fairness, uniform single path,
//! expectation fairness, fixed path), the differentiable supernet of any
//! [`fairnas_model::search_space::SearchSpace`], the training step (m paths, one update), the
//! epoch loop with atomic, exactly resumable checkpoints, and BN recalibration for scoring
//! sub-networks.
//!
//! The training layer of fairnas-rs: it builds on `fairnas-model` (search spaces and block
//! specs) and `fairnas-ops` (the kernels and their gradients), reads images through
//! `fairnas-data` only with its `images` feature (on by default), and `fairnas-search` scores
//! and searches the supernets it trains; the `fairnas` CLI is on top. Main types:
//!
//! - [`Supernet`]: every candidate block of every layer with its own weights and BN, any
//!   sub-network ([`Path`], one choice per layer) runnable in a [`Mode`] (train, eval, BN
//!   recalibration), its weights exportable as a stand-alone network;
//! - [`PathSampler`]s: [`StrictFair`] (FairNAS: each step's paths use every candidate of every
//!   layer equally often), [`UniformSinglePath`] (SPOS), [`ExpectationFair`], [`FixedPath`];
//! - [`train_step`] (all paths of a step forward and backward on one batch, then one [`Sgd`]
//!   update) and [`trainer::train`], the epoch loop over an [`ImageSource`] configured by a
//!   [`TrainConfig`], with checkpoints ([`checkpoint`]) from which a run resumes bit for bit
//!   and [`trainer::load_run`] rebuilds the supernet, its space included;
//! - one-shot scoring: [`scoring::PrefixScorer`] recalibrates BN per sub-network on fixed
//!   [`scoring::ScoringBatches`] and scores many sub-networks sharing their common prefixes.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use fairnas_model::search_space::SearchSpace;
//! use fairnas_supernet::{train_step, PathSampler, Sgd, SgdConfig, StepOptions, StrictFair, Supernet};
//!
//! // NAS-Bench-Macro's space cut to its first 2 layers (3 candidates each).
//! let mut space = SearchSpace::nas_bench_macro();
//! space.layers.truncate(2);
//!
//! // Strict fairness: each step trains 3 paths, and each candidate of each layer is in exactly one.
//! let sampler = StrictFair::new(&space.choice_counts(), 7)?;
//! let paths = sampler.paths(0);
//! assert_eq!(paths.len(), 3);
//! for layer in 0..2 {
//!     let mut used: Vec<usize> = paths.iter().map(|p| p[layer]).collect();
//!     used.sort_unstable();
//!     assert_eq!(used, [0, 1, 2]);
//! }
//! assert_eq!(sampler.paths(0), paths); // a pure function of (seed, step): resumable
//!
//! // One training step of those 3 paths on a random batch, then one SGD update.
//! let device = Device::Cpu;
//! let supernet = Supernet::new(&space, 0, &device)?;
//! let images = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &device)?;
//! let labels = Tensor::new(&[0u32, 3, 5, 9], &device)?;
//! let mut sgd = Sgd::new(SgdConfig::default());
//! let stats = train_step(&supernet, &paths, &images, &labels, &StepOptions::default(), &mut sgd, 0.01)?;
//! assert_eq!(stats.losses.len(), 3);
//! assert!(stats.losses.iter().all(|l| l.is_finite()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `examples/tiny_supernet.rs` defines a 4-layer space in code, trains its supernet on the
//! CIFAR-10 subset in `data/cifar10-mini`, scores two sub-networks and reloads the checkpoint.

pub mod bench;
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
pub mod world;

pub use sampler::{
    ExpectationFair, FixedPath, Path, PathSampler, SamplerError, StrictFair, UniformSinglePath,
};
pub use source::{ImageSource, LabelledBatch};
pub use step::{train_step, train_step_sharded, Sgd, SgdConfig, SharedGradient, StepOptions, StepStats};
pub use supernet::{Mode, Supernet};
pub use trainer::{TrainConfig, TrainError, TrainObserver, TrainingData};
pub use world::{Solo, World};
