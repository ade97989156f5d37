//! `fairnas export`: one sub-network of a trained supernet as a stand-alone model: its
//! inherited weights under canonical names (after BN recalibration, so the running statistics
//! are the sub-network's own) and a small description with the flags that load it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use fairnas_model::cost::cost_report;
use fairnas_model::network::Network;
use fairnas_model::persist::write_atomically;
use fairnas_search::one_shot::block_strings;

use crate::one_shot::SubnetArgs;
use fairnas_supernet::images::LoadedSubnet;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    subnet: SubnetArgs,
    /// Output folder: weights.safetensors and model.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run_export(args: ExportArgs) -> Result<()> {
    let LoadedSubnet { checkpoint: ckpt, supernet, state, space, path, recalibrated, .. } =
        args.subnet.load()?;
    let spec = space.subnet(&path).map_err(anyhow::Error::msg)?;
    let choices = &args.subnet.choices;
    let weights = supernet.subnet_weights(&path)?;
    // What `info`, `predict` and `train` will load must be exactly the spec's tensors.
    Network::check_tensors(&spec, &weights)
        .context("exported tensors do not match the sub-network's spec")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let weights_path = args.out.join("weights.safetensors");
    let bytes = safetensors::serialize(weights.iter().map(|(k, v)| (k.as_str(), v)), None)?;
    write_atomically(&weights_path, &bytes)?;
    let cost = cost_report(&spec);
    let model_flags = if space.name == "fairnas" {
        format!("--choices {}", choices)
    } else {
        format!("--space {} --choices {}", space.name, choices)
    };
    let description = serde_json::json!({
        "space": space.name,
        "choices": choices,
        "blocks": block_strings(&space, &path).map_err(anyhow::Error::msg)?,
        "params": cost.params,
        "madds": cost.madds,
        "weights": weights_path,
        "model_flags": model_flags,
        "supernet": ckpt,
        "supernet_steps": state.step,
        "sampler": state.sampler,
        "bn_recal_batches": recalibrated,
    });
    write_atomically(&args.out.join("model.json"), serde_json::to_string_pretty(&description)?.as_bytes())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&description)?);
    } else {
        println!(
            "{} {} ({} params, {} multiply-adds, BN recalibrated on {recalibrated} batches) -> {}",
            space.name,
            choices,
            cost.params,
            cost.madds,
            weights_path.display()
        );
        println!("  fairnas info {model_flags}");
        println!("  fairnas predict {model_flags} --weights {} IMAGE...", weights_path.display());
        println!(
            "  fairnas train --space {} --arch {} --init-weights {} ...",
            space.name,
            choices,
            weights_path.display()
        );
    }
    Ok(())
}
