//! A search space built in code, with 12 candidates in one layer, trained from an in-memory
//! image source (no folders, no decoding): the checkpoint stores the space, so `load_run`
//! rebuilds it and the reloaded supernet scores sub-networks with the same bits.

use fairnas_model::search_space::SearchSpace;
use fairnas_ops::rng::{epoch_order, SampleRng};
use fairnas_supernet::scoring::{PrefixScorer, ScoringBatches};
use fairnas_supernet::source::{self, Batches, ImageSource, LabelledBatch, SourceError};
use fairnas_supernet::trainer::{self, Quiet, TrainConfig, TrainingData};

/// Seeded noise images whose label is their index mod 10; batches in the seeded epoch order,
/// no augmentation: batch `b` is a pure function of (seed, epoch, b), as the trait asks.
struct Noise {
    images: Vec<Vec<f32>>,
}

impl Noise {
    fn new(n: usize) -> Self {
        let images = (0..n)
            .map(|i| {
                let mut rng = SampleRng::new(5, 0, i as u64);
                (0..3 * 32 * 32).map(|_| rng.uniform() as f32 - 0.5).collect()
            })
            .collect();
        Noise { images }
    }

    fn batch(&self, index: usize, members: &[usize]) -> LabelledBatch {
        let pixels = members.iter().flat_map(|&i| self.images[i].iter().copied()).collect();
        LabelledBatch { index, pixels, labels: members.iter().map(|&i| (i % 10) as u32).collect() }
    }
}

impl ImageSource for Noise {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn image_size(&self) -> usize {
        32
    }
    fn describe(&self) -> String {
        "seeded noise".into()
    }
    fn train_batches(&self, seed: u64, epoch: u64, first: usize, batch_size: usize) -> Batches<'_> {
        let order = epoch_order(self.len(), seed, epoch);
        let count = source::batches_per_epoch(self.len(), batch_size);
        Box::new((first..count).map(move |b| Ok(self.batch(b, &order[b * batch_size..(b + 1) * batch_size]))))
    }
    fn eval_batch(&self, indices: &[usize]) -> Result<LabelledBatch, SourceError> {
        Ok(self.batch(0, indices))
    }
}

#[test]
fn a_space_defined_in_code_trains_reloads_and_scores_the_same() {
    // Three NAS-Bench-Macro layers; the first offers 12 candidates (its e3 k3 block, repeated):
    // beyond one digit per layer, and lcm(12, 3, 3) = 12 strictly fair paths per step.
    let macro_space = SearchSpace::nas_bench_macro();
    let mut space = macro_space.clone();
    space.name = "custom".into();
    space.layers.truncate(3);
    space.layers[0] = vec![macro_space.layers[0][1]; 12];
    let config = TrainConfig {
        space: space.clone(),
        epochs: 1,
        batch_size: 8,
        max_steps: Some(2),
        seed: 3,
        ..TrainConfig::default()
    };
    let data = Noise::new(16);
    let dir = std::env::temp_dir().join(format!("fairnas-custom-space-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let training = TrainingData { train: &data, eval: None };
    let summary = trainer::train(&config, &training, &dir, false, &mut Quiet).unwrap();
    assert_eq!((summary.steps, summary.paths_per_step), (2, 12));

    let (reloaded, saved_config, state) = trainer::load_run(&dir).unwrap();
    assert_eq!(reloaded.space(), &space, "the checkpoint rebuilt the space it trained");
    assert_eq!(saved_config.space, space);
    assert_eq!(state.step, 2);

    // Two sub-networks, one choosing candidate 11: scored on the same batches by a fresh
    // reload twice gives the same bits; the text form round-trips past 9.
    let path = space.parse_choices("11,0,2").unwrap();
    assert_eq!(space.format_choices(&path), "11,0,2");
    let batches = ScoringBatches {
        recalibration: source::recalibration_batches(&data, 8, 2, 1).unwrap(),
        held_out: source::held_out_batches(&data, 8).unwrap(),
    };
    let score = |net: &fairnas_supernet::Supernet| {
        let mut scorer = PrefixScorer::new(net, &batches);
        [scorer.score(&path).unwrap(), scorer.score(&[3, 1, 1]).unwrap()]
    };
    let (again, ..) = trainer::load_run(&dir).unwrap();
    let (a, b) = (score(&reloaded), score(&again));
    assert_eq!(a, b);
    assert!(a.iter().all(|s| s.loss.is_finite() && s.images == 16), "{a:?}");
    // Training moved the weights away from the seeded initialisation.
    let fresh = fairnas_supernet::Supernet::new(&space, config.seed, &candle_core::Device::Cpu).unwrap();
    let w = |net: &fairnas_supernet::Supernet| net.subnet_weights(&path).unwrap();
    let (trained, initial) = (w(&reloaded), w(&fresh));
    let moved = trained.iter().any(|(k, t)| {
        let diff = (t - &initial[k]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        diff > 0.0
    });
    assert!(moved, "two steps changed no weight");
    std::fs::remove_dir_all(dir).unwrap();
}
