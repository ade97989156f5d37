//! `fairnas verify` (ImageNet) and `fairnas transfer-verify` (CIFAR-10): accuracy of a model on
//! a labelled dataset with the original evaluation protocol (FAIRNAS.md section 4).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use fairnas_data::classes::class_name;
use fairnas_data::dataset::imagenet_wnid;
use fairnas_data::{Dataset, EvalLoader, EvalTransform, Interpolation, Normalization, OnBadImage};
use fairnas_model::network::Network;
use fairnas_model::spec::{ArchSpec, Padding};
use serde_json::json;

use crate::model_args::ModelArgs;
use crate::weights::{load_network, WeightsArgs};

/// Options shared by `verify` and `transfer-verify`.
#[derive(Args, Debug, Clone)]
pub struct EvalOptions {
    /// Images per forward pass (results do not depend on it).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// cpu, or cuda (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Resize filter; default bilinear (FairNAS protocol), bicubic for efficientnet-lite0.
    #[arg(long)]
    pub interpolation: Option<Interpolation>,
    /// Input normalisation; default imagenet, inception for efficientnet-lite0.
    #[arg(long)]
    pub normalize: Option<Normalization>,
    /// Evaluate only the first N images (in sorted order).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Write per-class accuracy to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub per_class_csv: Option<PathBuf>,
    /// What to do with an undecodable image: fail (default) or skip (counted and listed).
    #[arg(long, default_value = "fail", value_name = "fail|skip")]
    pub on_bad_image: OnBadImage,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Validation images: <root>/<wnid or class>/* folders, a flat folder of <wnid>_*.JPEG, or
    /// the official flat folder with --ground-truth.
    #[arg(long, value_name = "DIR")]
    pub val_dataset_root: PathBuf,
    /// Ground-truth list of the official flat layout (`ILSVRC2012_val_00000001.JPEG 65` lines).
    #[arg(long, value_name = "val.txt")]
    pub ground_truth: Option<PathBuf>,
    /// Label a flat folder by the wnid that starts each file name (`n01440764_tench.JPEG`).
    #[arg(long)]
    pub labels_from_filename: bool,
    #[command(flatten)]
    pub eval: EvalOptions,
}

#[derive(Args, Debug)]
pub struct TransferVerifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// CIFAR-10: a folder with the binary batches (or cifar-10-batches-bin/) or the JPEG tree
    /// <root>/<split>/<class>/*.
    #[arg(long, value_name = "DIR")]
    pub cifar_root: PathBuf,
    /// Which split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    #[command(flatten)]
    pub eval: EvalOptions,
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
        // A network trained here at CIFAR resolution (`fairnas train`, `export` of a
        // NAS-Bench-Macro sub-network): its own size and the recipe's CIFAR-10 statistics, as
        // `eval-subnet` feeds it. (The published transfer models run at 224 on upsampled images.)
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

use crate::device::parse_device as device;

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
fn rank_of(logits: &[f32], label: usize) -> usize {
    let y = logits[label];
    logits.iter().enumerate().filter(|&(j, &v)| v > y || (v == y && j < label)).count()
}

impl Tally {
    fn new(classes: usize) -> Self {
        Tally { per_class: vec![(0, 0, 0); classes], ..Default::default() }
    }

    fn add(&mut self, logits: &[f32], label: usize) {
        let rank = rank_of(logits, label);
        self.images += 1;
        self.top1 += (rank < 1) as usize;
        self.top5 += (rank < 5) as usize;
        let c = &mut self.per_class[label];
        c.0 += 1;
        c.1 += (rank < 1) as usize;
        c.2 += (rank < 5) as usize;
    }

    fn percent(n: usize, of: usize) -> f64 {
        if of == 0 {
            0.0
        } else {
            100.0 * n as f64 / of as f64
        }
    }
}

/// Runs the evaluation and prints the report.
fn evaluate(spec: &ArchSpec, net: &Network, dataset: Dataset, eval: &EvalOptions, root: &str) -> Result<()> {
    anyhow::ensure!(eval.batch_size > 0, "--batch-size must be at least 1");
    if dataset.num_classes > spec.classes {
        bail!(
            "the dataset has {} classes but model {} has {} outputs",
            dataset.num_classes,
            spec.name,
            spec.classes
        );
    }
    let dataset = match eval.limit {
        Some(n) => dataset.limit(n),
        None => dataset,
    };
    for path in &dataset.ignored {
        tracing::warn!(path = %path.display(), "not an image file; ignored");
    }
    let transform = eval_transform(spec, eval.interpolation, eval.normalize);
    let paths: Vec<String> = dataset.samples.iter().map(|s| s.source.describe()).collect();
    let total = dataset.len();
    let layout = dataset.layout.clone();
    let crop = transform.crop as usize;
    let started = Instant::now();
    let progress = indicatif::ProgressBar::new(total as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  {per_sec}  eta {eta}  top-1 {msg}",
        )
        .expect("valid template"),
    );
    if eval.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tally = Tally::new(spec.classes);
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut network_time = Duration::ZERO;
    let mut decode_time = Duration::ZERO;
    let mut waiting = Duration::ZERO;
    let mut waited_from = Instant::now();
    let loader = EvalLoader::new(dataset.samples, transform, eval.batch_size, 2, eval.on_bad_image);
    for batch in loader {
        waiting += waited_from.elapsed();
        let batch = batch.context("evaluation stopped (use --on-bad-image skip to leave bad images out)")?;
        decode_time += batch.decode_time;
        for (index, error) in &batch.skipped {
            tracing::warn!(image = %paths[*index], %error, "skipped");
            skipped.push((paths[*index].clone(), error.to_string()));
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
        progress.inc((batch.labels.len() + batch.skipped.len()) as u64);
        progress.set_message(format!("{:.2}%", Tally::percent(tally.top1, tally.images)));
        waited_from = Instant::now();
    }
    progress.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let top1 = Tally::percent(tally.top1, tally.images);
    let top5 = Tally::percent(tally.top5, tally.images);
    let network_share = network_time.as_secs_f64() / wall.max(1e-9);

    if let Some(csv) = &eval.per_class_csv {
        let mut text = String::from("class,wnid,name,images,top1_correct,top5_correct,top1,top5\n");
        for (c, &(n, t1, t5)) in tally.per_class.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let wnid = if spec.classes == 1000 { imagenet_wnid(c).unwrap_or("") } else { "" };
            let name = class_name(spec.classes, c).replace('"', "'");
            text.push_str(&format!(
                "{c},{wnid},\"{name}\",{n},{t1},{t5},{:.4},{:.4}\n",
                Tally::percent(t1, n),
                Tally::percent(t5, n)
            ));
        }
        fairnas_model::persist::write_atomically(csv, text.as_bytes())?;
    }

    if eval.json {
        let out = json!({
            "model": spec.name,
            "dataset": {"root": root, "layout": layout, "images": total},
            "evaluated": tally.images,
            "top1": top1,
            "top5": top5,
            "top1_correct": tally.top1,
            "top5_correct": tally.top5,
            "skipped": skipped.iter().map(|(p, e)| json!({"image": p, "error": e})).collect::<Vec<_>>(),
            "wall_s": wall,
            "images_per_s": tally.images as f64 / wall,
            "network_share": network_share,
            "network_s": network_time.as_secs_f64(),
            "decode_s": decode_time.as_secs_f64(),
            "waiting_for_data_s": waiting.as_secs_f64(),
            "batch_size": eval.batch_size,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("model {}  dataset {root} ({layout}, {total} images)", spec.name);
        println!(
            "top-1 {top1:.3}%  top-5 {top5:.3}%  ({} / {} / {} images)",
            tally.top1, tally.top5, tally.images
        );
        if !skipped.is_empty() {
            println!("skipped {} unreadable image(s):", skipped.len());
            for (path, error) in &skipped {
                println!("  {path}: {error}");
            }
        }
        println!(
            "wall {wall:.2} s, {:.1} images/s; network {:.1} s, decoding {:.1} s (in the background), waiting for data {:.1} s",
            tally.images as f64 / wall,
            network_time.as_secs_f64(),
            decode_time.as_secs_f64(),
            waiting.as_secs_f64()
        );
    }
    Ok(())
}

pub fn run_verify(args: VerifyArgs) -> Result<()> {
    let spec = args.model.resolve()?;
    let device = device(&args.eval.device)?;
    let root = &args.val_dataset_root;
    let dataset = if let Some(gt) = &args.ground_truth {
        Dataset::flat_with_ground_truth(root, gt)?
    } else if args.labels_from_filename {
        Dataset::labels_from_filenames(root)?
    } else {
        Dataset::detect_imagenet(root)?
    };
    let net = load_network(&args.weights, &spec, &device)?;
    evaluate(&spec, &net, dataset, &args.eval, &root.display().to_string())
}

pub fn run_transfer_verify(args: TransferVerifyArgs) -> Result<()> {
    // The original transfer_verify.py is always about the CIFAR-10 heads: `--model fairnas-a-se
    // --se-ratio 1.0` means its transfer model here, without needing --transfer.
    let mut model = args.model.clone();
    model.transfer = true;
    let spec = model.resolve()?;
    if spec.classes != 10 {
        bail!(
            "model {} has {} classes; CIFAR-10 transfer models have 10 (add --transfer or use a *-transfer model)",
            spec.name,
            spec.classes
        );
    }
    let device = device(&args.eval.device)?;
    let dataset = Dataset::cifar10(&args.cifar_root, &args.split)?;
    let net = load_network(&args.weights, &spec, &device)?;
    evaluate(&spec, &net, dataset, &args.eval, &args.cifar_root.display().to_string())
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
