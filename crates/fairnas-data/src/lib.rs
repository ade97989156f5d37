//! Datasets (ImageNet folders and lists, CIFAR-10), parallel batch loading, image decoding and
//! the evaluation transforms of the original FairNAS scripts
//! (torchvision's `Resize(256)`, `CenterCrop(224)`, `ToTensor`, `Normalize`), reimplemented to
//! give the same pixels: the resampler is Pillow's fixed-point convolution resampler.

pub mod classes;
pub mod dataset;
pub mod decode;
pub mod evaluate;
pub mod imagenet_val;
pub mod loader;
pub mod resize;
pub mod shared_data;
pub mod train_loader;
pub mod train_transform;
pub mod transform;

pub use dataset::{Dataset, DatasetError, Sample, Source};
pub use decode::{load_rgb, DataError};
pub use loader::{Batch, EvalLoader, OnBadImage};
pub use resize::{resize, Interpolation};
pub use train_loader::{ImageStore, TrainBatch, TrainLoader};
pub use train_transform::TrainTransform;
pub use transform::{center_crop, resize_shorter_side, EvalTransform, Normalization};
