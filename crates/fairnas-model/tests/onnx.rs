//! ONNX export checked by an independent runtime: tract (sonos/tract, its own ONNX parser and
//! kernels) loads each exported file and its logits must equal ours to 1e-4 relative to the
//! largest logit magnitude (the f32 parity measure of tests/parity.rs), with BN folded and
//! unfolded, on synthetic weights (the released FairNAS checkpoints are not public) and on the
//! real EfficientNet-Lite0 checkpoint with real photos.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use fairnas_model::network::Network;
use fairnas_model::onnx::{self, OnnxError, OnnxOptions};
use fairnas_model::search_space::SearchSpace;
use fairnas_model::selection::ModelSelection;
use fairnas_model::spec::{ArchSpec, BlockKind};
use fairnas_model::synthetic::synthetic_weights;
use tract_onnx::prelude::*;

const TOLERANCE: f32 = 1e-4;

/// Seeded inputs `[n, 3, s, s]` in roughly the normalised-image range.
fn inputs(spec: &ArchSpec, n: usize, seed: u64) -> Vec<f32> {
    let s = spec.input_size;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * spec.in_channels * s * s)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn ours(spec: &ArchSpec, tensors: &HashMap<String, Tensor>, x: &[f32], n: usize) -> Vec<f32> {
    let dev = Device::Cpu;
    let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), DType::F32, &dev);
    let net = Network::load(spec, vb).unwrap();
    let s = spec.input_size;
    let x = Tensor::from_vec(x.to_vec(), (n, spec.in_channels, s, s), &dev).unwrap();
    net.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// The exported file run by tract; `batch` fixes the dynamic batch dimension for tract's
/// optimiser, so the same file is run at two batch sizes.
fn tract_logits(bytes: &[u8], spec: &ArchSpec, x: &[f32], n: usize) -> Vec<f32> {
    let s = spec.input_size;
    let shape = [n, spec.in_channels, s, s];
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor4 = tract_ndarray::Array4::from_shape_vec(shape, x.to_vec()).unwrap().into();
    let out = model.run(tvec!(input.into())).unwrap();
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    assert_eq!(view.shape(), &[n, spec.classes]);
    view.iter().copied().collect()
}

type Tensor4 = tract_onnx::prelude::Tensor;

fn max_relative(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale.max(1e-12)
}

/// Exports with BN folded and unfolded and checks both files at batch 1 and 3.
fn round_trip(spec: &ArchSpec, tensors: &HashMap<String, Tensor>, seed: u64) {
    for fold_bn in [true, false] {
        let model = onnx::export(spec, tensors, &OnnxOptions { fold_bn, ..Default::default() }).unwrap();
        let bytes = onnx::to_bytes(&model);
        let ops: Vec<&str> = model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops.contains(&"BatchNormalization"), !fold_bn, "{}: {ops:?}", spec.name);
        for n in [1, 3] {
            let x = inputs(spec, n, seed + n as u64);
            let want = ours(spec, tensors, &x, n);
            let got = tract_logits(&bytes, spec, &x, n);
            let rel = max_relative(&got, &want);
            eprintln!("{} fold_bn={fold_bn} batch {n}: max relative difference {rel:.2e}", spec.name);
            assert!(rel <= TOLERANCE, "{} fold_bn={fold_bn} batch {n}: {rel:e} > {TOLERANCE:e}", spec.name);
        }
    }
}

#[test]
fn named_models_round_trip_through_tract() {
    for name in ["fairnas-a", "fairnas-a-se-1.0", "fairnas-b-se-0.5-transfer"] {
        let spec = ModelSelection::named(name).resolve().unwrap();
        let tensors = synthetic_weights(&spec, 7, &Device::Cpu).unwrap();
        round_trip(&spec, &tensors, 11);
    }
}

#[test]
fn nas_bench_macro_subnet_with_projecting_skips_round_trips() {
    let space = SearchSpace::nas_bench_macro();
    // Choice 0 is the skip; layers 2 and 5 change stride/width, so their skips project.
    let choices = [1, 2, 0, 1, 2, 0, 1, 0];
    let spec = space.subnet(&choices).unwrap();
    let geometry = spec.block_geometry(spec.input_size);
    let projecting = spec
        .blocks
        .iter()
        .zip(&geometry)
        .filter(|(b, g)| b.kind == BlockKind::Skip && b.skip_projects(g.in_channels))
        .count();
    assert!(projecting >= 1, "{} has no projecting skip", spec.name);
    let tensors = synthetic_weights(&spec, 3, &Device::Cpu).unwrap();
    round_trip(&spec, &tensors, 5);
}

#[test]
fn real_lite0_checkpoint_round_trips_on_real_photos() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = fairnas_data::shared_data::for_test(&repo) else { return };
    let spec = ModelSelection::named("efficientnet-lite0").resolve().unwrap();
    let weights = shared.join("data/weights/efficientnet-lite0-57934424.pth");
    let tensors = fairnas_model::weights::load_tensors(
        &weights.display().to_string(),
        &spec,
        &Default::default(),
        &Device::Cpu,
    )
    .unwrap();
    let photos = fairnas_data::Dataset::detect_imagenet(&shared.join("data/imagenet-sample"))
        .unwrap()
        .limit(8)
        .samples;
    let n = photos.len();
    let batches = fairnas_data::evaluate::preprocessed_batches(&spec, photos, n).unwrap();
    let x: Vec<f32> = batches[0].0.flatten_all().unwrap().to_vec1().unwrap();
    let model = onnx::export(&spec, &tensors, &OnnxOptions::default()).unwrap();
    let ops: Vec<&str> = model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(ops.contains(&"Pad"), "TF-SAME stride-2 convs need explicit pads: {ops:?}");
    let want = ours(&spec, &tensors, &x, n);
    let got = tract_logits(&onnx::to_bytes(&model), &spec, &x, n);
    let rel = max_relative(&got, &want);
    eprintln!("efficientnet-lite0 (real checkpoint, {n} photos): max relative difference {rel:.2e}");
    assert!(rel <= TOLERANCE, "{rel:e}");
    // The same top-1 class for every photo.
    let top1 = |v: &[f32]| -> Vec<usize> {
        v.chunks(spec.classes)
            .map(|row| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap())
            .collect()
    };
    assert_eq!(top1(&got), top1(&want));
}

#[test]
fn bad_inputs_are_errors_naming_the_problem_and_write_nothing() {
    let spec = ModelSelection::named("fairnas-c").resolve().unwrap();
    let mut tensors = synthetic_weights(&spec, 1, &Device::Cpu).unwrap();
    tensors.remove("blocks.4.dw.conv.weight");
    let e = onnx::export(&spec, &tensors, &OnnxOptions::default()).unwrap_err();
    assert!(matches!(&e, OnnxError::Missing(name) if name == "blocks.4.dw.conv.weight"), "{e}");
    tensors.insert(
        "blocks.4.dw.conv.weight".into(),
        Tensor::zeros((3, 1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = onnx::export(&spec, &tensors, &OnnxOptions::default()).unwrap_err();
    assert!(e.to_string().contains("blocks.4.dw.conv.weight"), "{e}");
    let mut bad = spec.clone();
    bad.blocks[3].kernel = 4;
    let e = onnx::export(&bad, &tensors, &OnnxOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::Spec(_)), "{e}");
    // A write into a missing folder fails without leaving a file behind.
    let good = synthetic_weights(&spec, 1, &Device::Cpu).unwrap();
    let model = onnx::export(&spec, &good, &OnnxOptions::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("fairnas-onnx-{}", std::process::id()));
    let path = dir.join("missing").join("model.onnx");
    assert!(onnx::write(&path, &model).unwrap_err().to_string().contains("model.onnx"));
    std::fs::create_dir_all(&dir).unwrap();
    let size = onnx::write(&dir.join("model.onnx"), &model).unwrap();
    assert_eq!(std::fs::metadata(dir.join("model.onnx")).unwrap().len(), size);
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.onnx")], "no temporary left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}
