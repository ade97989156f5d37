//! NSGA-II and baseline searches over supernet architectures, objectives and Pareto output.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout until the search
//! issue lands. It intentionally exports nothing.
