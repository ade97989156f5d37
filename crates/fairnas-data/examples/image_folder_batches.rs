//! Open an image folder, augment it, iterate training and evaluation batches.
//!
//! The folder is the project's CIFAR-10 subset, `data/cifar10-mini/{train,test}/<class>/*.jpg`
//! (24 training and 8 test JPEGs per class). [`Dataset::image_folder`] labels the images by
//! class folder, [`ImageStore`] decodes a small set once into memory, and [`TrainLoader`] yields
//! shuffled, augmented `[batch, 3, 32, 32]` batches (CIFAR recipe: pad 4, random crop, flip) in
//! the background; [`EvalLoader`] does the same for deterministic evaluation batches. The
//! example fails unless the batches have the expected count, shape and labels, look normalised,
//! and a loader restarted mid-epoch repeats exactly the batches of the uninterrupted one (what
//! makes training resumable).
//!
//! Run: `cargo run --release -p fairnas-data --example image_folder_batches`

use std::path::Path;

use fairnas_data::{
    Dataset, EvalLoader, EvalTransform, ImageStore, Interpolation, Normalization, OnBadImage,
};
use fairnas_data::{TrainBatch, TrainLoader, TrainTransform};

type Error = Box<dyn std::error::Error>;

fn check(ok: bool, what: impl Into<String>) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

/// Mean and standard deviation of a batch's normalised pixels.
fn moments(pixels: &[f32]) -> (f64, f64) {
    let n = pixels.len() as f64;
    let mean = pixels.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = pixels.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn main() -> Result<(), Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cifar10-mini");
    let train = Dataset::image_folder(&root.join("train"))?;
    let test = Dataset::image_folder(&root.join("test"))?;
    println!("train: {} images, {}; test: {} images", train.len(), train.layout, test.len());
    check(
        train.num_classes == 10 && train.len() == 240 && test.len() == 80,
        "expected 10 classes, 240 + 80 images",
    )?;

    // Training: decoded once into memory, then augmented per sample from (seed, epoch, index).
    let store = ImageStore::load(&train, 64 << 20)?;
    check(store.in_memory(), "240 CIFAR images should fit in 64 MiB")?;
    let (batch_size, seed) = (32, 7);
    let transform = TrainTransform::cifar10();
    let epoch = |e: u64, first: usize| -> Result<Vec<TrainBatch>, Error> {
        Ok(TrainLoader::new(store.clone(), transform, seed, e, first, batch_size, 2)
            .collect::<Result<_, _>>()?)
    };
    let epoch0 = epoch(0, 0)?;
    check(
        epoch0.len() == 240 / 32,
        format!("{} batches, expected 7 (last partial one dropped)", epoch0.len()),
    )?;
    let mut per_class = [0usize; 10];
    for batch in &epoch0 {
        let (mean, std) = moments(&batch.pixels);
        println!(
            "epoch 0 batch {}: labels {:?}... mean {mean:+.3} std {std:.3}",
            batch.index,
            &batch.labels[..8]
        );
        check(batch.pixels.len() == batch_size * 3 * 32 * 32, "batch shape is not [32, 3, 32, 32]")?;
        check(batch.pixels.iter().all(|v| v.is_finite()), "non-finite pixel")?;
        check(
            mean.abs() < 0.5 && (0.5..1.5).contains(&std),
            "pixels are not normalised with CIFAR-10 statistics",
        )?;
        batch.labels.iter().for_each(|&l| per_class[l] += 1);
    }
    // Each sample appears at most once per epoch, so no class can exceed its 24 images.
    check(
        per_class.iter().all(|&c| c <= 24) && per_class.iter().sum::<usize>() == 224,
        "epoch repeats samples",
    )?;

    // Resumability: starting at batch 3 gives bit-identical batches 3..7; another epoch reshuffles.
    let resumed = epoch(0, 3)?;
    let same = resumed.iter().zip(&epoch0[3..]).all(|(a, b)| a.pixels == b.pixels && a.labels == b.labels);
    check(resumed.len() == 4 && same, "a loader resumed at batch 3 differs from the uninterrupted epoch")?;
    let epoch1 = epoch(1, 0)?;
    check(epoch1[0].labels != epoch0[0].labels, "epoch 1 has the same order as epoch 0")?;
    println!("resumed loader repeats batches 3..7 exactly; epoch 1 reshuffles");

    // Evaluation: no augmentation, images in folder order, labels by class folder.
    let eval = EvalTransform {
        resize: 32,
        crop: 32,
        interpolation: Interpolation::Bilinear,
        normalization: Normalization::CIFAR10,
    };
    let mut labels = Vec::new();
    for batch in EvalLoader::new(test.samples.clone(), eval, 50, 2, OnBadImage::Fail) {
        let batch = batch?;
        check(batch.pixels.len() == batch.len() * 3 * 32 * 32 && batch.skipped.is_empty(), "bad eval batch")?;
        labels.extend(batch.labels);
    }
    let expected: Vec<usize> = (0..10).flat_map(|c| [c; 8]).collect();
    check(labels == expected, "evaluation labels are not 8 per class in folder order")?;
    println!(
        "ok: {} training batches per epoch, {} evaluation images, all checks passed",
        epoch0.len(),
        labels.len()
    );
    Ok(())
}
