//! Datasets (ImageNet folders and lists, CIFAR-10), parallel batch loading, image decoding and
//! the evaluation transforms of the original FairNAS scripts
//! (torchvision's `Resize(256)`, `CenterCrop(224)`, `ToTensor`, `Normalize`), reimplemented to
//! give the same pixels: the resampler is Pillow's fixed-point convolution resampler.
//!
//! The image side of fairnas-rs, beside the network layers (`fairnas-ops` <- `fairnas-model`
//! <- `fairnas-supernet` <- `fairnas-search`): it builds on `fairnas-ops` (its seeded random
//! stream, [`fairnas_ops::rng::SampleRng`]) and `fairnas-model` (the networks [`evaluate`]
//! scores), and the supernet trainer's `images` feature and the `fairnas` CLI read images
//! through it. Main types:
//!
//! - [`Dataset`]: labelled samples of an image folder ([`Dataset::image_folder`]), the flat
//!   ImageNet validation set with its ground truth, `<wnid>_*.JPEG` photos, or CIFAR-10
//!   ([`Dataset::cifar10`]); [`classes`] has the class lists;
//! - evaluation: [`EvalTransform`] (resize the shorter side, centre crop, [`Normalization`])
//!   and [`EvalLoader`], batches decoded in parallel behind a bounded queue; [`evaluate`], a
//!   model's top-1/top-5 on a dataset with its family's preprocessing;
//! - training: [`TrainTransform`] (RandomResizedCrop or pad-crop, and flip), [`ImageStore`]
//!   (a small set decoded once into memory) and [`TrainLoader`], whose batches are a pure
//!   function of (seed, epoch, batch index), so a resumed run sees the same batches;
//! - [`load_rgb`] and [`resize()`]: decoding to 8-bit RGB and Pillow-exact resampling;
//! - [`deploy`]: a network as an ONNX file that records the preprocessing it expects.
//!
//! ```
//! use fairnas_data::{EvalTransform, Interpolation, Normalization, TrainTransform};
//! use fairnas_ops::rng::SampleRng;
//! use image::{Rgb, RgbImage};
//!
//! // A synthetic 40x30 photo: a horizontal red ramp.
//! let photo = RgbImage::from_fn(40, 30, |x, _| Rgb([(x * 6) as u8, 100, 50]));
//!
//! // Training: pad-4 random crop to 32x32 and a random flip, seeded per (seed, epoch, sample).
//! let augment = TrainTransform::PadCrop { pad: 4, size: 32, normalization: Normalization::CIFAR10 };
//! let a = augment.apply(&photo, &mut SampleRng::new(1, 0, 17));
//! assert_eq!(a.len(), 3 * 32 * 32); // CHW f32
//! assert_eq!(a, augment.apply(&photo, &mut SampleRng::new(1, 0, 17))); // same seed, same pixels
//! assert_ne!(a, augment.apply(&photo, &mut SampleRng::new(1, 1, 17))); // next epoch, new view
//!
//! // Evaluation: shorter side to 24, centre crop 24, ImageNet statistics; no randomness.
//! let eval = EvalTransform {
//!     resize: 24,
//!     crop: 24,
//!     interpolation: Interpolation::Bilinear,
//!     normalization: Normalization::Imagenet,
//! };
//! let x = eval.apply_image(&photo, "ramp.png".as_ref())?;
//! assert_eq!(x.len(), 3 * 24 * 24);
//! let green = (100.0 / 255.0 - 0.456) / 0.224; // a constant channel stays constant
//! assert!(x[24 * 24..2 * 24 * 24].iter().all(|&v| (v - green).abs() < 1e-6));
//! # Ok::<(), fairnas_data::DataError>(())
//! ```
//!
//! `examples/image_folder_batches.rs` opens the CIFAR-10 subset in `data/cifar10-mini`,
//! augments it and iterates training and evaluation batches.

pub mod classes;
pub mod dataset;
pub mod decode;
pub mod deploy;
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
pub use train_loader::{ImageStore, Shard, TrainBatch, TrainLoader};
pub use train_transform::TrainTransform;
pub use transform::{center_crop, resize_shorter_side, EvalTransform, Normalization};
