//! The evaluation transform: resize the shorter side, center crop, scale and normalise.

use std::path::Path;

use image::RgbImage;

use crate::decode::{load_rgb, DataError};
use crate::resize::{resize, Interpolation};

/// Per-channel input normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalization {
    /// torchvision's ImageNet statistics on [0, 1] inputs.
    Imagenet,
    /// `(x - 127) / 128` on 0..255 inputs (EfficientNet-Lite checkpoints).
    Inception,
    /// `(x / 255 - mean) / std`.
    Custom { mean: [f32; 3], std: [f32; 3] },
}

impl Normalization {
    /// CIFAR-10's per-channel statistics (the training recipe's, docs/FAIRNAS.md section 7).
    pub const CIFAR10: Normalization =
        Normalization::Custom { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] };

    /// CHW f32 values of an RGB image.
    pub fn to_chw(&self, img: &RgbImage) -> Vec<f32> {
        let hw = (img.width() * img.height()) as usize;
        let mut out = vec![0f32; 3 * hw];
        for (i, p) in img.pixels().enumerate() {
            for ch in 0..3 {
                out[ch * hw + i] = self.apply(p.0[ch], ch);
            }
        }
        out
    }

    #[inline]
    fn apply(&self, v: u8, channel: usize) -> f32 {
        match self {
            Normalization::Imagenet => {
                const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
                const STD: [f32; 3] = [0.229, 0.224, 0.225];
                (v as f32 / 255.0 - MEAN[channel]) / STD[channel]
            }
            Normalization::Inception => (v as f32 - 127.0) / 128.0,
            Normalization::Custom { mean, std } => (v as f32 / 255.0 - mean[channel]) / std[channel],
        }
    }
}

impl std::str::FromStr for Normalization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "imagenet" => Ok(Normalization::Imagenet),
            "inception" => Ok(Normalization::Inception),
            _ => Err(format!("unknown normalisation '{s}' (expected imagenet or inception)")),
        }
    }
}

/// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)` (truncated).
pub fn resize_shorter_side(img: &RgbImage, size: u32, filter: Interpolation) -> RgbImage {
    let (w, h) = img.dimensions();
    let (ow, oh) = if w <= h {
        (size, (size as u64 * h as u64 / w as u64) as u32)
    } else {
        ((size as u64 * w as u64 / h as u64) as u32, size)
    };
    if (ow, oh) == (w, h) {
        return img.clone();
    }
    resize(img, ow, oh, filter)
}

/// Python's `round`: halves go to the even neighbour.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// torchvision `CenterCrop(size)`: offsets `round((dim - size) / 2)` (half to even). Returns
/// None when the image is smaller than the crop.
pub fn center_crop(img: &RgbImage, size: u32) -> Option<RgbImage> {
    let (w, h) = img.dimensions();
    if w < size || h < size {
        return None;
    }
    let left = round_half_even((w - size) as f64 / 2.0) as u32;
    let top = round_half_even((h - size) as f64 / 2.0) as u32;
    Some(image::imageops::crop_imm(img, left, top, size, size).to_image())
}

/// The whole evaluation preprocessing of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalTransform {
    pub resize: u32,
    pub crop: u32,
    pub interpolation: Interpolation,
    pub normalization: Normalization,
}

impl Default for EvalTransform {
    /// The FairNAS protocol: bilinear resize to 256, crop 224, ImageNet statistics.
    fn default() -> Self {
        EvalTransform {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
            normalization: Normalization::Imagenet,
        }
    }
}

impl EvalTransform {
    /// CHW f32 values of an already decoded image.
    pub fn apply_image(&self, img: &RgbImage, path: &Path) -> Result<Vec<f32>, DataError> {
        let resized = resize_shorter_side(img, self.resize, self.interpolation);
        let (width, height) = resized.dimensions();
        let crop = center_crop(&resized, self.crop).ok_or(DataError::TooSmall {
            path: path.into(),
            width,
            height,
            crop: self.crop,
        })?;
        Ok(self.normalization.to_chw(&crop))
    }

    /// Decodes and transforms one file.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>, DataError> {
        self.apply_image(&load_rgb(path)?, path)
    }

    /// The preprocessing as key/value pairs for an exported model's metadata (ONNX
    /// `metadata_props`), so a deployer can reproduce it: resize the shorter side to `resize`
    /// with `interpolation`, center-crop `crop`, RGB planes (NCHW), then `(x / 255 - mean) /
    /// std` per channel (`mean` and `std` are given for every normalisation in that form).
    pub fn metadata(&self) -> Vec<(String, String)> {
        let (name, mean, std) = match self.normalization {
            Normalization::Imagenet => ("imagenet", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            // (x - 127) / 128 on 0..255 is (x / 255 - 127 / 255) / (128 / 255).
            Normalization::Inception => ("inception", [127.0 / 255.0; 3], [128.0 / 255.0; 3]),
            Normalization::Custom { mean, std } => ("custom", mean, std),
        };
        let list = |v: [f32; 3]| v.map(|x| format!("{x}")).join(",");
        let interpolation = match self.interpolation {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        };
        [
            ("preprocessing.resize_shorter_side", self.resize.to_string()),
            ("preprocessing.center_crop", self.crop.to_string()),
            ("preprocessing.interpolation", interpolation.to_string()),
            ("preprocessing.channel_order", "RGB, NCHW".to_string()),
            ("preprocessing.normalization", name.to_string()),
            ("preprocessing.mean", list(mean)),
            ("preprocessing.std", list(std)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_reproduces_each_normalisation() {
        for n in [Normalization::Imagenet, Normalization::Inception, Normalization::CIFAR10] {
            let t = EvalTransform { normalization: n, ..Default::default() };
            let meta: std::collections::HashMap<_, _> = t.metadata().into_iter().collect();
            let parse = |k: &str| -> Vec<f32> { meta[k].split(',').map(|v| v.parse().unwrap()).collect() };
            let (mean, std) = (parse("preprocessing.mean"), parse("preprocessing.std"));
            for v in [0u8, 37, 127, 200, 255] {
                for c in 0..3 {
                    let want = n.apply(v, c);
                    let got = (v as f32 / 255.0 - mean[c]) / std[c];
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{n:?} {v} {c}: {got} vs {want}"
                    );
                }
            }
            assert_eq!(meta["preprocessing.center_crop"], "224");
        }
    }

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(16.0), 16);
        assert_eq!(round_half_even(16.4), 16);
    }

    #[test]
    fn shorter_side_and_crop_geometry() {
        let img = RgbImage::new(500, 375);
        let r = resize_shorter_side(&img, 256, Interpolation::Bilinear);
        assert_eq!(r.dimensions(), (341, 256)); // int(256 * 500 / 375) = 341
        let c = center_crop(&r, 224).unwrap();
        assert_eq!(c.dimensions(), (224, 224));
        assert!(center_crop(&RgbImage::new(100, 300), 224).is_none());
    }

    #[test]
    fn normalisations() {
        assert_eq!(Normalization::Inception.apply(255, 0), 1.0);
        assert!((Normalization::Imagenet.apply(0, 0) + 0.485 / 0.229).abs() < 1e-6);
    }
}
