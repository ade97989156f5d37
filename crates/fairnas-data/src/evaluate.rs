//! A model on a labelled dataset with the original evaluation protocol (docs/FAIRNAS.md
//! section 4): the per-family preprocessing ([`eval_transform`]), top-1 / top-5 overall and per
//! class ([`Tally`]), and classifying single photos ([`classify`]). What `fairnas verify`,
//! `transfer-verify` and `predict` run.
//!
//! The network comes from `fairnas-model`: this module is why `fairnas-data` depends on it
//! (the preprocessing is a property of a model family, as timm's data config is).
//!
//! ```no_run
//! use candle_core::Device;
//! use fairnas_data::evaluate::{classify, eval_transform};
//! use fairnas_model::selection::ModelSelection;
//! use fairnas_model::weights::{load_network, CheckpointSource};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = ModelSelection::named("efficientnet-lite0").resolve()?;
//! // A PyTorch checkpoint, read without Python and mapped onto the spec's names.
//! let net = load_network("efficientnet-lite0-57934424.pth", &spec, &CheckpointSource::default(), &Device::Cpu)?;
//! // Lite0's own preprocessing (bicubic, inception scaling), then the top-5 classes.
//! let photos = vec!["data/images/n07920052_espresso.JPEG".into()];
//! for p in classify(&spec, &net, &photos, eval_transform(&spec, None, None), 16, 5)? {
//!     println!("{}: {:?}", p.image.display(), p.top[0]);
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use fairnas_model::network::Network;
use fairnas_model::spec::{ArchSpec, Padding};
use serde::{Deserialize, Serialize};

use crate::{
    DataError, Dataset, EvalLoader, EvalTransform, Interpolation, Normalization, OnBadImage, Sample, Source,
};

/// Why an evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("the batch size must be at least 1")]
    BatchSize,
    #[error("the dataset has {found} classes but model {model} has {outputs} outputs")]
    Classes { found: usize, model: String, outputs: usize },
    /// An image could not be decoded (and bad images were not to be skipped).
    #[error("evaluation stopped: {0}")]
    Image(#[source] DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The preprocessing a model's checkpoints were trained with (bilinear + ImageNet statistics
/// for FairNAS, bicubic + inception scaling for the TF-SAME EfficientNet-Lite family), with the
/// user's overrides.
pub fn eval_transform(
    spec: &ArchSpec,
    interpolation: Option<Interpolation>,
    normalize: Option<Normalization>,
) -> EvalTransform {
    let mut t = if spec.input_size <= 64 {
        // A network trained here at CIFAR resolution (a NAS-Bench-Macro sub-network): its own
        // size and the recipe's CIFAR-10 statistics, as one-shot scoring feeds it. (The
        // published transfer models run at 224 on upsampled images.)
        let size = spec.input_size as u32;
        EvalTransform {
            resize: size,
            crop: size,
            interpolation: Interpolation::Bilinear,
            normalization: Normalization::CIFAR10,
        }
    } else if spec.stem_padding == Padding::TfSame {
        EvalTransform {
            interpolation: Interpolation::Bicubic,
            normalization: Normalization::Inception,
            ..Default::default()
        }
    } else {
        EvalTransform::default()
    };
    if let Some(i) = interpolation {
        t.interpolation = i;
    }
    if let Some(n) = normalize {
        t.normalization = n;
    }
    t
}

/// Accuracy counts, overall and per class.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub images: usize,
    pub top1: usize,
    pub top5: usize,
    /// Per class: (images, top-1 correct, top-5 correct).
    pub per_class: Vec<(usize, usize, usize)>,
}

/// Rank of the true class among the logits, breaking ties by class index as a stable
/// descending sort does (0 = top-1).
pub fn rank_of(logits: &[f32], label: usize) -> usize {
    let y = logits[label];
    logits.iter().enumerate().filter(|&(j, &v)| v > y || (v == y && j < label)).count()
}

impl Tally {
    pub fn new(classes: usize) -> Self {
        Tally { per_class: vec![(0, 0, 0); classes], ..Default::default() }
    }

    pub fn add(&mut self, logits: &[f32], label: usize) {
        let rank = rank_of(logits, label);
        self.images += 1;
        self.top1 += (rank < 1) as usize;
        self.top5 += (rank < 5) as usize;
        let c = &mut self.per_class[label];
        c.0 += 1;
        c.1 += (rank < 1) as usize;
        c.2 += (rank < 5) as usize;
    }

    /// `n` of `of` in percent (0 when `of` is 0).
    pub fn percent(n: usize, of: usize) -> f64 {
        if of == 0 {
            0.0
        } else {
            100.0 * n as f64 / of as f64
        }
    }

    /// Per-class accuracy as CSV (classes with images only); `wnid` names ImageNet classes.
    pub fn per_class_csv(&self, classes: usize) -> String {
        let mut text = String::from("class,wnid,name,images,top1_correct,top5_correct,top1,top5\n");
        for (c, &(n, t1, t5)) in self.per_class.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let wnid = if classes == 1000 { crate::dataset::imagenet_wnid(c).unwrap_or("") } else { "" };
            let name = crate::classes::class_name(classes, c).replace('"', "'");
            text.push_str(&format!(
                "{c},{wnid},\"{name}\",{n},{t1},{t5},{:.4},{:.4}\n",
                Tally::percent(t1, n),
                Tally::percent(t5, n)
            ));
        }
        text
    }
}

/// `samples` decoded and preprocessed as [`evaluate`] does for `spec` (its family's rule,
/// [`eval_transform`]), `batch` at a time: `[n, 3, crop, crop]` f32 CPU tensors with their
/// labels. For checks that run the same photos through several devices.
pub fn preprocessed_batches(
    spec: &ArchSpec,
    samples: Vec<Sample>,
    batch: usize,
) -> Result<Vec<(Tensor, Vec<u32>)>, EvalError> {
    if batch == 0 {
        return Err(EvalError::BatchSize);
    }
    let transform = eval_transform(spec, None, None);
    let crop = transform.crop as usize;
    let mut batches = Vec::new();
    for b in EvalLoader::new(samples, transform, batch, 2, OnBadImage::Fail) {
        let b = b.map_err(EvalError::Image)?;
        let x = Tensor::from_vec(b.pixels, (b.indices.len(), 3, crop, crop), &Device::Cpu)?;
        batches.push((x, b.labels.iter().map(|&l| l as u32).collect()));
    }
    Ok(batches)
}

/// How to run an evaluation. With the `clap` feature, a `clap::Args` group.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct EvalOptions {
    /// Images per forward pass (results do not depend on it).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 64))]
    pub batch_size: usize,
    /// Resize filter; default bilinear (FairNAS protocol), bicubic for efficientnet-lite0.
    #[cfg_attr(feature = "clap", arg(long))]
    pub interpolation: Option<Interpolation>,
    /// Input normalisation; default imagenet, inception for efficientnet-lite0.
    #[cfg_attr(feature = "clap", arg(long))]
    pub normalize: Option<Normalization>,
    /// Evaluate only the first N images (in sorted order).
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub limit: Option<usize>,
    /// What to do with an undecodable image: fail (default) or skip (counted and listed).
    #[cfg_attr(feature = "clap", arg(long, default_value = "fail", value_name = "fail|skip"))]
    pub on_bad_image: OnBadImage,
}

/// The dataset an evaluation ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub images: usize,
    pub layout: String,
    pub root: String,
}

/// An image left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub error: String,
    pub image: String,
}

/// What an evaluation measured (`fairnas verify --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub batch_size: usize,
    pub dataset: DatasetInfo,
    pub decode_s: f64,
    pub evaluated: usize,
    pub images_per_s: f64,
    pub model: String,
    pub network_s: f64,
    pub network_share: f64,
    pub skipped: Vec<Skipped>,
    pub top1: f64,
    pub top1_correct: usize,
    pub top5: f64,
    pub top5_correct: usize,
    pub waiting_for_data_s: f64,
    pub wall_s: f64,
    #[serde(skip)]
    pub tally: Tally,
}

/// The human report: accuracy, skipped images, where the time went.
impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.dataset;
        writeln!(f, "model {}  dataset {} ({}, {} images)", self.model, d.root, d.layout, d.images)?;
        writeln!(
            f,
            "top-1 {:.3}%  top-5 {:.3}%  ({} / {} / {} images)",
            self.top1, self.top5, self.top1_correct, self.top5_correct, self.evaluated
        )?;
        if !self.skipped.is_empty() {
            writeln!(f, "skipped {} unreadable image(s):", self.skipped.len())?;
            for s in &self.skipped {
                writeln!(f, "  {}: {}", s.image, s.error)?;
            }
        }
        write!(
            f,
            "wall {:.2} s, {:.1} images/s; network {:.1} s, decoding {:.1} s (in the background), waiting for data {:.1} s",
            self.wall_s, self.images_per_s, self.network_s, self.decode_s, self.waiting_for_data_s
        )
    }
}

/// Evaluates `net` (the network of `spec`) on `dataset` found at `root`; `progress` sees the
/// running tally and the images done after every batch.
pub fn evaluate(
    spec: &ArchSpec,
    net: &Network,
    dataset: Dataset,
    root: &Path,
    options: &EvalOptions,
    progress: &mut dyn FnMut(&Tally, usize),
) -> Result<Evaluation, EvalError> {
    if options.batch_size == 0 {
        return Err(EvalError::BatchSize);
    }
    if dataset.num_classes > spec.classes {
        return Err(EvalError::Classes {
            found: dataset.num_classes,
            model: spec.name.clone(),
            outputs: spec.classes,
        });
    }
    let dataset = match options.limit {
        Some(n) => dataset.limit(n),
        None => dataset,
    };
    for path in &dataset.ignored {
        tracing::warn!(path = %path.display(), "not an image file; ignored");
    }
    let transform = eval_transform(spec, options.interpolation, options.normalize);
    let paths: Vec<String> = dataset.samples.iter().map(|s| s.source.describe()).collect();
    let info = DatasetInfo {
        images: dataset.len(),
        layout: dataset.layout.clone(),
        root: root.display().to_string(),
    };
    let crop = transform.crop as usize;
    let started = Instant::now();
    let mut tally = Tally::new(spec.classes);
    let mut skipped = Vec::new();
    let (mut network_time, mut decode_time, mut waiting) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut waited_from = Instant::now();
    let mut done = 0;
    for batch in EvalLoader::new(dataset.samples, transform, options.batch_size, 2, options.on_bad_image) {
        waiting += waited_from.elapsed();
        let batch = batch.map_err(EvalError::Image)?;
        decode_time += batch.decode_time;
        for (index, error) in &batch.skipped {
            tracing::warn!(image = %paths[*index], %error, "skipped");
            skipped.push(Skipped { image: paths[*index].clone(), error: error.to_string() });
        }
        if !batch.is_empty() {
            let t = Instant::now();
            let x = Tensor::from_vec(batch.pixels, (batch.labels.len(), 3, crop, crop), &Device::Cpu)?
                .to_device(net.device())?;
            let logits = net.forward(&x)?.to_vec2::<f32>()?;
            network_time += t.elapsed();
            for (row, &label) in logits.iter().zip(&batch.labels) {
                tally.add(row, label);
            }
        }
        done += batch.labels.len() + batch.skipped.len();
        progress(&tally, done);
        waited_from = Instant::now();
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(Evaluation {
        batch_size: options.batch_size,
        dataset: info,
        decode_s: decode_time.as_secs_f64(),
        evaluated: tally.images,
        images_per_s: tally.images as f64 / wall,
        model: spec.name.clone(),
        network_s: network_time.as_secs_f64(),
        network_share: network_time.as_secs_f64() / wall.max(1e-9),
        skipped,
        top1: Tally::percent(tally.top1, tally.images),
        top1_correct: tally.top1,
        top5: Tally::percent(tally.top5, tally.images),
        top5_correct: tally.top5,
        waiting_for_data_s: waiting.as_secs_f64(),
        wall_s: wall,
        tally,
    })
}

/// The `topk` most likely classes of one photo: (class index, name, probability).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub image: PathBuf,
    pub top: Vec<(usize, String, f32)>,
}

/// Classifies `images` with `net` (the network of `spec`), preprocessed by `transform`.
pub fn classify(
    spec: &ArchSpec,
    net: &Network,
    images: &[PathBuf],
    transform: EvalTransform,
    batch_size: usize,
    topk: usize,
) -> Result<Vec<Prediction>, EvalError> {
    if batch_size == 0 {
        return Err(EvalError::BatchSize);
    }
    let topk = topk.min(spec.classes);
    let crop = transform.crop as usize;
    let samples = images.iter().map(|p| Sample { source: Source::File(p.clone()), label: 0 }).collect();
    let mut results = Vec::new();
    for batch in EvalLoader::new(samples, transform, batch_size, 2, OnBadImage::Fail) {
        let batch = batch.map_err(EvalError::Image)?;
        let x = Tensor::from_vec(batch.pixels, (batch.indices.len(), 3, crop, crop), net.device())?;
        let started = Instant::now();
        let probs = candle_nn::ops::softmax_last_dim(&net.forward(&x)?)?.to_vec2::<f32>()?;
        tracing::info!(images = batch.indices.len(), elapsed = ?started.elapsed(), "batch classified");
        for (&index, p) in batch.indices.iter().zip(probs) {
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let top = order[..topk]
                .iter()
                .map(|&i| (i, crate::classes::class_name(spec.classes, i), p[i]))
                .collect();
            results.push(Prediction { image: images[index].clone(), top });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_breaks_ties_by_index() {
        assert_eq!(rank_of(&[0.1, 0.9, 0.5], 1), 0);
        assert_eq!(rank_of(&[0.1, 0.9, 0.5], 2), 1);
        assert_eq!(rank_of(&[0.5, 0.5, 0.5], 0), 0);
        assert_eq!(rank_of(&[0.5, 0.5, 0.5], 2), 2);
        let mut t = Tally::new(3);
        t.add(&[0.1, 0.9, 0.5], 2);
        t.add(&[0.1, 0.9, 0.5], 1);
        assert_eq!((t.images, t.top1, t.top5), (2, 1, 2));
        assert_eq!(t.per_class[2], (1, 0, 1));
    }
}
