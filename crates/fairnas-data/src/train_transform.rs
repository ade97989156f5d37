//! Training-time augmentation for the supernet: torchvision's `RandomResizedCrop` +
//! `RandomHorizontalFlip` (ImageNet-style) and pad-4 random crop + flip (CIFAR-style).
//!
//! Randomness comes from [`SampleRng`], seeded per (seed, epoch, sample index), so an image gets
//! the same augmentation whatever thread decodes it and whatever the batch layout: training is
//! reproducible for a given seed.

use fairnas_ops::rng::SampleRng;
use image::RgbImage;

use crate::{resize, Interpolation, Normalization};

/// A training augmentation pipeline ending in normalised CHW f32 values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainTransform {
    /// RandomResizedCrop(size, scale, ratio) with bilinear resampling, then a horizontal flip
    /// with probability 1/2.
    RandomResizedCrop { size: u32, scale: (f64, f64), ratio: (f64, f64), normalization: Normalization },
    /// Zero-pad every side by `pad`, crop `size` x `size` at a random offset, flip with
    /// probability 1/2 (the CIFAR-10 recipe).
    PadCrop { pad: u32, size: u32, normalization: Normalization },
}

impl TrainTransform {
    /// torchvision's ImageNet defaults: scale (0.08, 1), ratio (3/4, 4/3).
    pub fn imagenet(size: u32) -> Self {
        TrainTransform::RandomResizedCrop {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            normalization: Normalization::Imagenet,
        }
    }

    /// CIFAR-10: pad 4, crop 32, flip, CIFAR mean/std.
    pub fn cifar10() -> Self {
        TrainTransform::PadCrop { pad: 4, size: 32, normalization: Normalization::CIFAR10 }
    }

    pub fn output_size(&self) -> u32 {
        match self {
            TrainTransform::RandomResizedCrop { size, .. } | TrainTransform::PadCrop { size, .. } => *size,
        }
    }

    /// The augmented image (before normalisation).
    pub fn augment(&self, img: &RgbImage, rng: &mut SampleRng) -> RgbImage {
        let out = match *self {
            TrainTransform::RandomResizedCrop { size, scale, ratio, .. } => {
                let (x, y, w, h) = random_resized_crop_box(img.width(), img.height(), scale, ratio, rng);
                let crop = image::imageops::crop_imm(img, x, y, w, h).to_image();
                resize(&crop, size, size, Interpolation::Bilinear)
            }
            TrainTransform::PadCrop { pad, size, .. } => {
                let (w, h) = (img.width() + 2 * pad, img.height() + 2 * pad);
                let x = rng.up_to(w.saturating_sub(size));
                let y = rng.up_to(h.saturating_sub(size));
                RgbImage::from_fn(size, size, |i, j| {
                    let (sx, sy) = ((x + i) as i64 - pad as i64, (y + j) as i64 - pad as i64);
                    if sx >= 0 && sy >= 0 && (sx as u32) < img.width() && (sy as u32) < img.height() {
                        *img.get_pixel(sx as u32, sy as u32)
                    } else {
                        image::Rgb([0, 0, 0])
                    }
                })
            }
        };
        if rng.uniform() < 0.5 {
            image::imageops::flip_horizontal(&out)
        } else {
            out
        }
    }

    /// The deterministic held-out view of an image under this recipe, normalised CHW: for
    /// pad-crop (CIFAR) the image itself when it already has the training size, for
    /// RandomResizedCrop torchvision's `Resize(size * 8 / 7)` + `CenterCrop(size)` (256/224).
    pub fn evaluate(&self, img: &RgbImage, path: &std::path::Path) -> Result<Vec<f32>, crate::DataError> {
        let (size, normalization) = match *self {
            TrainTransform::RandomResizedCrop { size, normalization, .. } => (size, normalization),
            TrainTransform::PadCrop { size, normalization, .. } => {
                if img.width() == size && img.height() == size {
                    return Ok(normalization.to_chw(img));
                }
                (size, normalization)
            }
        };
        let resize = match self {
            TrainTransform::RandomResizedCrop { .. } => (size as u64 * 8 / 7) as u32,
            TrainTransform::PadCrop { .. } => size,
        };
        crate::EvalTransform { resize, crop: size, interpolation: Interpolation::Bilinear, normalization }
            .apply_image(img, path)
    }

    /// Augmented and normalised, CHW.
    pub fn apply(&self, img: &RgbImage, rng: &mut SampleRng) -> Vec<f32> {
        let normalization = match self {
            TrainTransform::RandomResizedCrop { normalization, .. }
            | TrainTransform::PadCrop { normalization, .. } => normalization,
        };
        normalization.to_chw(&self.augment(img, rng))
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a random area fraction and
/// log-uniform aspect ratio; otherwise the whole image center-cropped to the nearest allowed
/// ratio. Returns (x, y, width, height).
fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SampleRng,
) -> (u32, u32, u32, u32) {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * rng.uniform());
        let aspect = (log_lo + (log_hi - log_lo) * rng.uniform()).exp();
        let w = (target * aspect).sqrt().round() as u32;
        let h = (target / aspect).sqrt().round() as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            let y = rng.up_to(height - h);
            let x = rng.up_to(width - w);
            return (x, y, w, h);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((width as f64 / ratio.0).round() as u32).min(height))
    } else if in_ratio > ratio.1 {
        (((height as f64 * ratio.1).round() as u32).min(width), height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]))
    }

    #[test]
    fn same_seed_epoch_and_index_give_the_same_augmentation() {
        let img = gradient(120, 90);
        let t = TrainTransform::imagenet(64);
        let a = t.apply(&img, &mut SampleRng::new(1, 2, 3));
        assert_eq!(a, t.apply(&img, &mut SampleRng::new(1, 2, 3)));
        assert_ne!(a, t.apply(&img, &mut SampleRng::new(1, 2, 4)));
        assert_ne!(a, t.apply(&img, &mut SampleRng::new(1, 3, 3)));
        assert_eq!(a.len(), 3 * 64 * 64);
    }

    #[test]
    fn random_resized_crop_boxes_respect_scale_and_ratio() {
        let mut rng = SampleRng::new(7, 0, 0);
        let mut fallbacks = 0;
        for _ in 0..2000 {
            let (x, y, w, h) = random_resized_crop_box(500, 375, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(x + w <= 500 && y + h <= 375);
            let frac = (w * h) as f64 / (500.0 * 375.0);
            let aspect = w as f64 / h as f64;
            if (w, h) == (500, 375) {
                fallbacks += 1;
                continue;
            }
            assert!((0.075..=1.0).contains(&frac), "area fraction {frac}");
            assert!((0.74..=1.35).contains(&aspect), "aspect {aspect}");
        }
        assert!(fallbacks < 100, "{fallbacks} fallbacks");
        // A very wide image falls back to a centered crop of the widest allowed ratio.
        let (x, _, w, h) = random_resized_crop_box(1000, 10, (0.99, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!((w, h, x), (13, 10, 493));
    }

    #[test]
    fn pad_crop_stays_within_the_padding_and_flips() {
        let img = gradient(32, 32);
        let t = TrainTransform::cifar10();
        let mut seen_offsets = std::collections::HashSet::new();
        let mut flips = 0;
        for i in 0..2000 {
            let out = t.augment(&img, &mut SampleRng::new(0, 0, i));
            assert_eq!(out.dimensions(), (32, 32));
            // Find where the source's pixel (10, 10) landed: blue = x + y identifies the diagonal.
            let found = (0..32).flat_map(|y| (0..32).map(move |x| (x, y))).find(|&(x, y)| {
                let p = out.get_pixel(x, y).0;
                p[0] == 10 && p[1] == 10
            });
            let (x, y) = found.expect("pixel (10, 10) is inside any 32x32 crop of the 40x40 padded image");
            let flipped = out.get_pixel((x + 1).min(31), y).0[0] < 10 && x < 31;
            flips += flipped as usize;
            let dx = if flipped { 31 - x as i64 } else { x as i64 };
            seen_offsets.insert((10 - dx + 4, 10 - y as i64 + 4));
        }
        assert!(
            seen_offsets.iter().all(|&(ox, oy)| (0..=8).contains(&ox) && (0..=8).contains(&oy)),
            "{seen_offsets:?}"
        );
        assert_eq!(seen_offsets.len(), 81, "every offset 0..=8 in both axes occurs");
        assert!((900..1100).contains(&flips), "{flips} flips of 2000");
    }
}
