//! Forward-pass parity against golden logits from an independent PyTorch implementation
//! (tests/fixtures/generate_parity.py). Weights are regenerated from the shared seed on both
//! sides; inputs are two real ImageNet photos stored as uint8.
//!
//! Tolerance: max |rust - torch| <= 1e-4 * max |torch| over all logits of the batch (f32).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fairnas_model::network::Network;
use fairnas_model::selection::ModelSelection;
use fairnas_model::synthetic::synthetic_weights;

const SEED: u64 = 7;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The fixture's uint8 NHWC photos, normalised exactly as the generator does (f32 ops in the
/// same order), as NCHW.
fn inputs() -> Tensor {
    let t = candle_core::safetensors::load(fixture("inputs.safetensors"), &Device::Cpu).unwrap();
    let pixels = &t["pixels"];
    let (n, h, w, c) = pixels.dims4().unwrap();
    let raw = pixels.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let mut out = vec![0f32; n * c * h * w];
    for b in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let v = raw[((b * h + y) * w + x) * c + ch] as f32 / 255.0;
                    out[((b * c + ch) * h + y) * w + x] = (v - MEAN[ch]) / STD[ch];
                }
            }
        }
    }
    Tensor::from_vec(out, (n, c, h, w), &Device::Cpu).unwrap()
}

fn check(model: &str) {
    check_spec(model, &ModelSelection::named(model).resolve().unwrap());
}

fn check_spec(model: &str, spec: &fairnas_model::spec::ArchSpec) {
    let dev = Device::Cpu;
    let weights = synthetic_weights(spec, SEED, &dev).unwrap();
    let net = Network::load(spec, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
    let got = net.forward(&inputs()).unwrap().to_vec2::<f32>().unwrap();
    let golden = candle_core::safetensors::load(fixture(&format!("{model}.safetensors")), &dev).unwrap();
    let want = golden["logits"].to_vec2::<f32>().unwrap();
    assert_eq!((got.len(), got[0].len()), (want.len(), want[0].len()), "{model}: logits shape");
    let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff =
        got.iter().flatten().zip(want.iter().flatten()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let rel = max_diff / scale;
    eprintln!("{model}: max |diff| {max_diff:.3e}, max |logit| {scale:.3e}, relative {rel:.3e}");
    assert!(rel <= 1e-4, "{model}: relative error {rel:.3e} exceeds 1e-4");
}

#[test]
fn fairnas_a_matches_pytorch() {
    check("fairnas-a");
}

#[test]
fn fairnas_a_se_1_0_matches_pytorch() {
    check("fairnas-a-se-1.0");
}

#[test]
fn fairnas_b_se_0_5_transfer_matches_pytorch() {
    check("fairnas-b-se-0.5-transfer");
}

#[test]
fn efficientnet_lite0_matches_pytorch() {
    check("efficientnet-lite0");
}

/// A NAS-Bench-Macro sub-network with all three choices, including skip blocks that project
/// (stride 2) and skip blocks that are the identity.
#[test]
fn nas_bench_macro_subnet_matches_pytorch() {
    let space = fairnas_model::search_space::SearchSpace::nas_bench_macro();
    check_spec("nas-bench-macro-01201020", &space.subnet(&space.parse_choices("01201020").unwrap()).unwrap());
}

/// `fairnas verify` promises the same answer for any batch size and thread count: each image's
/// logits must be bit-identical whether it runs alone or in a batch, on 1 thread or 2.
#[test]
fn logits_do_not_depend_on_batch_composition_or_threads() {
    let dev = Device::Cpu;
    let spec = ModelSelection::named("fairnas-a-se-1.0").resolve().unwrap();
    let weights = synthetic_weights(&spec, SEED, &dev).unwrap();
    let net = Network::load(&spec, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
    let x = inputs();
    let both = Tensor::cat(&[&x, &x.flip(&[3]).unwrap(), &x.narrow(0, 0, 1).unwrap()], 0).unwrap();
    let run = |threads: usize, input: &Tensor| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| net.forward(input).unwrap().to_vec2::<f32>().unwrap())
    };
    let batched = run(2, &both);
    for threads in [1, 2] {
        for (i, in_batch) in batched.iter().enumerate() {
            let alone = run(threads, &both.narrow(0, i, 1).unwrap());
            let same = alone[0].iter().zip(in_batch).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "image {i} differs alone on {threads} thread(s) vs in a batch of 5");
        }
    }
}
