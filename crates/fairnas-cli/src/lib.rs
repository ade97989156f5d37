//! The pieces of the `fairnas` command line that `cargo xtask` reuses: the shared model and
//! weights options and checkpoint conversion.

pub mod allocator;
pub mod convert;
pub mod device;
pub mod model_args;
pub mod weights;
