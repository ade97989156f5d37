//! Kernels that candle does not provide fast enough, as candle custom ops.
//!
//! This is the bottom layer of fairnas-rs: `fairnas-ops` <- `fairnas-model` (specs, networks,
//! checkpoints) <- `fairnas-supernet` (training) <- `fairnas-search` (search and ranking), with
//! `fairnas-data` (images) beside them and the `fairnas` CLI and `xtask` on top. Every op here
//! takes and returns [`candle_core::Tensor`]s, and the differentiable ones implement candle's
//! backward, so `loss.backward()` through them works like through any built-in op.
//!
//! candle's `conv2d(groups = C)` lowers a depthwise convolution to a grouped im2col + gemm that
//! is 15-35x slower than a direct loop, and MBConv networks spend most of their memory traffic in
//! depthwise layers, so the project owns that kernel. Squeeze-excite is fused for the same reason:
//! as separate candle ops it reads the (large) hidden tensor twice and allocates three temporaries.
//!
//! The main entry points:
//! - [`depthwise_conv2d`] ([`DepthwiseConv2d`], with [`Padding2d`] for PyTorch-style or TF "SAME"
//!   padding) and its gradients ([`depthwise_backward`]); [`depthwise_affine_act`] for inference
//!   with eval-mode BN folded in;
//! - [`squeeze_excite()`] (fused SE block), [`pointwise_conv`] (1x1 as GEMMs),
//!   [`dense_conv2d`] (the stem), [`linear()`] (the classifier, batch-size independent bits);
//! - [`batch_norm_act`] (training-mode BN + [`Activation`]) and [`conv_bn_act`] (a conv, BN and
//!   activation as one autograd node); [`fold_batch_norm`] + [`folded_pointwise()`] for inference;
//! - [`sgd`] (in-place SGD with momentum) and [`rng::SampleRng`], the seeded random stream the
//!   crates above draw augmentations, paths and mutations from;
//! - `cuda` (feature `cuda`): the same ops' CUDA kernels; [`cuda_emulator`] runs them on the CPU.
//!
//! Every op reads its inputs through their [`candle_core::Layout`] (strided views are gathered
//! into a contiguous buffer first) and parallelises over independent (batch, channel) planes with
//! rayon, so the per-plane inner loops stay simple enough for the compiler to vectorise.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use fairnas_ops::{depthwise_conv2d, Padding2d};
//!
//! // A 3x3 depthwise convolution of 2 channels with all-ones weights: each output pixel is the
//! // sum of its 3x3 neighbourhood (zero-padded), computed per channel.
//! let x = Var::from_tensor(&Tensor::ones((1, 2, 4, 4), candle_core::DType::F32, &Device::Cpu)?)?;
//! let w = Tensor::ones((2, 1, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
//! let y = depthwise_conv2d(x.as_tensor(), &w, 1, Padding2d::symmetric(3))?;
//! assert_eq!(y.dims(), &[1, 2, 4, 4]);
//! let row0 = y.get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?;
//! assert_eq!(row0, [4.0, 6.0, 6.0, 4.0]); // corners see 4 pixels, edges 6
//!
//! // Backward: d(sum y)/dx counts how many windows cover each input pixel.
//! let grads = y.sum_all()?.backward()?;
//! let dx = grads.get(&x).expect("x is tracked").get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?;
//! assert_eq!(dx, [4.0, 6.0, 6.0, 4.0]);
//!
//! // Stride 2 with TensorFlow "SAME" padding (EfficientNet-Lite) halves the size.
//! let y2 = depthwise_conv2d(x.as_tensor(), &w, 2, Padding2d::tf_same(4, 4, 3, 2))?;
//! assert_eq!(y2.dims(), &[1, 2, 2, 2]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! `examples/depthwise_vs_candle.rs` checks forward and both gradients against candle's grouped
//! convolution and autograd for every kernel, stride and padding an MBConv network uses.

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
