//! Image folders and CIFAR-10 batches as an [`ImageSource`] (the default `images` feature):
//! `fairnas-data`'s datasets, decoded once into memory when they fit, with the training
//! recipe's augmentation, and [`run`], the trainer on the folders a [`TrainConfig`] names.
//!
//! ```no_run
//! use fairnas_model::search_space::SearchSpace;
//! use fairnas_supernet::images::ImageFolder;
//! use fairnas_supernet::source::ImageSource;
//!
//! let space = SearchSpace::nas_bench_macro();
//! let train = ImageFolder::open("data/cifar10-mini".as_ref(), "train", None, &space)?;
//! assert_eq!(train.num_classes(), 10);
//! # Ok::<(), fairnas_supernet::trainer::TrainError>(())
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use fairnas_data::{Dataset, ImageStore, TrainLoader, TrainTransform};
use fairnas_model::search_space::SearchSpace;
use rayon::prelude::*;

use crate::checkpoint::TrainState;
use crate::scoring::{ScoringBatches, ScoringSettings};
use crate::source::{self, Batches, ImageSource, LabelledBatch, SourceError};
use crate::supernet::Supernet;
use crate::trainer::{self, RunSummary, TrainConfig, TrainError, TrainObserver, TrainingData};

/// Decoded datasets up to this many bytes of RGB pixels are kept in memory.
pub use fairnas_data::train_loader::DEFAULT_CACHE_BYTES;

/// Batches decoded ahead of the step that needs them.
const PREFETCH: usize = 2;

/// One split of an image dataset with its train and eval transforms.
#[derive(Clone)]
pub struct ImageFolder {
    store: ImageStore,
    transform: TrainTransform,
    layout: String,
    classes: usize,
}

impl ImageFolder {
    /// Opens split `split` (`train`, `test`) of `data` (see [`open_split`]), keeps a fixed
    /// subset of `limit` images ([`subset`]) and decodes it, with the augmentation the
    /// recipe uses for `space`'s input size ([`train_transform`]).
    pub fn open(
        data: &Path,
        split: &str,
        limit: Option<usize>,
        space: &SearchSpace,
    ) -> Result<Self, TrainError> {
        Self::from_dataset(&subset(open_split(data, split)?, limit), train_transform(space))
    }

    /// Decodes `dataset` (into memory when it fits in [`DEFAULT_CACHE_BYTES`]).
    pub fn from_dataset(dataset: &Dataset, transform: TrainTransform) -> Result<Self, TrainError> {
        let store = ImageStore::load(dataset, DEFAULT_CACHE_BYTES).map_err(boxed)?;
        Ok(ImageFolder { store, transform, layout: dataset.layout.clone(), classes: dataset.num_classes })
    }
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> TrainError {
    TrainError::Data(Box::new(e))
}

impl ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.store.len()
    }

    fn num_classes(&self) -> usize {
        self.classes
    }

    fn image_size(&self) -> usize {
        self.transform.output_size() as usize
    }

    fn describe(&self) -> String {
        self.layout.clone()
    }

    fn in_memory(&self) -> bool {
        self.store.in_memory()
    }

    fn train_batches(&self, seed: u64, epoch: u64, first: usize, batch_size: usize) -> Batches<'_> {
        self.train_shards(seed, epoch, first, batch_size, 0, 1)
    }

    fn train_shards(
        &self,
        seed: u64,
        epoch: u64,
        first: usize,
        batch_size: usize,
        shard: usize,
        shards: usize,
    ) -> Batches<'_> {
        let shard = fairnas_data::Shard { index: shard, count: shards };
        let loader = TrainLoader::shard(
            self.store.clone(),
            self.transform,
            seed,
            epoch,
            first,
            batch_size,
            shard,
            PREFETCH,
        );
        Box::new(loader.map(|batch| {
            let batch = batch.map_err(|e| Box::new(e) as SourceError)?;
            let labels = batch.labels.iter().map(|&l| l as u32).collect();
            Ok(LabelledBatch { index: batch.index, pixels: batch.pixels, labels })
        }))
    }

    fn eval_batch(&self, indices: &[usize]) -> Result<LabelledBatch, SourceError> {
        let store = &self.store;
        let pixels: Vec<Vec<f32>> = indices
            .par_iter()
            .map(|&i| {
                store.with_image(i, |img| self.transform.evaluate(img, Path::new(&store.describe(i))))?
            })
            .collect::<Result<_, _>>()?;
        let labels = indices.iter().map(|&i| store.label(i) as u32).collect();
        Ok(LabelledBatch { index: 0, pixels: pixels.concat(), labels })
    }
}

/// Opens one split (`train`, `test`) of a data folder: CIFAR-10 (JPEG tree or binary batches)
/// or any `<split>/<class>/*` image folder.
pub fn open_split(data: &Path, split: &str) -> Result<Dataset, TrainError> {
    let tree = data.join(split);
    if tree.is_dir() {
        let cifar = fairnas_data::classes::CIFAR10_CLASSES.iter().all(|c| tree.join(c).is_dir());
        let dataset = if cifar { Dataset::cifar10(data, split) } else { Dataset::image_folder(&tree) };
        return dataset.map_err(boxed);
    }
    Dataset::cifar10(data, split).map_err(boxed)
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

/// The recipe's augmentation: pad-crop for inputs up to 64x64 (CIFAR), RandomResizedCrop else.
pub fn train_transform(space: &SearchSpace) -> TrainTransform {
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

/// Trains according to `config` on the folder `config.data` (its `train` split, and its
/// `test` split when `eval_every_epoch`), into `out`: [`trainer::train`] on [`ImageFolder`]s.
pub fn run(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<RunSummary, TrainError> {
    run_in(&crate::world::Solo, config, out, resume, observer)
}

/// [`run`] as one process of the data-parallel job `world` ([`trainer::train_in`]).
pub fn run_in(
    world: &dyn crate::world::World,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<RunSummary, TrainError> {
    trainer::check_run_folder(config, out, resume)?;
    let space = config.search_space()?;
    let dataset = subset(open_split(&config.data, "train")?, config.train_limit);
    trainer::check_classes(&dataset.layout, dataset.num_classes, &space)?;
    observer.message(&format!("{}: {} training images, decoding…", dataset.layout, dataset.len()));
    let train = ImageFolder::from_dataset(&dataset, train_transform(&space))?;
    let eval = match config.eval_every_epoch {
        true => Some(ImageFolder::open(&config.data, "test", config.eval_limit, &space)?),
        false => None,
    };
    let data = TrainingData { train: &train, eval: eval.as_ref().map(|e| e as &dyn ImageSource) };
    trainer::train_in(world, config, &data, out, resume, observer)
}

/// Decodes the recalibration and held-out batches `settings` describe, for the run `train`.
pub fn scoring_batches(
    settings: &ScoringSettings,
    train: &TrainConfig,
    space: &SearchSpace,
) -> Result<ScoringBatches, TrainError> {
    let recalibration = if settings.bn_recal_batches > 0 {
        let images = ImageFolder::open(&settings.data, "train", train.train_limit, space)?;
        source::recalibration_batches(
            &images,
            settings.bn_recal_batch_size,
            settings.bn_recal_batches,
            train.seed ^ settings.seed,
        )?
    } else {
        Vec::new()
    };
    let held_out = ImageFolder::open(&settings.data, &settings.split, Some(settings.eval_limit), space)?;
    Ok(ScoringBatches { recalibration, held_out: source::held_out_batches(&held_out, 250)? })
}

/// A trained supernet run with one sub-network's BN statistics re-estimated.
pub struct LoadedSubnet {
    pub checkpoint: std::path::PathBuf,
    pub supernet: Supernet,
    pub config: TrainConfig,
    pub state: TrainState,
    pub space: SearchSpace,
    pub path: Vec<usize>,
    /// The data folder recalibrated on.
    pub data: std::path::PathBuf,
    /// Batches the BN statistics were re-estimated on.
    pub recalibrated: usize,
}

/// Loads the run at `run` (a checkpoint or its folder) and recalibrates sub-network `choices`
/// on `recal_batches` of the training images of `data` (`None`: the run's folder), with the
/// run's batch size and seed, so every caller that recalibrates the same path gets the same
/// statistics.
pub fn load_subnet(
    run: &Path,
    choices: &str,
    recal_batches: usize,
    data: Option<&Path>,
) -> Result<LoadedSubnet, TrainError> {
    let checkpoint = trainer::resolve_checkpoint(run);
    let (supernet, config, state) = trainer::load_run(&checkpoint)?;
    let space = supernet.space().clone();
    let path = space.parse_choices(choices)?;
    let data = data.map_or_else(|| config.data.clone(), Path::to_path_buf);
    let recalibrated = if recal_batches > 0 {
        let images = ImageFolder::open(&data, "train", config.train_limit, &space)?;
        source::recalibrate(&supernet, &path, &images, config.batch_size, recal_batches, config.seed)?
    } else {
        0
    };
    Ok(LoadedSubnet { checkpoint, supernet, config, state, space, path, data, recalibrated })
}

/// Which sub-network of which run, and how many batches re-estimate its BN statistics
/// ([`load_subnet`]'s arguments as a value). With the `clap` feature, a `clap::Args` group.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SubnetSelection {
    /// A training checkpoint (checkpoint.safetensors) or its run folder.
    #[cfg_attr(feature = "clap", arg(long, value_name = "CKPT"))]
    pub supernet: PathBuf,
    /// The sub-network: one choice per searchable layer (digits, e.g. 12012012, or
    /// comma-separated numbers).
    #[cfg_attr(feature = "clap", arg(long, value_name = "DIGITS"))]
    pub choices: String,
    /// Re-estimate the sub-network's BN statistics on K training batches first (0: keep the
    /// supernet's running statistics).
    #[cfg_attr(feature = "clap", arg(long, value_name = "K", default_value_t = 20))]
    pub bn_recal_batches: usize,
    /// Data folder (default: the run's).
    #[cfg_attr(feature = "clap", arg(long, value_name = "DIR"))]
    pub data: Option<PathBuf>,
}

impl SubnetSelection {
    /// Loads the run and recalibrates the path ([`load_subnet`]).
    pub fn load(&self) -> Result<LoadedSubnet, TrainError> {
        load_subnet(&self.supernet, &self.choices, self.bn_recal_batches, self.data.as_deref())
    }
}

/// A sub-network's held-out accuracy with its provenance ([`evaluate_subnet`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetEvaluation {
    pub supernet: PathBuf,
    pub space: String,
    pub choices: String,
    pub trained_steps: u64,
    pub sampler: String,
    /// Batches the BN statistics were re-estimated on, of `bn_recal_batch_size` images.
    pub bn_recal_batches: usize,
    pub bn_recal_batch_size: usize,
    pub data: PathBuf,
    pub split: String,
    pub images: usize,
    pub correct: usize,
    pub top1: f64,
    pub wall_s: f64,
}

impl std::fmt::Display for SubnetEvaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: top-1 {:.2}% ({}/{}) on {} after BN recalibration on {} batches of {}",
            self.space,
            self.choices,
            100.0 * self.top1,
            self.correct,
            self.images,
            self.data.join(&self.split).display(),
            self.bn_recal_batches,
            self.bn_recal_batch_size
        )
    }
}

/// Loads and recalibrates `subnet`, then scores it on `eval_limit` images (all when `None`)
/// of the data folder's `split`, `batch_size` at a time.
pub fn evaluate_subnet(
    subnet: &SubnetSelection,
    split: &str,
    batch_size: usize,
    eval_limit: Option<usize>,
) -> Result<SubnetEvaluation, TrainError> {
    let started = std::time::Instant::now();
    let LoadedSubnet { supernet, config, state, space, path, data, recalibrated, .. } = subnet.load()?;
    let held_out = ImageFolder::open(&data, split, eval_limit, &space)?;
    let (correct, images) = source::evaluate(&supernet, &path, &held_out, batch_size)?;
    Ok(SubnetEvaluation {
        supernet: subnet.supernet.clone(),
        space: space.name.clone(),
        choices: subnet.choices.clone(),
        trained_steps: state.step,
        sampler: state.sampler,
        bn_recal_batches: recalibrated,
        bn_recal_batch_size: config.batch_size,
        data,
        split: split.to_string(),
        images,
        correct,
        top1: correct as f64 / images.max(1) as f64,
        wall_s: started.elapsed().as_secs_f64(),
    })
}
