//! `fairnas nas`: the config file and flags to a [`NasConfig`], then
//! [`fairnas_search::pipeline::run`] with banners, bars and lines on stderr.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fairnas_search::pipeline::{NasConfig, NasObserver};
use fairnas_search::run::SearchObserver;
use fairnas_supernet::TrainObserver;

#[derive(Args, Debug)]
pub struct NasArgs {
    /// Pipeline settings (JSON, any subset of the fields of `nas-config.json`); flags override.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data folder (default: the embedded CIFAR-10 subset, data/cifar10-nas).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Output folder (default: runs/nas).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Supernet training epochs.
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
}

/// Banners, the training bar and the search spinner.
struct Progress;

impl NasObserver for Progress {
    fn stage(&mut self, n: usize, title: &str) {
        eprintln!("\n== stage {n}/7: {title}");
    }

    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn train(&mut self) -> Box<dyn TrainObserver + '_> {
        Box::new(crate::train::BarObserver::new(false))
    }

    fn search(&mut self) -> Box<dyn SearchObserver + '_> {
        Box::new(crate::search::Progress::new(false))
    }
}

impl NasArgs {
    fn config(self) -> Result<NasConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a nas config", path.display()))?
            }
            None => NasConfig::default(),
        };
        if let Some(d) = self.data {
            config.data = d;
        }
        if let Some(o) = self.out {
            config.out = o;
        }
        if let Some(e) = self.epochs {
            config.supernet.epochs = e;
        }
        if let Some(s) = self.seed {
            config.seed = s;
        }
        Ok(config)
    }
}

pub fn run_nas(args: NasArgs) -> Result<()> {
    let started = Instant::now();
    let config = args.config()?;
    if !config.data.is_dir() {
        bail!(
            "data folder {} not found (run from the repository root, or pass --data DIR)",
            config.data.display()
        );
    }
    let summary = fairnas_search::pipeline::run(&config, &mut Progress)?;
    println!(
        "\nFairNAS pipeline done in {:.0} s: {} models exported, report {}",
        started.elapsed().as_secs_f64(),
        summary.models.len(),
        summary.report.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `configs/nas/default.json` spells out the built-in defaults (the README points to it).
    #[test]
    fn the_shipped_default_config_is_the_built_in_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/nas/default.json");
        let shipped: NasConfig = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(shipped, NasConfig::default());
    }
}
