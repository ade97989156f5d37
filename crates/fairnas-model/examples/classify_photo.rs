//! Read a real PyTorch checkpoint, build the network it belongs to, classify real photos.
//!
//! The checkpoint is EfficientNet-Lite0's ImageNet weights in PyTorch's legacy `torch.save`
//! format (`$FAIRNAS_SHARED/data/weights/efficientnet-lite0-57934424.pth`; `FAIRNAS_SHARED`
//! defaults to the `shared` folder beside the workspace). It is read without Python
//! ([`read_checkpoint`]), its efficientnet_pytorch names are mapped onto the spec's canonical
//! names ([`convert_state_dict`]), and [`Network::load`] builds the candle network from them. The
//! photos are the project's `data/images`, whose ImageNet class is the wnid in the file name;
//! the example fails unless Lite0's top-1 class is that label for every photo.
//! ([`fairnas_model::weights::load_network`] does steps 2 and 3 in one call.)
//!
//! Run: `cargo run --release -p fairnas-model --example classify_photo [IMAGE...]` (other
//! photos must be named `<wnid>_<anything>.JPEG`, like `$FAIRNAS_SHARED/data/imagenet-sample`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fairnas_data::classes::{class_name, imagenet_index};
use fairnas_data::{EvalTransform, Interpolation, Normalization};
use fairnas_model::network::Network;
use fairnas_model::pytorch::{convert_state_dict, read_checkpoint, SourceLayout};
use fairnas_model::selection::ModelSelection;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/<crate> in a workspace");
    let shared =
        std::env::var_os("FAIRNAS_SHARED").map_or_else(|| workspace.join("../shared"), PathBuf::from);
    let checkpoint_path = shared.join("data/weights/efficientnet-lite0-57934424.pth");
    if !checkpoint_path.is_file() {
        return Err(format!(
            "the Lite0 checkpoint is missing: {} (set FAIRNAS_SHARED to the shared folder)",
            checkpoint_path.display()
        )
        .into());
    }
    let mut photos: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if photos.is_empty() {
        photos = std::fs::read_dir(workspace.join("data/images"))?
            .map(|e| Ok(e?.path()))
            .collect::<Result<_, Error>>()?;
        photos.sort();
    }

    // 1. The architecture, by name (block strings, TF "SAME" padding, BN eps 1e-3).
    let spec = ModelSelection::named("efficientnet-lite0").resolve()?;

    // 2. The checkpoint: a pickled OrderedDict of 296 tensors, renamed onto the spec.
    let checkpoint = read_checkpoint(&checkpoint_path)?;
    let state_dict = checkpoint.state_dict(None)?;
    let entries = state_dict.len();
    let converted = convert_state_dict(state_dict, &spec, Some(SourceLayout::EfficientnetPytorch))
        .map_err(|e| format!("converting {}: {e}", checkpoint_path.display()))?;
    println!(
        "{}: {} container, {entries} entries, {} weights in layout {}",
        checkpoint_path.display(),
        checkpoint.container,
        converted.tensors.len(),
        converted.layout
    );

    // 3. The candle network.
    let device = Device::Cpu;
    let tensors = converted.to_candle(DType::F32, &device)?;
    let net = Network::load(&spec, VarBuilder::from_tensors(tensors, DType::F32, &device))?;

    // 4. Lite0's own preprocessing: bicubic resize to 256, centre crop 224, (x - 127) / 128.
    let transform = EvalTransform {
        interpolation: Interpolation::Bicubic,
        normalization: Normalization::Inception,
        ..EvalTransform::default()
    };
    let crop = transform.crop as usize;
    let mut pixels = Vec::new();
    for photo in &photos {
        pixels.extend(transform.load(photo)?);
    }
    let x = Tensor::from_vec(pixels, (photos.len(), 3, crop, crop), &device)?;
    let probabilities = candle_nn::ops::softmax_last_dim(&net.forward(&x)?)?.to_vec2::<f32>()?;

    // 5. Check top-1 against the label in each file name (`<wnid>_<name>.JPEG`).
    let mut wrong = Vec::new();
    for (photo, p) in photos.iter().zip(&probabilities) {
        let top1 = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        let name = photo.file_name().unwrap_or_default().to_string_lossy();
        let label = name.split('_').next().and_then(imagenet_index);
        println!(
            "{name}: top-1 {top1} {:?} ({:.1}%), label {}",
            class_name(1000, top1),
            100.0 * p[top1],
            label.map_or("unknown".to_string(), |l| format!("{l} {:?}", class_name(1000, l)))
        );
        match label {
            Some(l) if l == top1 => {}
            Some(_) => wrong.push(name.to_string()),
            None => {
                return Err(format!("{name}: no ImageNet wnid in the file name, so no label to check").into())
            }
        }
    }
    if !wrong.is_empty() {
        return Err(format!("Lite0 misclassified {}", wrong.join(", ")).into());
    }
    println!("ok: Lite0's top-1 class is the true label of all {} photos", photos.len());
    Ok(())
}
