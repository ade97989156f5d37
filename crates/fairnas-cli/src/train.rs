//! `fairnas train-supernet`, `fairnas train` and `fairnas eval-subnet`.
//!
//! A run's settings come from built-in defaults, then `--config FILE.json` (any subset of
//! [`TrainConfig`]'s fields), then the flags given on the command line, in that order.

use std::path::PathBuf;
use std::time::Instant;

use crate::one_shot::SubnetArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use fairnas_model::search_space::SearchSpace;
use fairnas_supernet::images::{ImageFolder, LoadedSubnet};
use fairnas_supernet::source::evaluate;
use fairnas_supernet::trainer::{EpochMetrics, StepReport, TrainConfig, TrainObserver};

/// Flags shared by `train-supernet` and `train`.
#[derive(Args, Debug, Clone)]
pub struct CommonTrainArgs {
    /// Data folder: `train/` and `test/` class folders (e.g. the extracted CIFAR-10 JPEG
    /// tarball) or CIFAR-10 binary batches.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Output folder: config.json, checkpoint.safetensors, state.json, metrics.jsonl.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// JSON file with any of the run's settings (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (bit-identical to never stopping).
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Peak learning rate (cosine decay to --min-lr after a linear warm-up).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup_epochs: Option<f64>,
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Rescale gradients to at most this global L2 norm.
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Stop after this many steps in total (the schedule still spans --epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Checkpoint every N steps (always at each epoch end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Train on a fixed subset of N training images.
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Evaluate on a fixed subset of N held-out images.
    #[arg(long, value_name = "N")]
    eval_limit: Option<usize>,
    /// Classifier outputs, for an image folder whose number of classes is not the space's
    /// (default: the space's, 10 for nas-bench-macro, 1000 for fairnas).
    #[arg(long, value_name = "N")]
    classes: Option<usize>,
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
    let config_file = match &common.config {
        Some(path) => Some(path.clone()),
        None if common.resume && common.out.join("config.json").is_file() => {
            Some(common.out.join("config.json"))
        }
        None => None,
    };
    Ok(match config_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a valid run configuration", path.display()))?
        }
        None => TrainConfig::default(),
    })
}

fn apply_common(c: &mut TrainConfig, a: &CommonTrainArgs) {
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { c.$field = v; } )* };
    }
    set!(
        data,
        epochs,
        batch_size,
        seed,
        lr,
        min_lr,
        warmup_epochs,
        momentum,
        weight_decay,
        label_smoothing,
        checkpoint_every
    );
    if a.max_grad_norm.is_some() {
        c.max_grad_norm = a.max_grad_norm;
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    if a.train_limit.is_some() {
        c.train_limit = a.train_limit;
    }
    if a.eval_limit.is_some() {
        c.eval_limit = a.eval_limit;
    }
    if a.classes.is_some() {
        c.classes = a.classes;
    }
}

pub fn run_train_supernet(args: TrainSupernetArgs) -> Result<()> {
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
    apply_common(&mut config, &args.common);
    execute(config, &args.common)
}

pub fn run_train(args: TrainArgs) -> Result<()> {
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
    apply_common(&mut config, &args.common);
    execute(config, &args.common)
}

fn execute(config: TrainConfig, common: &CommonTrainArgs) -> Result<()> {
    if config.data.as_os_str().is_empty() {
        bail!("no training data: pass --data DIR (a folder with train/ and test/, or CIFAR-10 batches)");
    }
    let mut observer = BarObserver::new(common.json);
    let summary = fairnas_supernet::images::run(&config, &common.out, common.resume, &mut observer)?;
    observer.finish();
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
    subnet: SubnetArgs,
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
    let started = Instant::now();
    let LoadedSubnet { supernet, config, state, space, path, data, recalibrated, .. } = args.subnet.load()?;
    let recal_batch = config.batch_size;
    let held_out = ImageFolder::open(&data, &args.split, args.eval_limit, &space)?;
    let (correct, total) = evaluate(&supernet, &path, &held_out, args.batch_size)?;
    let top1 = correct as f64 / total.max(1) as f64;
    let result = serde_json::json!({
        "supernet": args.subnet.supernet,
        "space": space.name,
        "choices": args.subnet.choices,
        "trained_steps": state.step,
        "sampler": state.sampler,
        "bn_recal_batches": recalibrated,
        "bn_recal_batch_size": recal_batch,
        "split": args.split,
        "images": total,
        "correct": correct,
        "top1": top1,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "{} {}: top-1 {:.2}% ({correct}/{total}) on {} after BN recalibration on {recalibrated} batches of {recal_batch}",
            space.name,
            args.subnet.choices,
            100.0 * top1,
            data.join(&args.split).display(),
        );
    }
    Ok(())
}
