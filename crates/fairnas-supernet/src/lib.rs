//! Supernet, path samplers (strict fairness, uniform, expectation fairness), training loop,
//! checkpoints and BN recalibration.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout until the supernet
//! issue lands. It intentionally exports nothing.
