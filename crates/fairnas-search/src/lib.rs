//! Search over supernet architectures and the measures around it: ranking statistics against a
//! benchmark's ground truth, the ground truth itself, and plots.

pub mod error;
pub mod evolution;
pub mod export;
pub mod ground_truth;
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
