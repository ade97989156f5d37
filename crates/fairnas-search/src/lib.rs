//! Search over supernet architectures and the measures around it: ranking statistics against a
//! benchmark's ground truth, the ground truth itself, and plots.
//!
//! The top library layer of fairnas-rs (`fairnas-ops` <- `fairnas-model` <- `fairnas-supernet`
//! <- `fairnas-search`; `fairnas-data` beside them, the `fairnas` CLI on top): it takes a
//! supernet trained by `fairnas-supernet` and finds its best sub-networks, or measures how well
//! its one-shot scores rank them. Main types:
//!
//! - the problem: anything implementing [`objective::Problem`] (choice counts, metric names,
//!   metrics of a batch of choice vectors): [`one_shot::OneShotProblem`] scores a trained
//!   supernet (one-shot accuracy after BN recalibration, multiply-adds, params, latency), and a
//!   user-defined problem needs no supernet at all; [`objective::Goals`] pick which metrics are
//!   objectives ([`objective::Direction`]) and which are bounded by constraints;
//! - the searches ([`evolution`]): [`evolution::Nsga2`] (multi-objective), and as baselines at
//!   the same budget [`evolution::random_search`] and [`evolution::ConstrainedEvolution`]; each
//!   is deterministic for its seed and resumes from its [`evolution::SearchState`];
//! - [`pareto`]: dominance, non-dominated sorting, crowding distance, exact hypervolume;
//! - measures: [`ranking`] (Kendall's tau, Spearman's rho, top-k precision against
//!   [`ground_truth`], e.g. NAS-Bench-Macro), [`judge`] (a search's front and models placed
//!   in the benchmark, beside random search), [`latency`] lookup tables, [`plot`] (SVG);
//! - runs with result folders that resume: [`run`] (a search), [`rank`] (a ranking),
//!   [`pipeline`] (train, measure latency, search, export, in one call); errors are
//!   [`SearchError`].
//!
//! ```
//! use fairnas_search::objective::{Direction, Goals};
//! use fairnas_search::pareto::{hypervolume, pareto_front};
//!
//! // Metrics of 4 architectures: [accuracy, madds (M)]; maximise the first, minimise the second.
//! let metrics = ["accuracy".to_string(), "madds".to_string()];
//! let goals = Goals::named(&metrics, &[("accuracy", Direction::Maximize), ("madds", Direction::Minimize)], &[])?;
//! let archs = [[75.0, 300.0], [76.0, 400.0], [74.0, 350.0], [77.0, 500.0]];
//! // Fitness is in minimisation form (maximised objectives negated).
//! let points: Vec<Vec<f64>> = archs.iter().map(|m| goals.fitness(m).values).collect();
//! assert_eq!(points[0], [-75.0, 300.0]);
//! // [74, 350] is beaten by [75, 300] on both: the front is the other three.
//! assert_eq!(pareto_front(&points), [0, 1, 3]);
//! // Hypervolume against the reference (70% accuracy, 600M madds), in minimisation form:
//! // 5x300 + 1x200 + 1x100 = 1800.
//! let reference = goals.fitness_of_objectives(&[70.0, 600.0]);
//! assert_eq!(hypervolume(&points, &reference), 1800.0);
//! # Ok::<(), fairnas_search::SearchError>(())
//! ```
//!
//! `examples/nsga2_known_front.rs` runs NSGA-II on a user-defined problem and checks that it
//! finds the Pareto front brute force finds.

pub mod error;
pub mod evolution;
pub mod export;
pub mod ground_truth;
pub mod judge;
pub mod latency;
pub mod objective;
pub mod one_shot;
pub mod pareto;
pub mod pipeline;
pub mod plot;
pub mod rank;
pub mod ranking;
pub mod report;
pub mod run;
pub mod store;

pub use error::SearchError;
