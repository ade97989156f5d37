//! The supernet against the verified inference network, and its gradient flow.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fairnas_model::network::Network;
use fairnas_model::search_space::SearchSpace;
use fairnas_model::zoo::FairnasVariant;
use fairnas_supernet::{Mode, Supernet};

fn input(n: usize, size: usize) -> Tensor {
    Tensor::randn(0f32, 1., (n, 3, size, size), &Device::Cpu).unwrap()
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
