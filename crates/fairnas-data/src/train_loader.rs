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

/// One shard of a data-parallel epoch: every full batch of `count * B` images is cut into
/// `count` consecutive runs of `B`, and this shard is run `index`. Ranks reading shards
/// `0..count` of the same (seed, epoch) see disjoint images that together are the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole batch (no data parallelism).
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Positions within the epoch's order of this shard of global batch `batch`, for shards of
    /// `batch_size` images.
    pub fn positions(self, batch: usize, batch_size: usize) -> std::ops::Range<usize> {
        let start = (batch * self.count + self.index) * batch_size;
        start..start + batch_size
    }
}

/// The augmented images `members` (dataset indices), each with its own seeded stream.
fn decode_members(
    store: &ImageStore,
    members: &[usize],
    transform: &TrainTransform,
    seed: u64,
    epoch: u64,
    batch: usize,
) -> Result<TrainBatch, DataError> {
    let started = std::time::Instant::now();
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
        Self::shard(store, transform, seed, epoch, first_batch, batch_size, Shard::WHOLE, prefetch)
    }

    /// Shard `shard` of each full batch of `shard.count * batch_size` images, from global batch
    /// `first_batch` on: only this shard's images are decoded.
    #[allow(clippy::too_many_arguments)]
    pub fn shard(
        store: ImageStore,
        transform: TrainTransform,
        seed: u64,
        epoch: u64,
        first_batch: usize,
        batch_size: usize,
        shard: Shard,
        prefetch: usize,
    ) -> Self {
        TrainLoader(Background::spawn(prefetch, move |sender| {
            let order = epoch_order(store.len(), seed, epoch);
            for b in first_batch..Self::batches_per_epoch(store.len(), batch_size * shard.count) {
                let members = &order[shard.positions(b, batch_size)];
                let batch = decode_members(&store, members, &transform, seed, epoch, b);
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

#[cfg(test)]
mod shard_tests {
    use super::Shard;

    /// For 1-5 shards and uneven dataset sizes: the shards of an epoch's full batches are
    /// disjoint, cover every full batch's positions, and leave less than one global batch out
    /// (the dropped last batch). Positions index a permutation, so disjoint positions are
    /// disjoint images.
    #[test]
    fn shards_are_disjoint_and_cover_the_epoch() {
        for len in [1, 7, 37, 100, 101, 257] {
            for count in 1..=5 {
                for batch_size in [1, 3, 8] {
                    let global = batch_size * count;
                    let steps = len / global;
                    let mut seen: Vec<usize> = (0..steps)
                        .flat_map(|b| {
                            (0..count).flat_map(move |index| Shard { index, count }.positions(b, batch_size))
                        })
                        .collect();
                    seen.sort_unstable();
                    assert_eq!(
                        seen,
                        (0..steps * global).collect::<Vec<_>>(),
                        "{len} images, {count} x {batch_size}"
                    );
                    assert!(len - steps * global < global);
                }
            }
        }
    }
}
