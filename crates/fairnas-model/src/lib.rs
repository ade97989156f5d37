//! Architecture specs, the FairNAS search space, the named model family, the cost model and the
//! candle network that runs any spec, and the reader that turns PyTorch checkpoints into its
//! weights.

pub mod block_string;
pub mod cost;
pub mod network;
pub mod persist;
pub mod pytorch;
pub mod search_space;
pub mod selection;
pub mod self_check;
pub mod spec;
pub mod synthetic;
pub mod weights;
pub mod zoo;

pub use fairnas_ops::Activation;
