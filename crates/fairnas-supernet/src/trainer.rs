//! The training loop: epochs of seeded batches from an [`ImageSource`], one
//! [`crate::step::train_step`] per batch, atomic checkpoints every N steps and at every epoch end, per-epoch metrics, exact
//! resume. [`train`] takes the data as a value; [`crate::images::run`] opens the folders a
//! config names and calls it.
//!
//! **What makes resume exact.** Every input of step `s` is a pure function of the config and
//! `s`: the batch (the source's contract, [`crate::source`]), the
//! paths (samplers are functions of (seed, step)) and the learning rate (a schedule of `s`). The
//! checkpoint holds everything else that changes: weights, BN statistics, momentum buffers, the
//! step, and the running sums of the current epoch's metrics. A run killed at any moment and
//! resumed from its last checkpoint therefore ends with the same bits as one never interrupted
//! (test: `tests/cli.rs`, with a real SIGKILL).
//!
//! Files in the output folder: `config.json` (the run's configuration), `checkpoint.safetensors`
//! (weights + optimizer + state, written atomically), `state.json` (the state of that checkpoint,
//! for people and scripts), `metrics.jsonl` (one line per finished epoch, regenerated from the
//! checkpoint's history so a resumed run never duplicates or loses a line), and for stand-alone
//! runs `weights.safetensors` (the trained network under canonical names, for `fairnas verify`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use fairnas_model::search_space::{SearchSpace, SpaceError};
use fairnas_model::selection::ModelSelection;
use fairnas_model::spec::ArchSpec;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::sampler::{
    ExpectationFair, FixedPath, Path as ChoicePath, PathSampler, StrictFair, UniformSinglePath,
};
use crate::schedule::CosineSchedule;
use crate::source::{batches_per_epoch, evaluate, ImageSource};
use crate::step::{train_step_sharded, Sgd, SgdConfig, SharedGradient, StepOptions};
use crate::supernet::Supernet;
use crate::world::{self, Solo, World};

/// Everything that defines a run. Written to `config.json`; a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Search space of the supernet, or of `arch`'s choice digits. Stored whole in the
    /// checkpoint, so any space reloads; a config file may name a shipped one
    /// (`"nas-bench-macro"`, `"fairnas"`).
    pub space: SearchSpace,
    /// Stand-alone training (`fairnas train`): a model name, block strings, or choice digits in
    /// `space`. `None` trains the supernet of `space`.
    pub arch: Option<String>,
    /// CIFAR-10 head (10 classes) for a named model or block strings.
    pub transfer: bool,
    /// `strict`, `uniform`, `expectation` (supernets) or `fixed` (stand-alone).
    pub sampler: String,
    /// Folder with `train/` and `test/` class folders, or CIFAR-10 binary batches: what
    /// [`crate::images::run`] opens, and the record of where a run's images came from.
    pub data: PathBuf,
    pub epochs: u64,
    /// Images per BN batch: what each path of a step runs on, per shard.
    pub batch_size: usize,
    /// Shards of `batch_size` images each process runs per step, gradients accumulated (1:
    /// none). A step's global batch is `batch_size x accumulate x` the job's processes
    /// ([`crate::world`]), so 1 process accumulating 2 shards computes what 2 processes of 1
    /// shard compute.
    #[serde(skip_serializing_if = "is_one")]
    pub accumulate: usize,
    pub seed: u64,
    /// Peak learning rate. Default 0.02: with the shared parts' gradients summed over m paths,
    /// 0.05 diverged on CIFAR-10 at batch 16 while 0.01-0.02 trained (NOTES.md).
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// `sum` (default, the paper's Algorithm 1) or `mean`: see [`SharedGradient`].
    pub shared_gradient: String,
    pub max_grad_norm: Option<f64>,
    /// Steps between checkpoints (0: only at epoch ends).
    pub checkpoint_every: u64,
    /// Stop after this many steps in total (the schedule still spans `epochs`).
    pub max_steps: Option<u64>,
    /// Train on a fixed seeded subset of this many training images.
    pub train_limit: Option<usize>,
    /// Evaluate on a fixed subset of this many held-out images.
    pub eval_limit: Option<usize>,
    /// Held-out accuracy after every epoch (stand-alone runs: the path trained; supernets: off).
    pub eval_every_epoch: bool,
    /// Stand-alone runs: start from these weights (canonical names, e.g. what `fairnas
    /// export` inherited from a supernet) instead of the seeded initialisation.
    pub init_weights: Option<PathBuf>,
    /// Classifier outputs when they are not the space's own (an image folder with another
    /// number of classes); `None`: the space's (10 for NAS-Bench-Macro, 1000 for FairNAS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            space: SearchSpace::nas_bench_macro(),
            arch: None,
            transfer: false,
            sampler: "strict".into(),
            data: PathBuf::new(),
            epochs: 1,
            batch_size: 64,
            accumulate: 1,
            seed: 0,
            lr: 0.02,
            min_lr: 0.0,
            warmup_epochs: 0.5,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 4e-5,
            label_smoothing: 0.0,
            shared_gradient: "sum".into(),
            max_grad_norm: None,
            checkpoint_every: 0,
            max_steps: None,
            train_limit: None,
            eval_limit: None,
            eval_every_epoch: false,
            init_weights: None,
            classes: None,
        }
    }
}

/// Settings laid over a base [`TrainConfig`] (a command line's flags): every `Some` replaces
/// the config's field. With the `clap` feature this is a `clap::Args` group.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct TrainOverrides {
    /// Data folder: `train/` and `test/` class folders (e.g. the extracted CIFAR-10 JPEG
    /// tarball) or CIFAR-10 binary batches.
    #[cfg_attr(feature = "clap", arg(long, value_name = "DIR"))]
    pub data: Option<PathBuf>,
    #[cfg_attr(feature = "clap", arg(long))]
    pub epochs: Option<u64>,
    /// Images per BN batch (per process and shard).
    #[cfg_attr(feature = "clap", arg(long))]
    pub batch_size: Option<usize>,
    /// Shards of --batch-size each process accumulates per step (global batch: batch size x
    /// accumulate x processes).
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub accumulate: Option<usize>,
    #[cfg_attr(feature = "clap", arg(long))]
    pub seed: Option<u64>,
    /// Peak learning rate (cosine decay to the minimum after a linear warm-up).
    #[cfg_attr(feature = "clap", arg(long))]
    pub lr: Option<f64>,
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_lr: Option<f64>,
    #[cfg_attr(feature = "clap", arg(long))]
    pub warmup_epochs: Option<f64>,
    #[cfg_attr(feature = "clap", arg(long))]
    pub momentum: Option<f64>,
    #[cfg_attr(feature = "clap", arg(long))]
    pub weight_decay: Option<f64>,
    #[cfg_attr(feature = "clap", arg(long))]
    pub label_smoothing: Option<f64>,
    /// Rescale gradients to at most this global L2 norm.
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_grad_norm: Option<f64>,
    /// Stop after this many steps in total (the schedule still spans the epochs).
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_steps: Option<u64>,
    /// Checkpoint every N steps (always at each epoch end).
    #[cfg_attr(feature = "clap", arg(long))]
    pub checkpoint_every: Option<u64>,
    /// Train on a fixed subset of N training images.
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub train_limit: Option<usize>,
    /// Evaluate on a fixed subset of N held-out images.
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub eval_limit: Option<usize>,
    /// Classifier outputs, for an image folder whose number of classes is not the space's
    /// (default: the space's, 10 for nas-bench-macro, 1000 for fairnas).
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub classes: Option<usize>,
}

impl TrainOverrides {
    /// Replaces every field of `config` this sets.
    pub fn apply(&self, config: &mut TrainConfig) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *field = v.clone();
            }
        }
        fn set_some<T: Clone>(field: &mut Option<T>, value: &Option<T>) {
            if value.is_some() {
                *field = value.clone();
            }
        }
        set(&mut config.data, &self.data);
        set(&mut config.epochs, &self.epochs);
        set(&mut config.batch_size, &self.batch_size);
        set(&mut config.accumulate, &self.accumulate);
        set(&mut config.seed, &self.seed);
        set(&mut config.lr, &self.lr);
        set(&mut config.min_lr, &self.min_lr);
        set(&mut config.warmup_epochs, &self.warmup_epochs);
        set(&mut config.momentum, &self.momentum);
        set(&mut config.weight_decay, &self.weight_decay);
        set(&mut config.label_smoothing, &self.label_smoothing);
        set(&mut config.checkpoint_every, &self.checkpoint_every);
        set_some(&mut config.max_grad_norm, &self.max_grad_norm);
        set_some(&mut config.max_steps, &self.max_steps);
        set_some(&mut config.train_limit, &self.train_limit);
        set_some(&mut config.eval_limit, &self.eval_limit);
        set_some(&mut config.classes, &self.classes);
    }
}

/// Config fields a resumed run may change: they do not change what is computed.
const RESUMABLE_CHANGES: [&str; 4] = ["max_steps", "checkpoint_every", "data", "eval_limit"];

impl TrainConfig {
    /// Reads a configuration file: any subset of the fields, the rest at their defaults.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str(&text).map_err(|source| TrainError::ConfigFile { path: path.into(), source })
    }

    /// The configuration a run in `out` starts from before any overrides: `file` when given,
    /// else (resuming) the run's own `config.json`, else the defaults.
    pub fn base(file: Option<&Path>, out: &Path, resume: bool) -> Result<Self, TrainError> {
        let own = out.join("config.json");
        match file {
            Some(path) => Self::read(path),
            None if resume && own.is_file() => Self::read(&own),
            None => Ok(Self::default()),
        }
    }

    /// The space the run trains: the supernet's, or a one-candidate-per-layer space for a
    /// stand-alone network.
    pub fn search_space(&self) -> Result<SearchSpace, TrainError> {
        let mut space = match &self.arch {
            None => self.space.clone(),
            Some(arch) => SearchSpace::single(&resolve_arch(arch, &self.space, self.transfer)?),
        };
        if let Some(classes) = self.classes {
            if classes < 2 {
                return Err(TrainError::Config(format!("classes must be at least 2, got {classes}")));
            }
            space.base.classes = classes;
        }
        Ok(space)
    }

    pub fn sampler(&self, space: &SearchSpace) -> Result<Box<dyn PathSampler>, TrainError> {
        let counts = space.choice_counts();
        Ok(match self.sampler.as_str() {
            "strict" => Box::new(StrictFair::new(&counts, self.seed)?),
            "uniform" => Box::new(UniformSinglePath::new(&counts, self.seed)?),
            "expectation" => Box::new(ExpectationFair::new(&counts, self.seed)?),
            "fixed" => Box::new(FixedPath::new(&counts, vec![0; counts.len()])?),
            other => {
                return Err(TrainError::Config(format!(
                    "unknown sampler '{other}' (strict, uniform, expectation, fixed)"
                )))
            }
        })
    }

    fn step_options(&self) -> Result<StepOptions, String> {
        let shared = match self.shared_gradient.as_str() {
            "sum" => SharedGradient::Sum,
            "mean" => SharedGradient::Mean,
            other => return Err(format!("unknown shared-gradient rule '{other}' (sum or mean)")),
        };
        Ok(StepOptions { label_smoothing: self.label_smoothing, shared, max_grad_norm: self.max_grad_norm })
    }

    /// Problems that make the config unusable, all at once.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.epochs == 0 {
            problems.push("epochs must be at least 1".to_string());
        }
        if self.batch_size == 0 {
            problems.push("batch size must be at least 1".to_string());
        }
        if self.accumulate == 0 {
            problems.push("accumulate must be at least 1".to_string());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            problems.push(format!("learning rate {} must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            problems.push(format!("label smoothing {} must be in [0, 1)", self.label_smoothing));
        }
        if self.arch.is_some() != (self.sampler == "fixed") {
            problems.push(if self.arch.is_some() {
                "a stand-alone network trains with the fixed sampler".to_string()
            } else {
                "the fixed sampler needs an architecture (`arch`)".to_string()
            });
        }
        if self.init_weights.is_some() && self.arch.is_none() {
            problems.push("initial weights are for stand-alone networks (`arch`)".to_string());
        }
        if let Err(e) = self.step_options() {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Fields that differ from `saved` and may not change on resume.
    fn resume_conflicts(&self, saved: &TrainConfig) -> Vec<String> {
        let (a, b) =
            (serde_json::to_value(self).unwrap_or_default(), serde_json::to_value(saved).unwrap_or_default());
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return vec![] };
        a.iter()
            .filter(|(k, v)| !RESUMABLE_CHANGES.contains(&k.as_str()) && b.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: checkpoint has {}, now {v}", b.get(k).cloned().unwrap_or_default()))
            .collect()
    }
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// A stand-alone architecture from a model name, block strings, or a choice vector of `space`.
pub fn resolve_arch(arch: &str, space: &SearchSpace, transfer: bool) -> Result<ArchSpec, TrainError> {
    let arch = arch.trim();
    if !arch.is_empty() && arch.chars().all(|c| c.is_ascii_digit() || c == ',') {
        return Ok(space.subnet(&space.parse_choices(arch)?)?);
    }
    let selection = if arch.contains('_') {
        ModelSelection { arch: Some(arch.to_string()), transfer, ..Default::default() }
    } else {
        ModelSelection { model: Some(arch.to_string()), transfer, ..Default::default() }
    };
    Ok(selection.resolve()?)
}

/// One finished epoch, as a line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: u64,
    /// Optimizer steps taken in total by the end of this epoch.
    pub step: u64,
    /// Mean cross-entropy over every path of every step of the epoch.
    pub train_loss: f64,
    /// Top-1 on the (augmented) training batches, over every path.
    pub train_top1: f64,
    pub lr: f64,
    /// Training images per second (each image runs through every path of its step).
    pub images_per_s: f64,
    /// Wall time of the epoch's steps in this process (a resumed epoch counts its part).
    pub wall_s: f64,
    /// Held-out top-1 of the trained path, when evaluated.
    pub eval_top1: Option<f64>,
}

/// Running sums of the current epoch, saved in checkpoints so resumed metrics are whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochAccumulator {
    pub loss_sum: f64,
    pub correct: u64,
    pub seen: u64,
    pub images: u64,
    /// (step, path) pairs run: the loss sum is over their per-batch mean losses.
    pub path_steps: u64,
    pub wall_s: f64,
}

/// Progress callbacks for the CLI's bar and logs.
pub trait TrainObserver {
    fn started(&mut self, _total_steps: u64, _first_step: u64, _description: &str) {}
    fn step(&mut self, _report: &StepReport) {}
    fn epoch(&mut self, _metrics: &EpochMetrics) {}
    fn checkpoint(&mut self, _step: u64, _path: &Path) {}
    fn message(&mut self, _text: &str) {}
}

/// A no-op observer.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub top1: f64,
    pub lr: f64,
    pub images_per_s: f64,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub out: PathBuf,
    pub steps: u64,
    pub epochs_completed: u64,
    pub finished: bool,
    pub history: Vec<EpochMetrics>,
    pub train_images: usize,
    pub steps_per_epoch: u64,
    pub paths_per_step: usize,
    pub images_in_memory: bool,
}

/// One line: steps, batches per epoch, paths per step, images and the folder.
impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps ({} per epoch, {} paths per step, {} training images{}) -> {}",
            self.steps,
            self.steps_per_epoch,
            self.paths_per_step,
            self.train_images,
            if self.images_in_memory { ", decoded in memory" } else { "" },
            self.out.display()
        )
    }
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("{}: not a valid run configuration: {source}", path.display())]
    ConfigFile { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error(transparent)]
    Model(#[from] fairnas_model::selection::SelectionError),
    #[error(transparent)]
    Sampler(#[from] crate::sampler::SamplerError),
    /// A fresh run was asked for where one already is.
    #[error("{} already holds a run ({})", out.display(), checkpoint.display())]
    RunExists { out: PathBuf, checkpoint: PathBuf },
    #[error("no checkpoint to resume at {}", .0.display())]
    NoCheckpoint(PathBuf),
    /// A resumed run with settings that change what is computed.
    #[error(
        "{}: the run was made with another configuration ({}); only {} may change",
        checkpoint.display(),
        conflicts.join("; "),
        RESUMABLE_CHANGES.join(", ")
    )]
    ResumeConflict { checkpoint: PathBuf, conflicts: Vec<String> },
    /// The data's labels do not fit the classifier.
    #[error("{data} has {found} classes but the network has {outputs} outputs")]
    Classes { data: String, found: usize, outputs: usize },
    #[error("{data}: {images} training images make no full batch of {batch_size}")]
    NoFullBatch { data: String, images: usize, batch_size: usize },
    /// The image source failed (a corrupt or missing image, an unreadable folder).
    #[error("{0}")]
    Data(crate::source::SourceError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// A training step failed (e.g. a non-finite loss); says which step and path.
    #[error("{0}")]
    Step(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A resume in a job of another size (the shards, and so every step, would differ).
    #[error("{}: the run was trained by {saved} processes, this job has {now}; resume it with {saved}", checkpoint.display())]
    WorldSize { checkpoint: PathBuf, saved: u64, now: u64 },
    /// The processes of a job no longer hold the same network (a bug or a hardware fault).
    #[error("replicas diverged by step {step}: rank(s) {ranks:?} hold other {what} than rank 0")]
    Replicas { step: u64, ranks: Vec<usize>, what: &'static str },
}

/// A candle error's message without the backtrace candle attaches under RUST_BACKTRACE.
fn without_backtrace(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// The checkpoint file of a run folder.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

/// A run given as its checkpoint or its folder: the checkpoint file.
pub fn resolve_checkpoint(run: &Path) -> PathBuf {
    if run.is_dir() {
        checkpoint_path(run)
    } else {
        run.to_path_buf()
    }
}

/// What a run trains on: the training images, and held-out ones for the per-epoch accuracy
/// when the config asks for it.
#[derive(Clone, Copy)]
pub struct TrainingData<'a> {
    pub train: &'a dyn ImageSource,
    pub eval: Option<&'a dyn ImageSource>,
}

/// Refuses a config that cannot run, a fresh run where a checkpoint already is, and a resume
/// where none is: everything that can be said before any data is read.
pub fn check_run_folder(config: &TrainConfig, out: &Path, resume: bool) -> Result<(), TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let checkpoint = checkpoint_path(out);
    if !resume && checkpoint.exists() {
        return Err(TrainError::RunExists { out: out.to_path_buf(), checkpoint });
    }
    if resume && !checkpoint.exists() {
        return Err(TrainError::NoCheckpoint(checkpoint));
    }
    Ok(())
}

/// Refuses labels that do not fit `space`'s classifier.
pub fn check_classes(data: &str, found: usize, space: &SearchSpace) -> Result<(), TrainError> {
    match found == space.base.classes {
        true => Ok(()),
        false => Err(TrainError::Classes { data: data.to_string(), found, outputs: space.base.classes }),
    }
}

/// Everything a run holds while it trains.
struct Run<'a> {
    world: &'a dyn World,
    /// Digest of every path trained in this process since it started (compared across ranks).
    paths_digest: u64,
    config: &'a TrainConfig,
    out: &'a Path,
    supernet: Supernet,
    sampler: Box<dyn PathSampler>,
    options: StepOptions,
    sgd: Sgd,
    data: TrainingData<'a>,
    steps_per_epoch: u64,
    schedule: CosineSchedule,
    state: TrainState,
    history: Vec<EpochMetrics>,
    accumulator: EpochAccumulator,
}

/// Trains according to `config` on `data` into `out`, from scratch or (with `resume`) from
/// the checkpoint there.
pub fn train(
    config: &TrainConfig,
    data: &TrainingData,
    out: &Path,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<RunSummary, TrainError> {
    train_in(&Solo, config, data, out, resume, observer)
}

/// [`train`] as one process of the data-parallel job `world`: every rank calls it with the
/// same arguments (`out` and the data on a file system every rank sees); each trains on its
/// shards, only the leader writes. The checkpoint is what every rank holds.
pub fn train_in(
    world: &dyn World,
    config: &TrainConfig,
    data: &TrainingData,
    out: &Path,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<RunSummary, TrainError> {
    check_run_folder(config, out, resume)?;
    // No rank may see the folder the leader is about to create.
    world.barrier();
    let mut run = Run::start(world, config, *data, out, resume, observer)?;
    let total_steps = run.steps_per_epoch * config.epochs;
    let stop_at = config.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let description = match &config.arch {
        None => format!("{} supernet, {} sampler", run.supernet.space().name, run.sampler.name()),
        Some(a) => format!("{a} stand-alone"),
    };
    observer.started(stop_at, run.state.step, &description);
    while run.state.step < stop_at {
        run.epoch(stop_at, observer)?;
    }
    if config.arch.is_some() {
        run.write_weights()?;
    }
    Ok(RunSummary {
        out: out.to_path_buf(),
        steps: run.state.step,
        epochs_completed: run.history.len() as u64,
        finished: run.state.step >= total_steps,
        history: run.history,
        train_images: data.train.len(),
        steps_per_epoch: run.steps_per_epoch,
        paths_per_step: run.sampler.paths(0).len(),
        images_in_memory: data.train.in_memory(),
    })
}

impl<'a> Run<'a> {
    /// A fresh or resumed run, with `config.json` written.
    fn start(
        world: &'a dyn World,
        config: &'a TrainConfig,
        data: TrainingData<'a>,
        out: &'a Path,
        resume: bool,
        observer: &mut dyn TrainObserver,
    ) -> Result<Self, TrainError> {
        let space = config.search_space()?;
        let supernet = Supernet::new(&space, config.seed, &Device::Cpu)?;
        let sampler = config.sampler(&space)?;
        let options = config.step_options().map_err(TrainError::Config)?;
        let sgd = Sgd::new(SgdConfig {
            momentum: config.momentum,
            nesterov: config.nesterov,
            weight_decay: config.weight_decay,
        });
        check_classes(&data.train.describe(), data.train.num_classes(), &space)?;
        let global_batch = config.batch_size * config.accumulate * world.size();
        let steps_per_epoch = batches_per_epoch(data.train.len(), global_batch) as u64;
        if steps_per_epoch == 0 {
            return Err(TrainError::NoFullBatch {
                data: data.train.describe(),
                images: data.train.len(),
                batch_size: global_batch,
            });
        }
        let schedule = CosineSchedule {
            base_lr: config.lr,
            min_lr: config.min_lr,
            warmup_steps: (config.warmup_epochs * steps_per_epoch as f64).round() as u64,
            total_steps: steps_per_epoch * config.epochs,
        };
        if world.is_leader() {
            std::fs::create_dir_all(out).map_err(io_err(out))?;
        }
        let fresh = TrainState {
            step: 0,
            epoch: 0,
            seed: config.seed,
            sampler: sampler.name().to_string(),
            config: String::new(),
            history: Vec::new(),
            accumulator: EpochAccumulator::default(),
            world_size: world.size() as u64,
        };
        let mut run = Run {
            world,
            paths_digest: world::DIGEST_START,
            config,
            out,
            supernet,
            sampler,
            options,
            sgd,
            data,
            steps_per_epoch,
            schedule,
            state: fresh,
            history: Vec::new(),
            accumulator: EpochAccumulator::default(),
        };
        match resume {
            true => run.resume(observer)?,
            false => run.initialise(observer)?,
        }
        // The config of record is the one in effect now (a resumed run may change max_steps etc.).
        run.state.config = serde_json::to_string(config).expect("config serialises");
        if world.is_leader() {
            let config_json = serde_json::to_string_pretty(config).expect("config serialises");
            let path = out.join("config.json");
            fairnas_model::persist::write_atomically(&path, config_json.as_bytes()).map_err(io_err(&path))?;
        }
        Ok(run)
    }

    fn resume(&mut self, observer: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let checkpoint = checkpoint_path(self.out);
        let state = checkpoint::load(&checkpoint, &self.supernet, &mut self.sgd)?;
        let saved: TrainConfig = serde_json::from_str(&state.config)
            .map_err(|e| TrainError::Config(format!("{}: unreadable config: {e}", checkpoint.display())))?;
        let conflicts = self.config.resume_conflicts(&saved);
        if !conflicts.is_empty() {
            return Err(TrainError::ResumeConflict { checkpoint, conflicts });
        }
        let now = self.world.size() as u64;
        if state.world_size != now {
            return Err(TrainError::WorldSize { checkpoint, saved: state.world_size, now });
        }
        self.history = state.history.clone();
        self.accumulator = state.accumulator.clone();
        observer.message(&format!(
            "resuming {} at step {} (epoch {})",
            self.out.display(),
            state.step,
            state.epoch
        ));
        self.state = state;
        Ok(())
    }

    fn initialise(&mut self, observer: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let Some(init) = &self.config.init_weights else { return Ok(()) };
        let unreadable = |e: &dyn std::fmt::Display| TrainError::Config(format!("{}: {e}", init.display()));
        let tensors = candle_core::safetensors::load(init, &Device::Cpu).map_err(|e| unreadable(&e))?;
        self.supernet.load_subnet_weights(&self.sampler.paths(0)[0], &tensors).map_err(|e| unreadable(&e))?;
        observer.message(&format!("initial weights from {}", init.display()));
        Ok(())
    }

    /// The rest of the current epoch, or up to `stop_at`.
    fn epoch(&mut self, stop_at: u64, observer: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let epoch = self.state.step / self.steps_per_epoch;
        let first_batch = (self.state.step % self.steps_per_epoch) as usize;
        let source = self.data.train;
        let rank_batch = self.config.batch_size * self.config.accumulate;
        let (seed, rank, size) = (self.config.seed, self.world.rank(), self.world.size());
        for batch in source.train_shards(seed, epoch, first_batch, rank_batch, rank, size) {
            let batch = batch.map_err(TrainError::Data)?;
            let paths = self.step(batch, epoch, observer)?;
            let epoch_done = self.state.step.is_multiple_of(self.steps_per_epoch);
            if epoch_done {
                self.finish_epoch(epoch, &paths[0], observer)?;
            }
            let every = self.config.checkpoint_every;
            let checkpoint_due = every > 0 && self.state.step.is_multiple_of(every);
            if epoch_done || checkpoint_due || self.state.step == stop_at {
                self.save(observer)?;
            }
            if self.state.step >= stop_at {
                break;
            }
        }
        Ok(())
    }

    /// One optimizer step on `batch` (this rank's part of the global batch); returns the paths
    /// it trained.
    fn step(
        &mut self,
        batch: crate::source::LabelledBatch,
        epoch: u64,
        observer: &mut dyn TrainObserver,
    ) -> Result<Vec<ChoicePath>, TrainError> {
        let started = Instant::now();
        let index = batch.index;
        let n = batch.len() * self.world.size();
        let b = self.config.batch_size;
        let shards = (0..self.config.accumulate)
            .map(|s| {
                let shard = batch.slice(s * b..(s + 1) * b);
                let y = Tensor::from_vec(shard.labels.clone(), b, &Device::Cpu)?;
                Ok((shard.images(self.data.train.image_size(), &Device::Cpu)?, y))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let paths: Vec<ChoicePath> = self.sampler.paths(self.state.step);
        self.paths_digest = world::digest(paths.iter().flatten().map(|&c| c as u64), self.paths_digest);
        let lr = self.schedule.lr(self.state.step);
        let stats =
            train_step_sharded(&self.supernet, &paths, &shards, &self.options, &mut self.sgd, lr, self.world)
                .map_err(|e| {
                    TrainError::Step(format!(
                        "step {} (epoch {epoch}, batch {index}): {}; the last checkpoint ({}) is intact",
                        self.state.step,
                        without_backtrace(e),
                        checkpoint_path(self.out).display()
                    ))
                })?;
        let wall = started.elapsed().as_secs_f64();
        let loss_sum: f64 = stats.losses.iter().map(|&l| l as f64).sum();
        let correct: usize = stats.correct.iter().sum();
        let a = &mut self.accumulator;
        a.loss_sum += loss_sum;
        a.correct += correct as u64;
        a.seen += (n * paths.len()) as u64;
        a.images += n as u64;
        a.path_steps += paths.len() as u64;
        a.wall_s += wall;
        self.state.step += 1;
        observer.step(&StepReport {
            step: self.state.step,
            epoch,
            loss: loss_sum / paths.len() as f64,
            top1: correct as f64 / (n * paths.len()) as f64,
            lr,
            images_per_s: n as f64 / wall,
        });
        Ok(paths)
    }

    /// Records the finished epoch's metrics (with held-out accuracy of `path` when asked).
    fn finish_epoch(
        &mut self,
        epoch: u64,
        path: &[usize],
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        self.accumulator.wall_s = self.slowest(self.accumulator.wall_s);
        let a = &self.accumulator;
        let mut metrics = EpochMetrics {
            epoch,
            step: self.state.step,
            train_loss: a.loss_sum / a.path_steps.max(1) as f64,
            train_top1: a.correct as f64 / a.seen.max(1) as f64,
            lr: self.schedule.lr(self.state.step - 1),
            images_per_s: a.images as f64 / a.wall_s.max(1e-9),
            wall_s: a.wall_s,
            eval_top1: None,
        };
        if let Some(eval) = self.data.eval {
            let (c, t) = evaluate(&self.supernet, path, eval, self.config.batch_size)?;
            metrics.eval_top1 = Some(c as f64 / t.max(1) as f64);
        }
        observer.epoch(&metrics);
        self.history.push(metrics);
        self.accumulator = EpochAccumulator::default();
        Ok(())
    }

    fn save(&mut self, observer: &mut dyn TrainObserver) -> Result<(), TrainError> {
        self.state.epoch = self.state.step / self.steps_per_epoch;
        self.state.history = self.history.clone();
        self.state.accumulator = self.accumulator.clone();
        if self.world.size() > 1 {
            self.accumulator.wall_s = self.slowest(self.accumulator.wall_s);
            self.state.accumulator.wall_s = self.accumulator.wall_s;
            average_running_stats(self.world, &self.supernet)?;
            self.check_replicas()?;
        }
        if self.world.is_leader() {
            write_checkpoint(self.out, &self.supernet, &self.sgd, &self.state, &self.history)?;
        }
        observer.checkpoint(self.state.step, &checkpoint_path(self.out));
        Ok(())
    }

    /// The slowest rank's `wall` (a job's time is its slowest rank's; and every rank must
    /// record the same metrics).
    fn slowest(&self, wall: f64) -> f64 {
        match self.world.size() {
            1 => wall,
            _ => self.world.gather_f64(&[wall]).into_iter().fold(0.0, f64::max),
        }
    }

    /// Refuses to write a checkpoint unless every rank trained the same paths and holds the
    /// same bits (parameters, running statistics, momentum, state) as rank 0.
    fn check_replicas(&self) -> Result<(), TrainError> {
        let state = serde_json::to_vec(&self.state).expect("state serialises");
        let words = state.iter().map(|&b| b as u64);
        let mut d = world::digest(words, world::DIGEST_START);
        for (_, var) in self.supernet.named_vars() {
            d = world::digest(tensor_bits(var.as_tensor())?, d);
        }
        let mut momentum: Vec<_> = self.sgd.momentum.iter().collect();
        momentum.sort_by(|a, b| a.0.cmp(b.0));
        for (_, buf) in momentum {
            d = world::digest(tensor_bits(buf)?, d);
        }
        let all = self.world.gather_u64(&[self.paths_digest, d]);
        for (what, k) in [("paths", 0), ("parameters", 1)] {
            let ranks: Vec<usize> = (1..self.world.size()).filter(|&r| all[2 * r + k] != all[k]).collect();
            if !ranks.is_empty() {
                return Err(TrainError::Replicas { step: self.state.step, ranks, what });
            }
        }
        Ok(())
    }

    /// A stand-alone run's network under its canonical names (`weights.safetensors`).
    fn write_weights(&self) -> Result<(), TrainError> {
        if !self.world.is_leader() {
            return Ok(());
        }
        let weights = self.supernet.subnet_weights(&self.sampler.paths(0)[0])?;
        let bytes = safetensors::serialize(weights.iter().map(|(k, v)| (k.as_str(), v)), None)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let path = self.out.join("weights.safetensors");
        fairnas_model::persist::write_atomically(&path, &bytes).map_err(io_err(&path))
    }
}

/// The f32 (or f64) bits of a tensor, as words for [`world::digest`].
fn tensor_bits(t: &Tensor) -> candle_core::Result<Vec<u64>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        candle_core::DType::F64 => t.to_vec1::<f64>()?.iter().map(|v| v.to_bits()).collect(),
        _ => t
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits() as u64)
            .collect(),
    })
}

/// Replaces every rank's BN running statistics by their mean over the ranks. The sum is taken
/// in f64, where the sum of f32 values from up to 2^29 ranks is exact: the mean is the
/// correctly rounded one whatever order MPI adds in, and equal values stay bit-identical.
fn average_running_stats(world: &dyn World, supernet: &Supernet) -> Result<(), TrainError> {
    let stats: Vec<_> = supernet.named_vars().filter(|(n, _)| crate::step::is_running_stat(n)).collect();
    let mut flat = Vec::new();
    for (_, var) in &stats {
        let t = var.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F64)?;
        flat.extend(t.to_vec1::<f64>()?);
    }
    world.sum_f64(&mut flat);
    let mut offset = 0;
    for (_, var) in stats {
        let t = var.as_tensor();
        let n = t.elem_count();
        let mean: Vec<f64> = flat[offset..offset + n].iter().map(|v| v / world.size() as f64).collect();
        var.set(&Tensor::from_vec(mean, t.shape(), t.device())?.to_dtype(t.dtype())?)?;
        offset += n;
    }
    Ok(())
}

fn write_checkpoint(
    out: &Path,
    supernet: &Supernet,
    sgd: &Sgd,
    state: &TrainState,
    history: &[EpochMetrics],
) -> Result<(), TrainError> {
    checkpoint::save(&checkpoint_path(out), supernet, sgd, state)?;
    let mut state_view = serde_json::to_value(state).expect("state serialises");
    if let Some(obj) = state_view.as_object_mut() {
        obj.remove("config"); // config.json holds it, readable
    }
    let state_path = out.join("state.json");
    fairnas_model::persist::write_atomically(
        &state_path,
        serde_json::to_string_pretty(&state_view).expect("state serialises").as_bytes(),
    )
    .map_err(io_err(&state_path))?;
    let mut lines = String::new();
    for m in history {
        lines.push_str(&serde_json::to_string(m).expect("metrics serialise"));
        lines.push('\n');
    }
    let metrics_path = out.join("metrics.jsonl");
    fairnas_model::persist::write_atomically(&metrics_path, lines.as_bytes())
        .map_err(io_err(&metrics_path))?;
    Ok(())
}

/// Loads a run's checkpoint into a fresh supernet: (supernet, its config, its state).
pub fn load_run(checkpoint: &Path) -> Result<(Supernet, TrainConfig, TrainState), TrainError> {
    let ckpt = resolve_checkpoint(checkpoint);
    let state = checkpoint::read_state(&ckpt)?;
    let config: TrainConfig = serde_json::from_str(&state.config)
        .map_err(|e| TrainError::Config(format!("{}: unreadable config: {e}", ckpt.display())))?;
    let space = config.search_space()?;
    let supernet = Supernet::new(&space, config.seed, &Device::Cpu)?;
    let mut sgd = Sgd::new(SgdConfig::default());
    checkpoint::load(&ckpt, &supernet, &mut sgd)?;
    Ok((supernet, config, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank 0 of a pretend job of 2 whose other rank holds `other` (sums only).
    struct Pair {
        other: Vec<f64>,
    }

    impl World for Pair {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn sum_f32(&self, _: &mut [f32]) {
            unreachable!("not used by the averaging")
        }
        fn sum_f64(&self, values: &mut [f64]) {
            assert_eq!(values.len(), self.other.len());
            values.iter_mut().zip(&self.other).for_each(|(v, o)| *v += o);
        }
        fn gather_f64(&self, _: &[f64]) -> Vec<f64> {
            unreachable!()
        }
        fn gather_u64(&self, _: &[u64]) -> Vec<u64> {
            unreachable!()
        }
        fn barrier(&self) {}
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
    }

    fn running_stats(supernet: &Supernet) -> Vec<f32> {
        let stats = supernet.named_vars().filter(|(n, _)| crate::step::is_running_stat(n));
        stats.flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    }

    /// The checkpoint's BN statistics are the ranks' mean, correctly rounded, and statistics that
    /// agree on every rank keep their bits.
    #[test]
    fn running_statistics_become_the_mean_over_the_ranks() {
        let supernet = Supernet::new(&SearchSpace::nas_bench_macro(), 3, &Device::Cpu).unwrap();
        for (k, (_, var)) in
            supernet.named_vars().filter(|(n, _)| crate::step::is_running_stat(n)).enumerate()
        {
            let t = var.as_tensor();
            // Deterministic values of every magnitude in [0.1, 2.1).
            let values: Vec<f32> =
                (0..t.elem_count()).map(|i| 0.1 + ((i * 2_654_435_761 + k) % 1000) as f32 / 500.0).collect();
            var.set(&Tensor::from_vec(values, t.shape(), &Device::Cpu).unwrap()).unwrap();
        }
        let mine = running_stats(&supernet);
        let same = Pair { other: mine.iter().map(|&v| v as f64).collect() };
        average_running_stats(&same, &supernet).unwrap();
        assert_eq!(running_stats(&supernet), mine, "equal statistics changed");

        let other: Vec<f64> =
            mine.iter().enumerate().map(|(i, &v)| v as f64 * (1.0 + (i % 7) as f64 / 3.0)).collect();
        average_running_stats(&Pair { other: other.clone() }, &supernet).unwrap();
        let expected: Vec<f32> =
            mine.iter().zip(&other).map(|(&a, b)| ((a as f64 + b) / 2.0) as f32).collect();
        assert_eq!(running_stats(&supernet), expected);
        assert!(mine.len() > 1000, "{} statistics", mine.len());
    }
}
