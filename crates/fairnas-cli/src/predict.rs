//! `fairnas predict`: classify image files.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fairnas_data::{Interpolation, Normalization};
use serde_json::json;

use crate::weights::{load_network, WeightsArgs};
use fairnas_model::selection::ModelSelection;

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelSelection,
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Images to classify (JPEG or PNG).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Resize filter; default bilinear (FairNAS protocol), bicubic for efficientnet-lite0.
    #[arg(long)]
    pub interpolation: Option<Interpolation>,
    /// Input normalisation; default imagenet, inception for efficientnet-lite0.
    #[arg(long)]
    pub normalize: Option<Normalization>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// cpu, or cuda / cuda:N (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PredictArgs) -> Result<()> {
    anyhow::ensure!(args.topk > 0, "--topk must be at least 1");
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let spec = args.model.resolve()?;
    let device = crate::device::parse_device(&args.device)?;
    let started = std::time::Instant::now();
    let net = load_network(&args.weights, &spec, &device)?;
    tracing::info!(model = %spec.name, weights = %args.weights.weights, elapsed = ?started.elapsed(), "weights loaded");
    let transform = fairnas_data::evaluate::eval_transform(&spec, args.interpolation, args.normalize);
    let results =
        fairnas_data::evaluate::classify(&spec, &net, &args.images, transform, args.batch_size, args.topk)?;
    let results: Vec<_> = results.into_iter().map(|p| (p.image, p.top)).collect();
    if args.json {
        let out: Vec<_> = results
            .iter()
            .map(|(path, top)| {
                json!({
                    "image": path.display().to_string(),
                    "top": top.iter().map(|(i, n, p)| json!({"index": i, "name": n, "probability": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({"model": spec.name, "predictions": out}))?);
    } else {
        for (path, top) in results {
            println!("{}", path.display());
            for (rank, (i, name, p)) in top.iter().enumerate() {
                println!("  {:>2}. {:>4} {:<32} {:>7.3}%", rank + 1, i, name, p * 100.0);
            }
        }
    }
    Ok(())
}
