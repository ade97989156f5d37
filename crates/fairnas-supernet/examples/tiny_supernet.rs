//! Define a search space in code, train its supernet with strict fairness, score sub-networks.
//!
//! The space has 4 searchable layers of 3 candidates each (identity, MBConv k3 e3, MBConv k5 e6:
//! NAS-Bench-Macro's candidates at a quarter of its width), 81 sub-networks. Its supernet is
//! trained for a few steps on the project's CIFAR-10 subset (`data/cifar10-mini`) with the
//! strict-fairness sampler (every step trains 3 paths that use every candidate of every layer
//! exactly once, then makes one update). The run's checkpoint is reloaded with [`load_run`],
//! which rebuilds the custom space from the checkpoint alone; two sub-networks are scored
//! one-shot (BN recalibrated on training batches, then accuracy and loss on the test images);
//! the checkpoint is saved again and reloaded, and the scores must come out bit for bit the same.
//!
//! Run: `cargo run --release -p fairnas-supernet --example tiny_supernet`

use std::path::Path;

use fairnas_model::search_space::SearchSpace;
use fairnas_model::spec::BlockSpec;
use fairnas_supernet::checkpoint;
use fairnas_supernet::images::ImageFolder;
use fairnas_supernet::scoring::{OneShotScore, PrefixScorer, ScoringBatches};
use fairnas_supernet::source::{held_out_batches, recalibration_batches};
use fairnas_supernet::trainer::{checkpoint_path, load_run, train, StepReport, TrainObserver, TrainingData};
use fairnas_supernet::{Mode, Sgd, SgdConfig, Supernet, TrainConfig};

type Error = Box<dyn std::error::Error>;

/// Keeps every step's training loss.
struct Losses(Vec<f64>);
impl TrainObserver for Losses {
    fn step(&mut self, report: &StepReport) {
        self.0.push(report.loss);
    }
}

fn score(
    supernet: &Supernet,
    batches: &ScoringBatches,
    paths: &[Vec<usize>],
) -> Result<Vec<OneShotScore>, Error> {
    let mut scorer = PrefixScorer::new(supernet, batches);
    Ok(paths.iter().map(|p| scorer.score(p)).collect::<Result<_, _>>()?)
}

fn main() -> Result<(), Error> {
    // 1. The space: NAS-Bench-Macro's base network and candidates, 4 layers, narrower.
    let macro_space = SearchSpace::nas_bench_macro();
    let mut space = macro_space.clone();
    space.name = "tiny-4".into();
    space.base.stem.channels = 16;
    space.base.head.channels = 256;
    space.layers = [(24, 2), (24, 1), (48, 2), (48, 1)]
        .iter()
        .map(|&(out_channels, stride)| {
            macro_space.layers[0].iter().map(|&b| BlockSpec { out_channels, stride, ..b }).collect()
        })
        .collect();
    space.validate()?;

    // 2. A few strict-fair training steps on real images.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cifar10-mini");
    let train_images = ImageFolder::open(&data, "train", None, &space)?;
    let test_images = ImageFolder::open(&data, "test", None, &space)?;
    let config = TrainConfig {
        space: space.clone(),
        sampler: "strict".into(),
        data: data.clone(),
        batch_size: 16,
        max_steps: Some(6),
        seed: 3,
        ..TrainConfig::default()
    };
    let out = std::env::temp_dir().join(format!("fairnas-tiny-supernet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut losses = Losses(Vec::new());
    let data_in = TrainingData { train: &train_images, eval: None };
    let summary = train(&config, &data_in, &out, false, &mut losses)?;
    println!("trained {} steps x {} paths; losses {:.3?}", summary.steps, summary.paths_per_step, losses.0);
    if losses.0.len() != 6 || !losses.0.iter().all(|l| l.is_finite() && *l > 0.0) {
        return Err(format!("expected 6 finite positive losses, got {:?}", losses.0).into());
    }

    // 3. Reload the run: the checkpoint alone rebuilds the custom space and its weights.
    let (supernet, reloaded_config, state) = load_run(&checkpoint_path(&out))?;
    if reloaded_config.space != space || state.step != 6 {
        return Err("the checkpoint does not hold the custom space and its 6 steps".into());
    }

    // 4. One-shot scores of two sub-networks on fixed data: 4 recalibration batches, 80 test images.
    let batches = ScoringBatches {
        recalibration: recalibration_batches(&train_images, 16, 4, 0)?,
        held_out: held_out_batches(&test_images, 80)?,
    };
    let paths = vec![vec![1, 1, 1, 1], vec![2, 0, 2, 0]];
    let scores = score(&supernet, &batches, &paths)?;
    for (p, s) in paths.iter().zip(&scores) {
        println!("path {p:?}: top-1 {}/{} correct, loss {:.4}", s.correct, s.images, s.loss);
    }
    // The scorer shares work between paths; recalibrating and evaluating one path by hand agrees.
    supernet.recalibrate_bn(&paths[1], &batches.recalibration)?;
    let (x, labels) = &batches.held_out[0];
    let by_hand = OneShotScore::of_logits(&supernet.forward(x, &paths[1], Mode::Eval)?, labels)?;
    if by_hand != scores[1] || !scores.iter().all(|s| s.loss.is_finite() && s.images == 80) {
        return Err(format!("inconsistent scores: {scores:?}, by hand {by_hand:?}").into());
    }

    // 5. Save the checkpoint again, reload it, score again: bit-identical.
    let copy = out.join("copy.safetensors");
    let mut sgd = Sgd::new(SgdConfig::default());
    let state = checkpoint::load(&checkpoint_path(&out), &supernet, &mut sgd)?; // with its momentum
    checkpoint::save(&copy, &supernet, &sgd, &state)?;
    let (reloaded, _, _) = load_run(&copy)?;
    let again = score(&reloaded, &batches, &paths)?;
    std::fs::remove_dir_all(&out)?;
    if again != scores {
        // (f64 ==: for these finite, positive losses, the same bits)
        return Err(format!("scores changed through save and reload: {scores:?} then {again:?}").into());
    }
    println!(
        "ok: losses finite, scores consistent, and bit-identical after saving and reloading the checkpoint"
    );
    Ok(())
}
