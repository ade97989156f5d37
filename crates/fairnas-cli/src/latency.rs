//! `fairnas latency-table`: time every candidate block of a search space on this machine and
//! check how well the table predicts measured end-to-end latency.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use fairnas_model::persist::write_atomically;
use fairnas_model::search_space::SearchSpace;
use fairnas_search::latency::measure_space;

#[derive(Args, Debug)]
pub struct LatencyTableArgs {
    /// Search space: fairnas or nas-bench-macro.
    #[arg(long)]
    space: String,
    /// Device to time on (cpu only for now: the supernet's training-side pointwise and BN ops
    /// have no CUDA kernels yet).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed runs per entry (the median counts).
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// Random architectures measured end to end to report the table's error (MAPE).
    #[arg(long, default_value_t = 20)]
    check: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The table (JSON).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run_latency_table(args: LatencyTableArgs) -> Result<()> {
    if args.device != "cpu" {
        bail!(
            "--device {}: latency tables are timed on the cpu only (the supernet's pointwise and \
             training BN ops have no CUDA kernels yet)",
            args.device
        );
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let space = SearchSpace::named(&args.space)?;
    let quiet = args.json;
    let table = measure_space(&space, (args.batch, args.repeats, args.check), args.seed, |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    write_atomically(&args.out, serde_json::to_string_pretty(&table)?.as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
    } else {
        println!("{table}");
        println!("  -> {}", args.out.display());
    }
    Ok(())
}
