//! `fairnas verify` (ImageNet) and `fairnas transfer-verify` (CIFAR-10): accuracy of a model on
//! a labelled dataset with the original evaluation protocol ([`fairnas_data::evaluate`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use fairnas_data::evaluate::{self, EvalOptions, Tally};
use fairnas_data::Dataset;
use fairnas_model::network::Network;
use fairnas_model::spec::ArchSpec;

use crate::weights::{load_network, WeightsArgs};
use fairnas_model::selection::ModelSelection;

/// Options shared by `verify` and `transfer-verify`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub options: EvalOptions,
    /// cpu, or cuda (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Write per-class accuracy to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub per_class_csv: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub model: ModelSelection,
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
    pub eval: EvalArgs,
}

#[derive(Args, Debug)]
pub struct TransferVerifyArgs {
    #[command(flatten)]
    pub model: ModelSelection,
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
    pub eval: EvalArgs,
}

use crate::device::parse_device as device;

/// Runs the evaluation with a progress bar and prints the report.
fn evaluate(spec: &ArchSpec, net: &Network, dataset: Dataset, eval: &EvalArgs, root: &Path) -> Result<()> {
    let progress = indicatif::ProgressBar::new(dataset.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  {per_sec}  eta {eta}  top-1 {msg}",
        )
        .expect("valid template"),
    );
    if eval.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut show = |tally: &Tally, done: usize| {
        progress.set_position(done as u64);
        progress.set_message(format!("{:.2}%", Tally::percent(tally.top1, tally.images)));
    };
    let e = evaluate::evaluate(spec, net, dataset, root, &eval.options, &mut show)?;
    progress.finish_and_clear();
    if let Some(csv) = &eval.per_class_csv {
        fairnas_model::persist::write_atomically(csv, e.tally.per_class_csv(spec.classes).as_bytes())?;
    }
    if eval.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    println!("{e}");
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
    evaluate(&spec, &net, dataset, &args.eval, root)
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
    evaluate(&spec, &net, dataset, &args.eval, &args.cifar_root)
}
