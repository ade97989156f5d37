//! The training loop behind `fairnas train-supernet` and `fairnas train`: epochs of seeded
//! batches, one [`train_step`] per batch, atomic checkpoints every N steps and at every epoch
//! end, per-epoch metrics, exact resume.
//!
//! **What makes resume exact.** Every input of step `s` is a pure function of the config and
//! `s`: the batch (epoch order and augmentation are seeded, `fairnas_data::train_loader`), the
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
use fairnas_data::{Dataset, ImageStore, TrainLoader, TrainTransform};
use fairnas_model::search_space::SearchSpace;
use fairnas_model::selection::ModelSelection;
use fairnas_model::spec::ArchSpec;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::sampler::{
    ExpectationFair, FixedPath, Path as ChoicePath, PathSampler, StrictFair, UniformSinglePath,
};
use crate::schedule::CosineSchedule;
use crate::step::{train_step, Sgd, SgdConfig, SharedGradient, StepOptions};
use crate::supernet::{Mode, Supernet};

/// Everything that defines a run. Written to `config.json`; a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Search space of the supernet (`nas-bench-macro`, `fairnas`), or of `arch`'s choice digits.
    pub space: String,
    /// Stand-alone training (`fairnas train`): a model name, block strings, or choice digits in
    /// `space`. `None` trains the supernet of `space`.
    pub arch: Option<String>,
    /// CIFAR-10 head (10 classes) for a named model or block strings.
    pub transfer: bool,
    /// `strict`, `uniform`, `expectation` (supernets) or `fixed` (stand-alone).
    pub sampler: String,
    /// Folder with `train/` and `test/` class folders, or CIFAR-10 binary batches.
    pub data: PathBuf,
    pub epochs: u64,
    pub batch_size: usize,
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
            space: "nas-bench-macro".into(),
            arch: None,
            transfer: false,
            sampler: "strict".into(),
            data: PathBuf::new(),
            epochs: 1,
            batch_size: 64,
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

/// Config fields a resumed run may change: they do not change what is computed.
const RESUMABLE_CHANGES: [&str; 4] = ["max_steps", "checkpoint_every", "data", "eval_limit"];

impl TrainConfig {
    /// The space the run trains: the supernet's, or a one-candidate-per-layer space for a
    /// stand-alone network.
    pub fn search_space(&self) -> Result<SearchSpace, String> {
        let mut space = match &self.arch {
            None => SearchSpace::named(&self.space)?,
            Some(arch) => SearchSpace::single(&resolve_arch(arch, &self.space, self.transfer)?),
        };
        if let Some(classes) = self.classes {
            if classes < 2 {
                return Err(format!("classes must be at least 2, got {classes}"));
            }
            space.base.classes = classes;
        }
        Ok(space)
    }

    /// The recipe's augmentation: pad-crop for 32x32 inputs (CIFAR), RandomResizedCrop else.
    pub fn transform(&self, space: &SearchSpace) -> TrainTransform {
        let size = space.base.input_size as u32;
        if size <= 64 {
            match TrainTransform::cifar10() {
                TrainTransform::PadCrop { pad, normalization, .. } => {
                    TrainTransform::PadCrop { pad, size, normalization }
                }
                other => other,
            }
        } else {
            TrainTransform::imagenet(size)
        }
    }

    pub fn sampler(&self, space: &SearchSpace) -> Result<Box<dyn PathSampler>, String> {
        let counts = space.choice_counts();
        Ok(match self.sampler.as_str() {
            "strict" => Box::new(StrictFair::new(&counts, self.seed)?),
            "uniform" => Box::new(UniformSinglePath::new(&counts, self.seed)?),
            "expectation" => Box::new(ExpectationFair::new(&counts, self.seed)?),
            "fixed" => Box::new(FixedPath::new(&counts, vec![0; counts.len()])?),
            other => return Err(format!("unknown sampler '{other}' (strict, uniform, expectation, fixed)")),
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
                "the fixed sampler needs an architecture (fairnas train --arch)".to_string()
            });
        }
        if self.init_weights.is_some() && self.arch.is_none() {
            problems.push("initial weights are for stand-alone networks (fairnas train --arch)".to_string());
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

/// A stand-alone architecture from a model name, block strings, or choice digits of `space`.
pub fn resolve_arch(arch: &str, space: &str, transfer: bool) -> Result<ArchSpec, String> {
    let arch = arch.trim();
    if !arch.is_empty() && arch.chars().all(|c| c.is_ascii_digit()) {
        let space = SearchSpace::named(space)?;
        return space.subnet(&space.parse_choices(arch)?);
    }
    let selection = if arch.contains('_') {
        ModelSelection { arch: Some(arch.to_string()), transfer, ..Default::default() }
    } else {
        ModelSelection { model: Some(arch.to_string()), transfer, ..Default::default() }
    };
    selection.resolve()
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

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] fairnas_data::DataError),
    #[error(transparent)]
    Dataset(#[from] fairnas_data::DatasetError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// A training step failed (e.g. a non-finite loss); says which step and path.
    #[error("{0}")]
    Step(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
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

/// Opens one split (`train`, `test`) of a data folder: CIFAR-10 (JPEG tree or binary batches)
/// or any `<split>/<class>/*` image folder.
pub fn open_split(data: &Path, split: &str) -> Result<Dataset, TrainError> {
    let tree = data.join(split);
    if tree.is_dir() {
        let cifar = fairnas_data::classes::CIFAR10_CLASSES.iter().all(|c| tree.join(c).is_dir());
        return Ok(if cifar { Dataset::cifar10(data, split)? } else { Dataset::image_folder(&tree)? });
    }
    Ok(Dataset::cifar10(data, split)?)
}

/// A fixed subset of `n` samples (the same for every run and seed), or all.
pub fn subset(mut dataset: Dataset, n: Option<usize>) -> Dataset {
    if let Some(n) = n.filter(|&n| n < dataset.samples.len()) {
        let order = fairnas_ops::rng::epoch_order(dataset.samples.len(), 0x5EED_5EB5E7, 0);
        let mut keep: Vec<usize> = order[..n].to_vec();
        keep.sort_unstable();
        dataset.samples = keep.into_iter().map(|i| dataset.samples[i].clone()).collect();
    }
    dataset
}

/// Images `[n, 3, s, s]` as a tensor.
pub fn batch_tensor(pixels: Vec<f32>, n: usize, size: usize, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(pixels, (n, 3, size, size), device)
}

/// Held-out top-1 of `path` in eval mode: (correct, total). Decodes batch by batch, so any
/// split size fits in memory.
pub fn evaluate(
    supernet: &Supernet,
    path: &[usize],
    store: &ImageStore,
    transform: &TrainTransform,
    batch_size: usize,
) -> Result<(usize, usize), TrainError> {
    let mut correct = 0;
    let indices: Vec<usize> = (0..store.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, labels) = held_out_batch(store, transform, chunk)?;
        let predicted = supernet.forward(&x, path, Mode::Eval)?.argmax(1)?.to_vec1::<u32>()?;
        correct += labels.iter().zip(&predicted).filter(|(l, p)| l == p).count();
    }
    Ok((correct, store.len()))
}

/// Re-estimates the BN statistics of `path` on `batches` training batches (see
/// [`recalibration_batches`]).
pub fn recalibrate(
    supernet: &Supernet,
    path: &[usize],
    store: &ImageStore,
    transform: &TrainTransform,
    batch_size: usize,
    batches: usize,
    seed: u64,
) -> Result<usize, TrainError> {
    let tensors = recalibration_batches(store, transform, batch_size, batches, seed)?;
    Ok(supernet.recalibrate_bn(path, tensors.iter())?)
}

/// The training batches BN recalibration uses: the train transform (augmented), in a fixed
/// seeded order independent of the run's epochs; at most one epoch's worth.
pub fn recalibration_batches(
    store: &ImageStore,
    transform: &TrainTransform,
    batch_size: usize,
    batches: usize,
    seed: u64,
) -> Result<Vec<Tensor>, TrainError> {
    const RECALIBRATION_EPOCH: u64 = u64::MAX / 2;
    let size = transform.output_size() as usize;
    let order = fairnas_ops::rng::epoch_order(store.len(), seed, RECALIBRATION_EPOCH);
    let available = TrainLoader::batches_per_epoch(store.len(), batch_size).max(1);
    let mut tensors = Vec::new();
    for b in 0..batches.min(available) {
        let batch = fairnas_data::train_loader::make_batch(
            store,
            &order,
            transform,
            seed,
            RECALIBRATION_EPOCH,
            b,
            batch_size.min(store.len()),
        )?;
        let n = batch.labels.len();
        tensors.push(batch_tensor(batch.pixels, n, size, &Device::Cpu)?);
    }
    Ok(tensors)
}

/// Every held-out image, eval transform, in store order, as batches with their labels.
pub fn held_out_batches(
    store: &ImageStore,
    transform: &TrainTransform,
    batch_size: usize,
) -> Result<Vec<(Tensor, Vec<u32>)>, TrainError> {
    let indices: Vec<usize> = (0..store.len()).collect();
    indices.chunks(batch_size.max(1)).map(|chunk| held_out_batch(store, transform, chunk)).collect()
}

fn held_out_batch(
    store: &ImageStore,
    transform: &TrainTransform,
    chunk: &[usize],
) -> Result<(Tensor, Vec<u32>), TrainError> {
    use rayon::prelude::*;
    let size = transform.output_size() as usize;
    let pixels: Vec<Vec<f32>> = chunk
        .par_iter()
        .map(|&i| store.with_image(i, |img| transform.evaluate(img, Path::new(&store.describe(i))))?)
        .collect::<Result<_, _>>()?;
    let labels = chunk.iter().map(|&i| store.label(i) as u32).collect();
    Ok((batch_tensor(pixels.concat(), chunk.len(), size, &Device::Cpu)?, labels))
}

/// Trains according to `config` into `out`, from scratch or (with `resume`) from the
/// checkpoint there.
pub fn run(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<RunSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let ckpt = checkpoint_path(out);
    if !resume && ckpt.exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a run ({}): pass --resume to continue it, or choose another --out",
            out.display(),
            ckpt.display()
        )));
    }
    if resume && !ckpt.exists() {
        return Err(TrainError::Config(format!("--resume: no checkpoint at {}", ckpt.display())));
    }
    let space = config.search_space().map_err(TrainError::Config)?;
    let device = Device::Cpu;
    let supernet = Supernet::new(&space, config.seed, &device)?;
    let sampler = config.sampler(&space).map_err(TrainError::Config)?;
    let options = config.step_options().map_err(TrainError::Config)?;
    let mut sgd = Sgd::new(SgdConfig {
        momentum: config.momentum,
        nesterov: config.nesterov,
        weight_decay: config.weight_decay,
    });

    let train_set = subset(open_split(&config.data, "train")?, config.train_limit);
    if train_set.num_classes != space.base.classes {
        return Err(TrainError::Config(format!(
            "{} has {} classes but the network has {} outputs (pass --classes {} to train a {}-way classifier)",
            config.data.display(),
            train_set.num_classes,
            space.base.classes,
            train_set.num_classes,
            train_set.num_classes
        )));
    }
    observer.message(&format!("{}: {} training images, decoding…", train_set.layout, train_set.len()));
    let store = ImageStore::load(&train_set, fairnas_data::train_loader::DEFAULT_CACHE_BYTES)?;
    let steps_per_epoch = TrainLoader::batches_per_epoch(store.len(), config.batch_size) as u64;
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "{} training images make no full batch of {}",
            store.len(),
            config.batch_size
        )));
    }
    let eval_store = if config.eval_every_epoch {
        let eval_set = subset(open_split(&config.data, "test")?, config.eval_limit);
        Some(ImageStore::load(&eval_set, fairnas_data::train_loader::DEFAULT_CACHE_BYTES)?)
    } else {
        None
    };
    let transform = config.transform(&space);
    let size = transform.output_size() as usize;
    let total_steps = steps_per_epoch * config.epochs;
    let schedule = CosineSchedule {
        base_lr: config.lr,
        min_lr: config.min_lr,
        warmup_steps: (config.warmup_epochs * steps_per_epoch as f64).round() as u64,
        total_steps,
    };
    let stop_at = config.max_steps.map_or(total_steps, |m| m.min(total_steps));

    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let config_json = serde_json::to_string_pretty(config).expect("config serialises");
    let (mut state, mut history, mut accumulator) = if resume {
        let state = checkpoint::load(&ckpt, &supernet, &mut sgd)?;
        let saved: TrainConfig = serde_json::from_str(&state.config)
            .map_err(|e| TrainError::Config(format!("{}: unreadable config: {e}", ckpt.display())))?;
        let conflicts = config.resume_conflicts(&saved);
        if !conflicts.is_empty() {
            return Err(TrainError::Config(format!(
                "--resume with a different configuration ({}); only {} may change",
                conflicts.join("; "),
                RESUMABLE_CHANGES.join(", ")
            )));
        }
        let history = state.history.clone();
        let accumulator = state.accumulator.clone();
        observer.message(&format!(
            "resuming {} at step {} (epoch {})",
            out.display(),
            state.step,
            state.epoch
        ));
        (state, history, accumulator)
    } else {
        if let Some(init) = &config.init_weights {
            let tensors = candle_core::safetensors::load(init, &device)
                .map_err(|e| TrainError::Config(format!("{}: {e}", init.display())))?;
            supernet
                .load_subnet_weights(&sampler.paths(0)[0], &tensors)
                .map_err(|e| TrainError::Config(format!("{}: {e}", init.display())))?;
            observer.message(&format!("initial weights from {}", init.display()));
        }
        let state = TrainState {
            step: 0,
            epoch: 0,
            seed: config.seed,
            sampler: sampler.name().to_string(),
            config: serde_json::to_string(config).expect("config serialises"),
            history: Vec::new(),
            accumulator: EpochAccumulator::default(),
        };
        (state, Vec::new(), EpochAccumulator::default())
    };
    // The config of record is the one in effect now (a resumed run may change max_steps etc.).
    state.config = serde_json::to_string(config).expect("config serialises");
    fairnas_model::persist::write_atomically(&out.join("config.json"), config_json.as_bytes())
        .map_err(io_err(out))?;

    let description = match &config.arch {
        None => format!("{} supernet, {} sampler", space.name, sampler.name()),
        Some(a) => format!("{a} stand-alone"),
    };
    observer.started(stop_at, state.step, &description);
    let paths_per_step = sampler.paths(0).len();
    while state.step < stop_at {
        let epoch = state.step / steps_per_epoch;
        let first_batch = (state.step % steps_per_epoch) as usize;
        let loader =
            TrainLoader::new(store.clone(), transform, config.seed, epoch, first_batch, config.batch_size, 2);
        for batch in loader {
            let batch = batch?;
            let started = Instant::now();
            let n = batch.labels.len();
            let x = batch_tensor(batch.pixels, n, size, &device)?;
            let labels: Vec<u32> = batch.labels.iter().map(|&l| l as u32).collect();
            let y = Tensor::from_vec(labels, n, &device)?;
            let paths: Vec<ChoicePath> = sampler.paths(state.step);
            let lr = schedule.lr(state.step);
            let stats = train_step(&supernet, &paths, &x, &y, &options, &mut sgd, lr).map_err(|e| {
                TrainError::Step(format!(
                    "step {} (epoch {epoch}, batch {}): {}; the last checkpoint ({}) is intact",
                    state.step,
                    batch.index,
                    without_backtrace(e),
                    ckpt.display()
                ))
            })?;
            let wall = started.elapsed().as_secs_f64();
            let loss_sum: f64 = stats.losses.iter().map(|&l| l as f64).sum();
            let correct: usize = stats.correct.iter().sum();
            accumulator.loss_sum += loss_sum;
            accumulator.correct += correct as u64;
            accumulator.seen += (n * paths.len()) as u64;
            accumulator.images += n as u64;
            accumulator.path_steps += paths.len() as u64;
            accumulator.wall_s += wall;
            state.step += 1;
            observer.step(&StepReport {
                step: state.step,
                epoch,
                loss: loss_sum / paths.len() as f64,
                top1: correct as f64 / (n * paths.len()) as f64,
                lr,
                images_per_s: n as f64 / wall,
            });
            let epoch_done = state.step % steps_per_epoch == 0;
            if epoch_done {
                let mut metrics = EpochMetrics {
                    epoch,
                    step: state.step,
                    train_loss: accumulator.loss_sum / accumulator.path_steps.max(1) as f64,
                    train_top1: accumulator.correct as f64 / accumulator.seen.max(1) as f64,
                    lr,
                    images_per_s: accumulator.images as f64 / accumulator.wall_s.max(1e-9),
                    wall_s: accumulator.wall_s,
                    eval_top1: None,
                };
                if let Some(eval) = &eval_store {
                    let (c, t) = evaluate(&supernet, &paths[0], eval, &transform, config.batch_size)?;
                    metrics.eval_top1 = Some(c as f64 / t.max(1) as f64);
                }
                observer.epoch(&metrics);
                history.push(metrics);
                accumulator = EpochAccumulator::default();
            }
            let checkpoint_due = config.checkpoint_every > 0 && state.step % config.checkpoint_every == 0;
            if epoch_done || checkpoint_due || state.step == stop_at {
                state.epoch = state.step / steps_per_epoch;
                state.history = history.clone();
                state.accumulator = accumulator.clone();
                write_checkpoint(out, &supernet, &sgd, &state, &history)?;
                observer.checkpoint(state.step, &ckpt);
            }
            if state.step >= stop_at {
                break;
            }
        }
    }
    if config.arch.is_some() {
        let weights = supernet.subnet_weights(&sampler.paths(0)[0])?;
        let bytes = safetensors::serialize(weights.iter().map(|(k, v)| (k.as_str(), v)), None)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let path = out.join("weights.safetensors");
        fairnas_model::persist::write_atomically(&path, &bytes).map_err(io_err(&path))?;
    }
    Ok(RunSummary {
        out: out.to_path_buf(),
        steps: state.step,
        epochs_completed: history.len() as u64,
        finished: state.step >= total_steps,
        history,
        train_images: store.len(),
        steps_per_epoch,
        paths_per_step,
        images_in_memory: store.in_memory(),
    })
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
    let ckpt = if checkpoint.is_dir() { checkpoint_path(checkpoint) } else { checkpoint.to_path_buf() };
    let state = checkpoint::read_state(&ckpt)?;
    let config: TrainConfig = serde_json::from_str(&state.config)
        .map_err(|e| TrainError::Config(format!("{}: unreadable config: {e}", ckpt.display())))?;
    let space = config.search_space().map_err(TrainError::Config)?;
    let supernet = Supernet::new(&space, config.seed, &Device::Cpu)?;
    let mut sgd = Sgd::new(SgdConfig::default());
    checkpoint::load(&ckpt, &supernet, &mut sgd)?;
    Ok((supernet, config, state))
}
