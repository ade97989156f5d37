//! Training batches: a seeded shuffle per epoch, augmentation seeded per sample, decoding in
//! parallel behind a bounded queue.
//!
//! Everything a batch contains is a pure function of (seed, epoch, batch index): the epoch's
//! order comes from [`epoch_order`], each sample's augmentation from
//! `SampleRng::new(seed, epoch, dataset index)`. A run resumed at step `s` therefore sees exactly
//! the batches an uninterrupted run would have seen, and the thread count changes nothing.
//!
//! Small datasets (CIFAR-10: 50,000 images of 32x32, 150 MB) are decoded once into memory
//! ([`ImageStore::load`] decides by size), so epochs after the first cost no JPEG decoding.

use std::sync::Arc;

use image::RgbImage;
use rayon::prelude::*;

use crate::dataset::{read_cifar_record, Sample, Source};
use crate::loader::Background;
use crate::train_transform::TrainTransform;
use crate::{load_rgb, DataError, Dataset};
use fairnas_ops::rng::{epoch_order, SampleRng};

/// Decoded datasets up to this many bytes of RGB pixels are kept in memory.
pub const DEFAULT_CACHE_BYTES: usize = 2 << 30;

/// A training set's samples, with their images decoded in memory when they fit.
#[derive(Clone)]
pub struct ImageStore {
    samples: Arc<Vec<Sample>>,
    /// Decoded once when the set is small; `None`: decoded on every access.
    decoded: Option<Arc<Vec<RgbImage>>>,
}

/// Decodes one sample's image.
pub fn decode_sample(sample: &Sample) -> Result<RgbImage, DataError> {
    match &sample.source {
        Source::File(path) => load_rgb(path),
        Source::CifarRecord { file, offset } => read_cifar_record(file, *offset),
    }
}

impl ImageStore {
    /// Decodes `dataset` into memory when its first image says the whole set fits in
    /// `cache_bytes`; otherwise reads from disk on demand. A corrupt image fails the load,
    /// naming the file.
    pub fn load(dataset: &Dataset, cache_bytes: usize) -> Result<Self, DataError> {
        let samples = Arc::new(dataset.samples.clone());
        let fits = match samples.first() {
            None => false,
            Some(first) => decode_sample(first)?.as_raw().len().saturating_mul(samples.len()) <= cache_bytes,
        };
        let decoded = if fits {
            let images: Vec<RgbImage> = samples.par_iter().map(decode_sample).collect::<Result<_, _>>()?;
            Some(Arc::new(images))
        } else {
            None
        };
        Ok(ImageStore { samples, decoded })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn in_memory(&self) -> bool {
        self.decoded.is_some()
    }

    pub fn label(&self, index: usize) -> usize {
        self.samples[index].label
    }

    /// Where sample `index` comes from, for messages.
    pub fn describe(&self, index: usize) -> String {
        self.samples[index].source.describe()
    }

    /// The image of sample `index`, borrowed from memory or decoded.
    pub fn with_image<R>(&self, index: usize, f: impl FnOnce(&RgbImage) -> R) -> Result<R, DataError> {
        match &self.decoded {
            Some(images) => Ok(f(&images[index])),
            None => Ok(f(&decode_sample(&self.samples[index])?)),
        }
    }
}

/// A `[n, 3, size, size]` batch of augmented images with their labels.
#[derive(Debug)]
pub struct TrainBatch {
    /// Position of the batch within its epoch.
    pub index: usize,
    pub pixels: Vec<f32>,
    pub labels: Vec<usize>,
    pub decode_time: std::time::Duration,
}

/// Builds batch `batch` of `epoch` (samples `order[batch*B .. (batch+1)*B]`).
pub fn make_batch(
    store: &ImageStore,
    order: &[usize],
    transform: &TrainTransform,
    seed: u64,
    epoch: u64,
    batch: usize,
    batch_size: usize,
) -> Result<TrainBatch, DataError> {
    let started = std::time::Instant::now();
    let members = &order[batch * batch_size..((batch + 1) * batch_size).min(order.len())];
    let pixels: Vec<Vec<f32>> = members
        .par_iter()
        .map(|&i| {
            let mut rng = SampleRng::new(seed, epoch, i as u64);
            store.with_image(i, |img| transform.apply(img, &mut rng))
        })
        .collect::<Result<_, _>>()?;
    Ok(TrainBatch {
        index: batch,
        pixels: pixels.concat(),
        labels: members.iter().map(|&i| store.label(i)).collect(),
        decode_time: started.elapsed(),
    })
}

/// The full batches of one epoch from `first_batch` on (the last partial batch is dropped, as
/// `drop_last=True` does: every step sees `batch_size` images), produced in the background.
pub struct TrainLoader(Background<Result<TrainBatch, DataError>>);

impl TrainLoader {
    /// Number of full batches per epoch.
    pub fn batches_per_epoch(len: usize, batch_size: usize) -> usize {
        len / batch_size.max(1)
    }

    pub fn new(
        store: ImageStore,
        transform: TrainTransform,
        seed: u64,
        epoch: u64,
        first_batch: usize,
        batch_size: usize,
        prefetch: usize,
    ) -> Self {
        TrainLoader(Background::spawn(prefetch, move |sender| {
            let order = epoch_order(store.len(), seed, epoch);
            for b in first_batch..Self::batches_per_epoch(store.len(), batch_size) {
                let batch = make_batch(&store, &order, &transform, seed, epoch, b, batch_size);
                let failed = batch.is_err();
                if sender.send(batch).is_err() || failed {
                    return;
                }
            }
        }))
    }
}

impl Iterator for TrainLoader {
    type Item = Result<TrainBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}
