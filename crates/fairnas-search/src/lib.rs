//! Search over supernet architectures and the measures around it: ranking statistics against a
//! benchmark's ground truth, the ground truth itself, and plots.

pub mod ground_truth;
pub mod plot;
pub mod ranking;
