//! Deploy networks as ONNX: each file next to a reference input and our logits on it, so any
//! runtime can be checked against this project (`benches/peers/onnx_roundtrip.py` runs
//! onnxruntime and OpenVINO on them).
//!
//! Writes, into the folder given (default: `fairnas-deploy-onnx` in the temp folder), for
//! EfficientNet-Lite0 with its real checkpoint on the photos of `data/images`, and for
//! FairNAS-A, FairNAS-A-SE (1.0), FairNAS-B-SE-0.5-transfer and a NAS-Bench-Macro sub-network
//! with projecting skips on synthetic weights and seeded inputs:
//! - `<model>.onnx` ([`fairnas_data::deploy::write_onnx`]: opset 17, BN folded, the family's
//!   preprocessing in the metadata), and
//! - `<model>.reference.safetensors`: `input` (what the network is fed, preprocessed) and
//!   `logits` (what [`Network::forward`] returns for it).
//!
//! Run: `cargo run --release -p fairnas-data --example deploy_onnx [OUT [MODEL...]]`; named
//! models instead of the list above are written on synthetic weights (Lite0 on its checkpoint),
//! as the CPU inference benchmark does. `FAIRNAS_SHARED` locates the Lite0 checkpoint; it
//! defaults to the `shared` folder beside the workspace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fairnas_data::deploy::write_onnx;
use fairnas_data::evaluate::preprocessed_batches;
use fairnas_data::Dataset;
use fairnas_model::network::Network;
use fairnas_model::search_space::SearchSpace;
use fairnas_model::selection::ModelSelection;
use fairnas_model::spec::ArchSpec;
use fairnas_model::synthetic::synthetic_weights;
use fairnas_ops::rng::SampleRng;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/<crate> in a workspace");
    let mut args = std::env::args().skip(1);
    let out = args.next().map_or_else(|| std::env::temp_dir().join("fairnas-deploy-onnx"), PathBuf::from);
    std::fs::create_dir_all(&out)?;
    let mut models: Vec<String> = args.collect();
    if models.is_empty() {
        models = ["efficientnet-lite0", "fairnas-a", "fairnas-a-se-1.0", "fairnas-b-se-0.5-transfer"]
            .map(String::from)
            .to_vec();
        deploy_synthetic(&SearchSpace::nas_bench_macro().subnet(&[1, 2, 0, 1, 2, 0, 1, 0])?, &out)?;
    }
    for name in &models {
        match name.as_str() {
            "efficientnet-lite0" => deploy_lite0(workspace, &out)?,
            _ => deploy_synthetic(&ModelSelection::named(name).resolve()?, &out)?,
        }
    }
    println!("ok: {} (check them with benches/peers/onnx_roundtrip.py)", out.display());
    Ok(())
}

/// Lite0 on its real checkpoint, fed the photos of `data/images`.
fn deploy_lite0(workspace: &Path, out: &Path) -> Result<(), Error> {
    let shared =
        std::env::var_os("FAIRNAS_SHARED").map_or_else(|| workspace.join("../shared"), PathBuf::from);
    let lite0 = ModelSelection::named("efficientnet-lite0").resolve()?;
    let checkpoint = shared.join("data/weights/efficientnet-lite0-57934424.pth");
    let tensors = fairnas_model::weights::load_tensors(
        &checkpoint.display().to_string(),
        &lite0,
        &Default::default(),
        &Device::Cpu,
    )
    .map_err(|e| format!("{e} (set FAIRNAS_SHARED to the shared folder)"))?;
    let photos = Dataset::detect_imagenet(&workspace.join("data/images"))?.samples;
    let n = photos.len();
    let (x, _labels) = preprocessed_batches(&lite0, photos, n)?.remove(0);
    deploy(&lite0, &tensors, &x, out)
}

/// `spec` on synthetic weights (seed 7), fed 4 seeded inputs uniform in [-2, 2).
fn deploy_synthetic(spec: &ArchSpec, out: &Path) -> Result<(), Error> {
    let device = Device::Cpu;
    let tensors = synthetic_weights(spec, 7, &device)?;
    let s = spec.input_size;
    let mut rng = SampleRng::new(11, 0, 0);
    let values: Vec<f32> =
        (0..4 * spec.in_channels * s * s).map(|_| (4.0 * rng.uniform() - 2.0) as f32).collect();
    let x = Tensor::from_vec(values, (4, spec.in_channels, s, s), &device)?;
    deploy(spec, &tensors, &x, out)
}

/// Writes `spec` as ONNX and our logits on `x` beside it.
fn deploy(spec: &ArchSpec, tensors: &HashMap<String, Tensor>, x: &Tensor, out: &Path) -> Result<(), Error> {
    let net = Network::load(spec, VarBuilder::from_tensors(tensors.clone(), DType::F32, x.device()))?;
    let logits = net.forward(x)?;
    let file = write_onnx(spec, tensors, &out.join(format!("{}.onnx", spec.name)), true)?;
    let reference = out.join(format!("{}.reference.safetensors", spec.name));
    let named = HashMap::from([("input".to_string(), x.clone()), ("logits".to_string(), logits)]);
    candle_core::safetensors::save(&named, &reference)?;
    println!("{file}\n  reference: {} ({} images)", reference.display(), x.dim(0)?);
    Ok(())
}
