//! Parallel decoding into batches, behind a bounded queue.
//!
//! A producer thread walks the dataset in order, decodes and transforms each batch's images in
//! parallel on the rayon pool and hands finished batches to the consumer through a channel that
//! holds at most `prefetch` batches. Memory therefore stays at a few batches whatever the
//! dataset size, and the network never waits for decoding while the queue is full.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::dataset::{read_cifar_record, Sample, Source};
use crate::{DataError, EvalTransform};

/// What to do with an image that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadImage {
    /// Stop with an error naming the file.
    #[default]
    Fail,
    /// Leave it out, count it and report it.
    Skip,
}

impl std::str::FromStr for OnBadImage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(OnBadImage::Fail),
            "skip" => Ok(OnBadImage::Skip),
            other => Err(format!("'{other}' is not fail or skip")),
        }
    }
}

/// Decoded, transformed images in dataset order.
#[derive(Debug)]
pub struct Batch {
    /// `[n, 3, crop, crop]` row-major.
    pub pixels: Vec<f32>,
    pub labels: Vec<usize>,
    /// Positions of these samples in the dataset.
    pub indices: Vec<usize>,
    /// Samples of this batch that were skipped, with the reason.
    pub skipped: Vec<(usize, DataError)>,
    /// Wall time the producer spent decoding and transforming this batch.
    pub decode_time: std::time::Duration,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Decodes and transforms one sample.
pub fn load_sample(sample: &Sample, transform: &EvalTransform) -> Result<Vec<f32>, DataError> {
    match &sample.source {
        Source::File(path) => transform.load(path),
        Source::CifarRecord { file, offset } => {
            transform.apply_image(&read_cifar_record(file, *offset)?, file)
        }
    }
}

/// Items made by a producer thread, handed over through a queue of at most `prefetch` items.
/// Iteration ends when the producer returns; a producer panic is re-raised in the consumer.
pub(crate) struct Background<T> {
    receiver: Receiver<T>,
    producer: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Background<T> {
    pub(crate) fn spawn(prefetch: usize, produce: impl FnOnce(SyncSender<T>) + Send + 'static) -> Self {
        let (sender, receiver) = sync_channel(prefetch.max(1));
        let producer = std::thread::spawn(move || produce(sender));
        Background { receiver, producer: Some(producer) }
    }
}

impl<T> Iterator for Background<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self.receiver.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                if let Some(handle) = self.producer.take() {
                    if let Err(panic) = handle.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                None
            }
        }
    }
}

/// An iterator of batches produced in the background.
pub struct EvalLoader(Background<Result<Batch, DataError>>);

impl EvalLoader {
    pub fn new(
        samples: Vec<Sample>,
        transform: EvalTransform,
        batch_size: usize,
        prefetch: usize,
        on_bad_image: OnBadImage,
    ) -> Self {
        let batch_size = batch_size.max(1);
        EvalLoader(Background::spawn(prefetch, move |sender| {
            for (b, chunk) in samples.chunks(batch_size).enumerate() {
                let started = std::time::Instant::now();
                let decoded: Vec<Result<Vec<f32>, DataError>> =
                    chunk.par_iter().map(|s| load_sample(s, &transform)).collect();
                let mut batch = Batch {
                    pixels: Vec::with_capacity(chunk.len() * 3 * (transform.crop * transform.crop) as usize),
                    labels: Vec::with_capacity(chunk.len()),
                    indices: Vec::with_capacity(chunk.len()),
                    skipped: Vec::new(),
                    decode_time: started.elapsed(),
                };
                for (i, (sample, result)) in chunk.iter().zip(decoded).enumerate() {
                    let index = b * batch_size + i;
                    match result {
                        Ok(pixels) => {
                            batch.pixels.extend_from_slice(&pixels);
                            batch.labels.push(sample.label);
                            batch.indices.push(index);
                        }
                        Err(e) if on_bad_image == OnBadImage::Skip => batch.skipped.push((index, e)),
                        Err(e) => {
                            let _ = sender.send(Err(e));
                            return;
                        }
                    }
                }
                if sender.send(Ok(batch)).is_err() {
                    return; // the consumer stopped early
                }
            }
        }))
    }
}

impl Iterator for EvalLoader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

/// The path to name for a sample in reports.
pub fn sample_path(sample: &Sample) -> String {
    sample.source.describe()
}
