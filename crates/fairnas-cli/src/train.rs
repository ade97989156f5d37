//! `fairnas train-supernet`, `fairnas train` and `fairnas eval-subnet`.
//!
//! A run's settings come from built-in defaults, then `--config FILE.json` (any subset of
//! [`TrainConfig`]'s fields), then the flags given on the command line, in that order.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use fairnas_model::search_space::SearchSpace;
use fairnas_supernet::images::{evaluate_subnet, SubnetSelection};
use fairnas_supernet::trainer::{EpochMetrics, StepReport, TrainConfig, TrainObserver, TrainOverrides};
use fairnas_supernet::world::World;

/// Flags shared by `train-supernet` and `train`.
#[derive(Args, Debug, Clone)]
pub struct CommonTrainArgs {
    /// Output folder: config.json, checkpoint.safetensors, state.json, metrics.jsonl.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// JSON file with any of the run's settings (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (bit-identical to never stopping).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    overrides: TrainOverrides,
    /// Print the summary as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct TrainSupernetArgs {
    /// Search space: nas-bench-macro (8 x 3, 32x32) or fairnas (19 x 6, 224x224).
    #[arg(long)]
    space: Option<String>,
    /// Path sampler: strict (FairNAS), uniform (SPOS) or expectation.
    #[arg(long)]
    sampler: Option<String>,
    /// How the m paths' gradients of shared layers combine: sum (default, the paper's
    /// Algorithm 1) or mean.
    #[arg(long)]
    shared_gradient: Option<String>,
    #[command(flatten)]
    common: CommonTrainArgs,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The network: a model name (fairnas-a-se-1.0-transfer), block strings
    /// ("ds_r1_k3_s1_c16 ir_r2_k5_s2_e6_c40 ..."), or choice digits of --space (12012012).
    #[arg(long)]
    arch: String,
    /// Space of --arch's choice digits.
    #[arg(long)]
    space: Option<String>,
    /// CIFAR-10 head (10 classes) for a model name or block strings.
    #[arg(long)]
    transfer: bool,
    /// Skip the held-out evaluation after each epoch.
    #[arg(long)]
    no_eval: bool,
    /// Start from these weights (canonical names, e.g. `fairnas export`'s weights.safetensors)
    /// instead of the seeded initialisation.
    #[arg(long, value_name = "FILE")]
    init_weights: Option<PathBuf>,
    #[command(flatten)]
    common: CommonTrainArgs,
}

fn base_config(common: &CommonTrainArgs) -> Result<TrainConfig> {
    Ok(TrainConfig::base(common.config.as_deref(), &common.out, common.resume)?)
}

pub fn run_train_supernet(args: TrainSupernetArgs, world: &dyn World) -> Result<()> {
    let mut config = base_config(&args.common)?;
    if let Some(s) = args.space {
        config.space = SearchSpace::named(&s)?;
    }
    if let Some(s) = args.sampler {
        config.sampler = s;
    }
    if let Some(s) = args.shared_gradient {
        config.shared_gradient = s;
    }
    args.common.overrides.apply(&mut config);
    execute(config, &args.common, world)
}

pub fn run_train(args: TrainArgs, world: &dyn World) -> Result<()> {
    let mut config = base_config(&args.common)?;
    config.arch = Some(args.arch);
    config.sampler = "fixed".into();
    config.transfer = args.transfer;
    config.eval_every_epoch = !args.no_eval;
    if args.init_weights.is_some() {
        config.init_weights = args.init_weights;
    }
    if let Some(s) = args.space {
        config.space = SearchSpace::named(&s)?;
    }
    args.common.overrides.apply(&mut config);
    execute(config, &args.common, world)
}

fn execute(config: TrainConfig, common: &CommonTrainArgs, world: &dyn World) -> Result<()> {
    if config.data.as_os_str().is_empty() {
        bail!("no training data: pass --data DIR (a folder with train/ and test/, or CIFAR-10 batches)");
    }
    let mut observer = BarObserver::new(common.json || !world.is_leader());
    let summary =
        fairnas_supernet::images::run_in(world, &config, &common.out, common.resume, &mut observer)?;
    observer.finish();
    if !world.is_leader() {
        return Ok(());
    }
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
        if !summary.finished {
            println!("stopped before the end of the schedule: continue with --resume");
        }
    }
    Ok(())
}

/// Progress bar with loss, accuracy and images/s; epoch lines on stderr.
pub(crate) struct BarObserver {
    bar: indicatif::ProgressBar,
    quiet: bool,
    loss_ema: Option<f64>,
}

impl BarObserver {
    pub(crate) fn new(quiet: bool) -> Self {
        let bar = indicatif::ProgressBar::hidden();
        BarObserver { bar, quiet, loss_ema: None }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl TrainObserver for BarObserver {
    fn started(&mut self, total: u64, first: u64, description: &str) {
        if self.quiet {
            return;
        }
        self.bar = indicatif::ProgressBar::new(total);
        self.bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} steps  eta {eta}  {msg}")
                .expect("valid template"),
        );
        self.bar.set_prefix(description.to_string());
        self.bar.set_position(first);
    }

    fn step(&mut self, r: &StepReport) {
        let ema = match self.loss_ema {
            Some(e) => 0.9 * e + 0.1 * r.loss,
            None => r.loss,
        };
        self.loss_ema = Some(ema);
        self.bar.set_position(r.step);
        self.bar.set_message(format!(
            "epoch {}  loss {ema:.3}  top-1 {:.1}%  lr {:.4}  {:.0} img/s",
            r.epoch,
            100.0 * r.top1,
            r.lr,
            r.images_per_s
        ));
    }

    fn epoch(&mut self, m: &EpochMetrics) {
        if self.quiet {
            return;
        }
        let eval = m.eval_top1.map(|t| format!("  held-out top-1 {:.2}%", 100.0 * t)).unwrap_or_default();
        self.bar.println(format!(
            "epoch {}: loss {:.4}  train top-1 {:.2}%  {:.1} img/s  {:.0} s{eval}",
            m.epoch,
            m.train_loss,
            100.0 * m.train_top1,
            m.images_per_s,
            m.wall_s
        ));
    }

    fn message(&mut self, text: &str) {
        if !self.quiet {
            self.bar.println(text);
            if self.bar.is_hidden() {
                eprintln!("{text}");
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct EvalSubnetArgs {
    #[command(flatten)]
    subnet: SubnetSelection,
    /// Held-out split to score on.
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Score on a fixed subset of N held-out images.
    #[arg(long, value_name = "N")]
    eval_limit: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run_eval_subnet(args: EvalSubnetArgs) -> Result<()> {
    let result = evaluate_subnet(&args.subnet, &args.split, args.batch_size, args.eval_limit)?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&result)?),
        false => println!("{result}"),
    }
    Ok(())
}
