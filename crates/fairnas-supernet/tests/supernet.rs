//! The supernet against the verified inference network, and its gradient flow.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fairnas_model::network::Network;
use fairnas_model::search_space::SearchSpace;
use fairnas_model::zoo::FairnasVariant;
use fairnas_supernet::{Mode, Supernet};

/// A deterministic pseudo-random batch (candle's randn is not seeded).
fn input(n: usize, size: usize) -> Tensor {
    let mut rng = fairnas_ops::rng::SampleRng::new(42, n as u64, size as u64);
    let values: Vec<f32> =
        (0..n * 3 * size * size).map(|_| (rng.uniform() * 2.0 - 1.0) as f32 * 1.7).collect();
    Tensor::from_vec(values, (n, 3, size, size), &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// In eval mode, a path of the supernet computes exactly what the plain network (checked
/// against PyTorch) computes with that path's weights: same structure, same names.
#[test]
fn eval_paths_equal_the_inference_network() {
    let dev = Device::Cpu;
    let spaces = [
        (SearchSpace::nas_bench_macro(), vec!["01201020", "22222222", "00000000"], 32),
        (
            SearchSpace::fairnas(FairnasVariant { se_ratio: Some(0.5), transfer: false }),
            vec!["4041500552122115153"],
            64,
        ),
    ];
    for (space, paths, size) in spaces {
        let supernet = Supernet::new(&space, 3, &dev).unwrap();
        let x = input(2, size);
        for digits in paths {
            let path = space.parse_choices(digits).unwrap();
            let ours = supernet.forward(&x, &path, Mode::Eval).unwrap();
            let spec = space.subnet(&path).unwrap();
            let weights = supernet.subnet_weights(&path).unwrap();
            Network::check_tensors(&spec, &weights).unwrap();
            let net = Network::load(&spec, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
            let want = net.forward(&x).unwrap();
            let diff = max_abs(&(ours - &want).unwrap());
            let scale = max_abs(&want);
            assert!(diff <= 1e-4 * scale, "{} {digits}: {diff} vs scale {scale}", space.name);
        }
    }
}

/// Backward through one path reaches exactly that path's candidates and the shared parts.
#[test]
fn gradients_reach_only_the_sampled_path() {
    let dev = Device::Cpu;
    let space = SearchSpace::nas_bench_macro();
    let supernet = Supernet::new(&space, 1, &dev).unwrap();
    let path = space.parse_choices("12012012").unwrap();
    let loss =
        supernet.forward(&input(4, 32), &path, Mode::Train).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut with_grad = 0;
    for (name, var) in supernet.named_vars() {
        let stat = name.ends_with("running_mean") || name.ends_with("running_var");
        let on_path = match name.strip_prefix("layers.") {
            None => true,
            Some(rest) => {
                let mut it = rest.split('.');
                let l: usize = it.next().unwrap().parse().unwrap();
                let c: usize = it.next().unwrap().parse().unwrap();
                path[l] == c
            }
        };
        let g = grads.get(var);
        if stat || !on_path {
            assert!(g.is_none_or(|g| max_abs(g) == 0.0), "{name} got a gradient");
        } else {
            let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(max_abs(g) > 0.0, "{name}: zero gradient");
            with_grad += 1;
        }
    }
    assert!(with_grad > 20, "{with_grad}");
}

/// Training-mode BN moves the running statistics of the path (and only those), and
/// `reset_bn_stats` puts them back to zero mean and unit variance.
#[test]
fn train_mode_updates_and_reset_restores_running_stats() {
    let dev = Device::Cpu;
    let space = SearchSpace::nas_bench_macro();
    let supernet = Supernet::new(&space, 2, &dev).unwrap();
    let path = vec![1, 1, 1, 1, 1, 1, 1, 1];
    let stat = |name: &str| {
        let (_, v) = supernet.named_vars().find(|(n, _)| *n == name).unwrap();
        v.as_tensor().to_vec1::<f32>().unwrap()
    };
    supernet.forward(&(input(8, 32) * 3.0).unwrap(), &path, Mode::Train).unwrap();
    let moved = stat("layers.0.1.dw.bn.running_var");
    assert!(moved.iter().any(|&v| (v - 1.0).abs() > 1e-3), "{moved:?}");
    assert!(stat("layers.0.2.dw.bn.running_var").iter().all(|&v| v == 1.0), "another candidate's BN moved");
    assert!(stat("stem.bn.running_mean").iter().any(|&v| v != 0.0));
    supernet.reset_bn_stats(&path).unwrap();
    assert!(stat("layers.0.1.dw.bn.running_var").iter().all(|&v| v == 1.0));
    assert!(stat("stem.bn.running_mean").iter().all(|&v| v == 0.0));
}

#[test]
fn initialisation_is_a_function_of_the_seed() {
    let dev = Device::Cpu;
    let space = SearchSpace::nas_bench_macro();
    let values = |seed: u64| {
        let s = Supernet::new(&space, seed, &dev).unwrap();
        s.named_vars()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(values(5), values(5));
    assert_ne!(values(5), values(6));
}

mod training_step {
    use super::*;
    use fairnas_supernet::{
        train_step, PathSampler, Sgd, SgdConfig, SharedGradient, StepOptions, StrictFair,
    };

    fn opts(label_smoothing: f64, shared: SharedGradient) -> StepOptions {
        StepOptions { label_smoothing, shared, max_grad_norm: None }
    }

    fn snapshot(s: &Supernet) -> std::collections::HashMap<String, Vec<f32>> {
        s.named_vars()
            .map(|(n, v)| (n.to_string(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    }

    fn batch() -> (Tensor, Tensor) {
        let labels = Tensor::new(&[0u32, 3, 7, 9, 1, 1, 4, 2], &Device::Cpu).unwrap();
        (input(8, 32), labels)
    }

    /// One strict-fair step updates every convolution of every candidate of every layer (and of
    /// the shared parts) and runs every candidate's BN. (BN scales directly followed by ReLU, a
    /// per-channel depthwise conv and another training-mode BN get an exactly zero gradient:
    /// that scale cancels; PyTorch behaves the same.)
    #[test]
    fn one_strict_step_trains_every_candidate() {
        let space = SearchSpace::nas_bench_macro();
        let supernet = Supernet::new(&space, 4, &Device::Cpu).unwrap();
        let before = snapshot(&supernet);
        let paths = StrictFair::new(&space.choice_counts(), 11).unwrap().paths(0);
        assert_eq!(paths.len(), 3);
        let (x, y) = batch();
        let mut sgd = Sgd::new(SgdConfig::default());
        let stats =
            train_step(&supernet, &paths, &x, &y, &opts(0.1, SharedGradient::Sum), &mut sgd, 0.05).unwrap();
        assert_eq!(stats.losses.len(), 3);
        let after = snapshot(&supernet);
        let mut checked = 0;
        for (name, old) in &before {
            if name.ends_with("conv.weight")
                || name.ends_with("running_var")
                || name.starts_with("classifier")
            {
                assert_ne!(old, &after[name], "{name} was not updated");
                checked += 1;
            }
        }
        assert!(checked > 60, "{checked}");
    }

    /// Mean divides only the shared parameters' step by the number of paths.
    #[test]
    fn shared_gradient_sum_versus_mean() {
        let space = SearchSpace::nas_bench_macro();
        let paths = StrictFair::new(&space.choice_counts(), 2).unwrap().paths(0);
        let (x, y) = batch();
        let plain = SgdConfig { momentum: 0.0, nesterov: false, weight_decay: 0.0 };
        let delta = |shared| {
            let s = Supernet::new(&space, 8, &Device::Cpu).unwrap();
            let before = snapshot(&s);
            // A large step, so that the parameter deltas are far above f32 resolution.
            train_step(&s, &paths, &x, &y, &opts(0.0, shared), &mut Sgd::new(plain.clone()), 5.0).unwrap();
            let after = snapshot(&s);
            move |name: &str| before[name].iter().zip(&after[name]).map(|(a, b)| b - a).collect::<Vec<f32>>()
        };
        let (sum, mean) = (delta(SharedGradient::Sum), delta(SharedGradient::Mean));
        for name in ["head.conv.weight", "classifier.weight", "stem.bn.weight"] {
            for (s, m) in sum(name).iter().zip(mean(name)) {
                assert!((s - 3.0 * m).abs() <= 1e-3 * s.abs().max(1e-4), "{name}: {s} vs 3 x {m}");
            }
        }
        assert_eq!(sum("layers.3.2.dw.conv.weight"), mean("layers.3.2.dw.conv.weight"));
    }

    #[test]
    fn repeated_steps_on_one_batch_lower_the_loss() {
        let space = SearchSpace::nas_bench_macro();
        let supernet = Supernet::new(&space, 1, &Device::Cpu).unwrap();
        let sampler = StrictFair::new(&space.choice_counts(), 3).unwrap();
        let (x, y) = batch();
        let mut sgd = Sgd::new(SgdConfig::default());
        let mean_loss = |stats: fairnas_supernet::StepStats| stats.losses.iter().sum::<f32>() / 3.0;
        let step = |sgd: &mut Sgd, i| {
            mean_loss(
                train_step(&supernet, &sampler.paths(i), &x, &y, &opts(0.0, SharedGradient::Sum), sgd, 0.005)
                    .unwrap(),
            )
        };
        let first = step(&mut sgd, 0);
        let mut last = first;
        for i in 1..10 {
            last = step(&mut sgd, i);
        }
        assert!(last < first * 0.9, "loss {first} -> {last}");
    }

    #[test]
    fn a_non_finite_loss_names_the_path_and_updates_nothing() {
        let space = SearchSpace::nas_bench_macro();
        let supernet = Supernet::new(&space, 1, &Device::Cpu).unwrap();
        let (x, y) = batch();
        // A diverged classifier (NaN input would be masked by candle's ReLU, which maps NaN to 0).
        let (_, bias) = supernet.named_vars().find(|(n, _)| *n == "classifier.bias").unwrap();
        bias.set(&(bias.as_tensor() * f64::NAN).unwrap()).unwrap();
        let before = snapshot(&supernet);
        let err = train_step(
            &supernet,
            &[vec![1, 2, 0, 1, 2, 0, 1, 2]],
            &x,
            &y,
            &opts(0.0, SharedGradient::Sum),
            &mut Sgd::default(),
            0.1,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("loss is NaN on path 12012012"), "{err}");
        let after = snapshot(&supernet);
        for (name, old) in &before {
            if !name.ends_with("running_mean") && !name.ends_with("running_var") {
                let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(old), bits(&after[name]), "{name} changed");
            }
        }
    }
}

mod resume {
    use super::*;
    use fairnas_supernet::checkpoint::{load, save, TrainState};
    use fairnas_supernet::{
        train_step, PathSampler, Sgd, SgdConfig, SharedGradient, StepOptions, StrictFair,
    };

    fn run(supernet: &Supernet, sgd: &mut Sgd, steps: std::ops::Range<u64>) {
        let space = supernet.space().clone();
        let sampler = StrictFair::new(&space.choice_counts(), 17).unwrap();
        let options = StepOptions { label_smoothing: 0.1, shared: SharedGradient::Sum, max_grad_norm: None };
        for step in steps {
            let x = input(4, 32);
            let y = Tensor::new(&[(step % 10) as u32, 3, 5, 7], &Device::Cpu).unwrap();
            train_step(supernet, &sampler.paths(step), &x, &y, &options, sgd, 0.01).unwrap();
        }
    }

    fn bits(s: &Supernet) -> Vec<(String, Vec<u32>)> {
        s.named_vars()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect(),
                )
            })
            .collect()
    }

    /// Stopping after step 2, saving, and resuming in a fresh process state gives exactly the
    /// weights of an uninterrupted 4-step run.
    #[test]
    fn resumed_training_is_bit_identical() {
        let space = SearchSpace::nas_bench_macro();
        let dir = std::env::temp_dir().join(format!("fairnas-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let straight = Supernet::new(&space, 9, &Device::Cpu).unwrap();
        let mut sgd = Sgd::new(SgdConfig::default());
        run(&straight, &mut sgd, 0..4);

        let first = Supernet::new(&space, 9, &Device::Cpu).unwrap();
        let mut sgd1 = Sgd::new(SgdConfig::default());
        run(&first, &mut sgd1, 0..2);
        let state = TrainState {
            step: 2,
            epoch: 0,
            seed: 17,
            sampler: "strict".into(),
            config: "{}".into(),
            ..Default::default()
        };
        let ckpt = dir.join("last.safetensors");
        save(&ckpt, &first, &sgd1, &state).unwrap();

        let resumed = Supernet::new(&space, 1234, &Device::Cpu).unwrap(); // other init: all overwritten
        let mut sgd2 = Sgd::new(SgdConfig::default());
        assert_eq!(load(&ckpt, &resumed, &mut sgd2).unwrap(), state);
        run(&resumed, &mut sgd2, 2..4);
        assert!(bits(&resumed) == bits(&straight), "resumed weights differ from the uninterrupted run");

        // A checkpoint of another space, a truncated file and a foreign file are clear errors.
        let other = Supernet::new(&SearchSpace::fairnas(FairnasVariant::PLAIN), 1, &Device::Cpu).unwrap();
        let err = load(&ckpt, &other, &mut Sgd::default()).unwrap_err().to_string();
        assert!(err.contains("does not fit this supernet") && err.contains("last.safetensors"), "{err}");
        let bytes = std::fs::read(&ckpt).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(load(&cut, &resumed, &mut Sgd::default()).is_err());
        let foreign = dir.join("foreign.safetensors");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("x".to_string(), input(1, 2))]),
            &foreign,
        )
        .unwrap();
        assert!(load(&foreign, &resumed, &mut Sgd::default())
            .unwrap_err()
            .to_string()
            .contains("not a fairnas training checkpoint"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

mod clipping_and_recalibration {
    use super::*;
    use fairnas_supernet::{train_step, Sgd, SgdConfig, SharedGradient, StepOptions};

    /// With plain SGD, a clipped step moves the parameters by exactly lr x max_norm in total.
    #[test]
    fn gradient_clipping_bounds_the_update() {
        let space = SearchSpace::nas_bench_macro();
        let s = Supernet::new(&space, 3, &Device::Cpu).unwrap();
        let before: Vec<(String, Tensor)> = s
            .named_vars()
            .map(|(n, v)| (n.to_string(), v.as_tensor().to_dtype(DType::F64).unwrap()))
            .collect();
        let y = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu).unwrap();
        let options =
            StepOptions { label_smoothing: 0.0, shared: SharedGradient::Sum, max_grad_norm: Some(0.5) };
        let plain = SgdConfig { momentum: 0.0, nesterov: false, weight_decay: 0.0 };
        let stats =
            train_step(&s, &[vec![1; 8]], &input(4, 32), &y, &options, &mut Sgd::new(plain), 0.1).unwrap();
        assert!(stats.grad_norm.unwrap() > 0.5, "the test needs a gradient above the bound");
        let mut sq = 0f64;
        for ((name, old), (_, var)) in before.iter().zip(s.named_vars()) {
            if name.ends_with("running_mean") || name.ends_with("running_var") {
                continue;
            }
            let d = (var.as_tensor().to_dtype(DType::F64).unwrap() - old).unwrap();
            sq += d.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        }
        assert!((sq.sqrt() - 0.05).abs() < 1e-4, "update norm {}", sq.sqrt());
    }

    /// After recalibration the path's running statistics are the average of the batches'
    /// statistics, whatever training left there before.
    #[test]
    fn bn_recalibration_averages_the_batches() {
        let space = SearchSpace::nas_bench_macro();
        let s = Supernet::new(&space, 3, &Device::Cpu).unwrap();
        let path = vec![2; 8];
        s.forward(&(input(4, 32) * 5.0).unwrap(), &path, Mode::Train).unwrap();
        let a = input(4, 32);
        let b = input(6, 32).affine(2.0, 1.0).unwrap();
        assert_eq!(s.recalibrate_bn(&path, [&a, &b]).unwrap(), 2);
        // The stem BN sees the stem conv's output: compare with the two batches' means.
        let stem_out = |x: &Tensor| {
            let (_, w) = s.named_vars().find(|(n, _)| *n == "stem.conv.weight").unwrap();
            x.conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap().mean((0, 2, 3)).unwrap()
        };
        let want = ((stem_out(&a) + stem_out(&b)).unwrap() / 2.0).unwrap();
        let (_, got) = s.named_vars().find(|(n, _)| *n == "stem.bn.running_mean").unwrap();
        assert!(max_abs(&(got.as_tensor() - &want).unwrap()) < 1e-5);
        // Recalibrating again from scratch with only batch `a` forgets `b`.
        s.recalibrate_bn(&path, [&a]).unwrap();
        assert!(max_abs(&(got.as_tensor() - stem_out(&a)).unwrap()) < 1e-5);
    }
}
