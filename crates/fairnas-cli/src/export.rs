//! `fairnas export`: one sub-network of a trained supernet as a stand-alone model: its
//! inherited weights under canonical names (after BN recalibration, so the running statistics
//! are the sub-network's own) and a small description with the flags that load it; with
//! `--format onnx` also as ONNX.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fairnas_data::deploy::onnx_options;
use fairnas_search::export::{export_subnet, ExportSource};

use crate::convert::Format;

use fairnas_supernet::images::{LoadedSubnet, SubnetSelection};

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    subnet: SubnetSelection,
    /// Output folder: weights.safetensors and model.json (and model.onnx with --format onnx).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// safetensors (canonical names, for fairnas), or onnx: also the network as a standard ONNX
    /// graph with its preprocessing in the metadata, for other runtimes.
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    format: Format,
    /// ONNX: fold BatchNorm into the convolutions (`--fold-bn false` keeps BatchNormalization).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    fold_bn: bool,
    #[arg(long)]
    json: bool,
}

pub fn run_export(args: ExportArgs) -> Result<()> {
    let loaded: LoadedSubnet = args.subnet.load()?;
    let onnx = match args.format {
        Format::Onnx => Some(onnx_options(&loaded.space.subnet(&loaded.path)?, args.fold_bn)),
        Format::Safetensors => None,
    };
    let d = export_subnet(&ExportSource::from(&loaded), &loaded.path, &args.out, onnx.as_ref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("{d}");
    println!("  fairnas info {}", d.model_flags);
    println!("  fairnas predict {} --weights {} IMAGE...", d.model_flags, d.weights.display());
    println!(
        "  fairnas train --space {} --arch {} --init-weights {} ...",
        d.space,
        d.choices,
        d.weights.display()
    );
    Ok(())
}
