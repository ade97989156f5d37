//! `fairnas export`: one sub-network of a trained supernet as a stand-alone model: its
//! inherited weights under canonical names (after BN recalibration, so the running statistics
//! are the sub-network's own) and a small description with the flags that load it.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fairnas_search::export::{export_subnet, ExportSource};

use fairnas_supernet::images::{LoadedSubnet, SubnetSelection};

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    subnet: SubnetSelection,
    /// Output folder: weights.safetensors and model.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run_export(args: ExportArgs) -> Result<()> {
    let loaded: LoadedSubnet = args.subnet.load()?;
    let d = export_subnet(&ExportSource::from(&loaded), &loaded.path, &args.out)?;
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
