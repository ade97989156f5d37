//! Image decoding and the evaluation transforms of the original FairNAS scripts
//! (torchvision's `Resize(256)`, `CenterCrop(224)`, `ToTensor`, `Normalize`), reimplemented to
//! give the same pixels: the resampler is Pillow's fixed-point convolution resampler.

pub mod decode;
pub mod resize;
pub mod transform;

pub use decode::{load_rgb, DataError};
pub use resize::{resize, Interpolation};
pub use transform::{center_crop, resize_shorter_side, EvalTransform, Normalization};
