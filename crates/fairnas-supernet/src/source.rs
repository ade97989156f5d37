//! What the trainer and the scorer read: labelled images as batches, from any source.
//!
//! The trainer never opens folders or decodes JPEGs itself: it asks an [`ImageSource`] for the
//! batches of an epoch and for held-out images. [`crate::images`] (the default `images`
//! feature) implements it over `fairnas-data`'s datasets; a library user with images in memory,
//! in another format or from another loader implements the five methods and trains on them.
//! Without the feature this crate, and `fairnas-search` above it, link no image decoder.
//!
//! **Determinism is the source's contract.** Batch `b` of `epoch` must be a pure function of
//! (seed, epoch, b): that is what makes a resumed run end with the same bits as an
//! uninterrupted one ([`crate::trainer`]).

use candle_core::{Device, Tensor};

use crate::supernet::{Mode, Supernet};
use crate::trainer::TrainError;

/// Any error a source reports; the trainer wraps it in [`TrainError::Data`].
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// A batch of `[n, 3, size, size]` images (channel-major, already normalised) and their labels.
#[derive(Debug, Clone)]
pub struct LabelledBatch {
    /// Position of the batch within its epoch (0 for held-out batches).
    pub index: usize,
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
}

impl LabelledBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images as a `[n, 3, size, size]` tensor.
    pub fn images(self, size: usize, device: &Device) -> candle_core::Result<Tensor> {
        let n = self.labels.len();
        Tensor::from_vec(self.pixels, (n, 3, size, size), device)
    }

    /// Images `range` of the batch (positions within it), as a batch with the same index.
    pub fn slice(&self, range: std::ops::Range<usize>) -> LabelledBatch {
        let per_image = self.pixels.len() / self.labels.len().max(1);
        LabelledBatch {
            index: self.index,
            pixels: self.pixels[range.start * per_image..range.end * per_image].to_vec(),
            labels: self.labels[range].to_vec(),
        }
    }
}

/// Batches of one epoch, in order.
pub type Batches<'a> = Box<dyn Iterator<Item = Result<LabelledBatch, SourceError>> + 'a>;

/// Labelled square images the trainer can draw batches from.
pub trait ImageSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes the labels range over.
    fn num_classes(&self) -> usize;

    /// Side of the square images the batches hold.
    fn image_size(&self) -> usize;

    /// What the images are, for messages ("CIFAR-10 train JPEG tree").
    fn describe(&self) -> String;

    /// Whether the decoded images are held in memory (reported in the run summary).
    fn in_memory(&self) -> bool {
        true
    }

    /// The full batches of `epoch` (augmented, shuffled), from batch `first` on; a partial last
    /// batch is dropped. Batch `b` must be a pure function of (`seed`, `epoch`, `b`).
    fn train_batches(&self, seed: u64, epoch: u64, first: usize, batch_size: usize) -> Batches<'_>;

    /// Shard `shard` of `shards` of the epoch's full batches of `shards * batch_size` images:
    /// images `shard * batch_size .. (shard + 1) * batch_size` of global batch `b`, for `b` from
    /// `first` on. The ranks of a data-parallel job read shards `0..shards` and together see
    /// exactly the global batches. This default decodes the whole global batch and keeps the
    /// shard; a source that can decode only the shard's images should (the image folders do).
    fn train_shards(
        &self,
        seed: u64,
        epoch: u64,
        first: usize,
        batch_size: usize,
        shard: usize,
        shards: usize,
    ) -> Batches<'_> {
        if shards <= 1 {
            return self.train_batches(seed, epoch, first, batch_size);
        }
        let range = shard * batch_size..(shard + 1) * batch_size;
        Box::new(
            self.train_batches(seed, epoch, first, batch_size * shards)
                .map(move |batch| batch.map(|b| b.slice(range.clone()))),
        )
    }

    /// The images `indices` under the evaluation transform (no augmentation), in that order.
    fn eval_batch(&self, indices: &[usize]) -> Result<LabelledBatch, SourceError>;
}

/// Full batches per epoch of `len` images (the trainer's steps per epoch).
pub fn batches_per_epoch(len: usize, batch_size: usize) -> usize {
    len / batch_size.max(1)
}

/// The epoch of the seeded stream BN recalibration draws from: far from any training epoch, so
/// recalibration batches never repeat a training batch's augmentation.
const RECALIBRATION_EPOCH: u64 = u64::MAX / 2;

/// Held-out top-1 of `path` in eval mode: (correct, total). Reads batch by batch, so any split
/// size fits in memory.
pub fn evaluate(
    supernet: &Supernet,
    path: &[usize],
    source: &dyn ImageSource,
    batch_size: usize,
) -> Result<(usize, usize), TrainError> {
    let mut correct = 0;
    let indices: Vec<usize> = (0..source.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, labels) = held_out_batch(source, chunk)?;
        let predicted = supernet.forward(&x, path, Mode::Eval)?.argmax(1)?.to_vec1::<u32>()?;
        correct += labels.iter().zip(&predicted).filter(|(l, p)| l == p).count();
    }
    Ok((correct, source.len()))
}

/// Re-estimates the BN statistics of `path` on `batches` training batches (see
/// [`recalibration_batches`]); returns the number of batches used.
pub fn recalibrate(
    supernet: &Supernet,
    path: &[usize],
    source: &dyn ImageSource,
    batch_size: usize,
    batches: usize,
    seed: u64,
) -> Result<usize, TrainError> {
    let tensors = recalibration_batches(source, batch_size, batches, seed)?;
    Ok(supernet.recalibrate_bn(path, tensors.iter())?)
}

/// The training batches BN recalibration uses: the train transform (augmented), in a fixed
/// seeded order independent of the run's epochs; at most one epoch's worth.
pub fn recalibration_batches(
    source: &dyn ImageSource,
    batch_size: usize,
    batches: usize,
    seed: u64,
) -> Result<Vec<Tensor>, TrainError> {
    let size = source.image_size();
    source
        .train_batches(seed, RECALIBRATION_EPOCH, 0, batch_size.min(source.len()))
        .take(batches)
        .map(|batch| Ok(batch.map_err(TrainError::Data)?.images(size, &Device::Cpu)?))
        .collect()
}

/// Every held-out image, eval transform, in source order, as batches with their labels.
pub fn held_out_batches(
    source: &dyn ImageSource,
    batch_size: usize,
) -> Result<Vec<(Tensor, Vec<u32>)>, TrainError> {
    let indices: Vec<usize> = (0..source.len()).collect();
    indices.chunks(batch_size.max(1)).map(|chunk| held_out_batch(source, chunk)).collect()
}

fn held_out_batch(source: &dyn ImageSource, chunk: &[usize]) -> Result<(Tensor, Vec<u32>), TrainError> {
    let batch = source.eval_batch(chunk).map_err(TrainError::Data)?;
    let labels = batch.labels.clone();
    Ok((batch.images(source.image_size(), &Device::Cpu)?, labels))
}
