//! Kernels that candle does not provide fast enough, as candle custom ops.
//!
//! candle's `conv2d(groups = C)` lowers a depthwise convolution to a grouped im2col + gemm that
//! is 15-35x slower than a direct loop, and MBConv networks spend most of their memory traffic in
//! depthwise layers, so the project owns that kernel. Squeeze-excite is fused for the same reason:
//! as separate candle ops it reads the (large) hidden tensor twice and allocates three temporaries.
//!
//! Every op reads its inputs through their [`candle_core::Layout`] (strided views are gathered
//! into a contiguous buffer first) and parallelises over independent (batch, channel) planes with
//! rayon, so the per-plane inner loops stay simple enough for the compiler to vectorise.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod activation;
pub mod batch_norm;
pub mod buffer;
pub mod conv_bn;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod cuda_emulator;
#[cfg(any(feature = "cuda", feature = "cuda-emulator"))]
pub(crate) mod cuda_plan;
pub mod dense_conv;
pub mod depthwise;
pub mod depthwise_backward;
pub mod folded_pointwise;
pub mod layout;
pub mod linear;
pub mod pointwise;
#[cfg(target_arch = "x86_64")]
mod pointwise_tile;
pub mod rng;
pub mod sgd;
mod simd;
pub mod squeeze_excite;

pub use activation::Activation;
pub use batch_norm::{batch_norm_act, channel_affine_act, channel_moments, BatchNormAct};
pub use conv_bn::{conv_bn_act, BnConv};
pub use dense_conv::{dense_conv2d, folded_dense_conv2d, DenseConv, FoldedDenseConv};
pub use depthwise::{
    depthwise_affine_act, depthwise_conv2d, CudaDepthwiseKernel, DepthwiseAffineAct, DepthwiseConv2d,
    Padding2d, Stride2Rows, TiledDepthwise,
};
pub use folded_pointwise::{fold_batch_norm, folded_pointwise, folded_pointwise_gated, FoldedPointwise};
pub use linear::linear;
pub use pointwise::{pointwise_conv, PointwiseConv};
pub use squeeze_excite::{
    pack_fc, squeeze_excite, squeeze_excite_gates, squeeze_excite_packed, SqueezeExcite, SqueezeExciteGates,
};
