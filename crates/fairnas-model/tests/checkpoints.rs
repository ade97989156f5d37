//! The PyTorch checkpoint reader and converter on files written by real `torch.save`
//! (tests/fixtures/checkpoints/generate_checkpoints.py), in both containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fairnas_model::pytorch::layout::ConversionError;
use fairnas_model::pytorch::{
    convert_state_dict, read_checkpoint, read_checkpoint_bytes, CheckpointError, SourceLayout, TorchDtype,
};
use fairnas_model::spec::ArchSpec;
use fairnas_model::synthetic::synthetic_values;
use fairnas_model::zoo::{fairnas_spec, FairnasModel, FairnasVariant};

const SEED: u64 = 11;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints").join(name)
}

/// The tiny FairNAS-shaped network of the fixtures: FairNAS-A's kernels and expansions, 4-channel
/// layers, stem 8, head 16, 5 classes.
fn tiny_spec(se: bool, transfer: bool) -> ArchSpec {
    let variant = FairnasVariant { se_ratio: se.then_some(1.0), transfer };
    let mut spec = fairnas_spec("tiny", &FairnasModel::A.choices(), variant);
    spec.stem.channels = 8;
    for block in &mut spec.blocks {
        block.out_channels = 4;
    }
    spec.head.channels = 16;
    spec.classes = 5;
    spec
}

/// Converts a fixture and checks every tensor against the synthetic values the generator put
/// under its canonical name (so a tensor mapped to the wrong name fails).
fn check_layout(file: &str, spec: &ArchSpec, expected_layout: SourceLayout, tensors: usize) {
    let ckpt = read_checkpoint(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let converted = convert_state_dict(ckpt.state_dict(None).unwrap(), spec, None)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(converted.layout, expected_layout, "{file}");
    assert_eq!(converted.tensors.len(), tensors, "{file}");
    assert_eq!(converted.dropped_counters, 61, "{file}: num_batches_tracked of 61 BNs");
    for (name, tensor) in &converted.tensors {
        assert_eq!(tensor.dtype, TorchDtype::F32, "{file}: {name}");
        let want: Vec<f64> = synthetic_values(name, &tensor.shape, SEED).into_iter().map(f64::from).collect();
        assert_eq!(tensor.to_f64_vec(), want, "{file}: values of {name}");
    }
}

#[test]
fn plain_layout_in_both_containers() {
    for file in ["plain.legacy.pth.tar", "plain.zip.pth.tar"] {
        check_layout(file, &tiny_spec(false, false), SourceLayout::Fairnas, 307);
    }
}

#[test]
fn se_layout_in_both_containers() {
    for file in ["se.legacy.pth.tar", "se.zip.pth.tar"] {
        check_layout(file, &tiny_spec(true, false), SourceLayout::FairnasSe, 383);
    }
}

#[test]
fn transfer_layout_in_both_containers() {
    for file in ["transfer.legacy.pt.tar", "transfer.zip.pt.tar"] {
        check_layout(file, &tiny_spec(true, true), SourceLayout::FairnasSe, 383);
    }
}

#[test]
fn module_prefix_and_state_dict_wrapper() {
    for file in ["module-state-dict.legacy.pth", "module-state-dict.zip.pth"] {
        check_layout(file, &tiny_spec(true, false), SourceLayout::FairnasSe, 383);
        let ckpt = read_checkpoint(&fixture(file)).unwrap();
        assert!(ckpt.state_dict(Some("state_dict")).is_ok());
        let err = ckpt.state_dict(Some("model_state")).unwrap_err().to_string();
        assert!(err.contains("no entry 'model_state'") && err.contains("state_dict"), "{err}");
    }
}

#[test]
fn dtypes_views_and_shared_storages() {
    let expected = safetensors::SafeTensors::deserialize(
        &std::fs::read(fixture("dtypes.expected.safetensors")).unwrap(),
    )
    .unwrap()
    .tensors()
    .into_iter()
    .map(|(name, view)| (name, (view.dtype(), view.shape().to_vec(), view.data().to_vec())))
    .collect::<HashMap<_, _>>();
    for file in ["dtypes.legacy.pth", "dtypes.zip.pth"] {
        let tensors = read_checkpoint(&fixture(file)).unwrap().state_dict(None).unwrap();
        assert_eq!(tensors.len(), expected.len(), "{file}");
        for (name, tensor) in &tensors {
            let (dtype, shape, data) = &expected[name];
            assert_eq!(&tensor.shape, shape, "{file}: {name}");
            let want_dtype = match name.as_str() {
                "f64" => TorchDtype::F64,
                "f16" => TorchDtype::F16,
                "bf16" => TorchDtype::BF16,
                "i64" => TorchDtype::I64,
                "i32" => TorchDtype::I32,
                "i16" => TorchDtype::I16,
                "i8" => TorchDtype::I8,
                "u8" => TorchDtype::U8,
                "bool" => TorchDtype::Bool,
                _ => TorchDtype::F32,
            };
            assert_eq!(tensor.dtype, want_dtype, "{file}: {name}");
            match dtype {
                safetensors::Dtype::F64 => {
                    let want: Vec<f64> =
                        data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
                    assert_eq!(tensor.to_f64_vec(), want, "{file}: {name}");
                }
                safetensors::Dtype::I64 => {
                    let want: Vec<i64> =
                        data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
                    let size = tensor.dtype.size_in_bytes();
                    let got: Vec<i64> = tensor
                        .data
                        .chunks_exact(size)
                        .map(|b| {
                            let negative = b[size - 1] & 0x80 != 0 && tensor.dtype != TorchDtype::U8;
                            let mut raw = [if negative { 0xff } else { 0 }; 8];
                            raw[..size].copy_from_slice(b);
                            i64::from_le_bytes(raw)
                        })
                        .collect();
                    assert_eq!(got, want, "{file}: {name}");
                }
                safetensors::Dtype::U8 => assert_eq!(&tensor.data, data, "{file}: {name}"),
                other => panic!("unexpected expected-dtype {other:?}"),
            }
        }
    }
}

fn read_error(bytes: &[u8]) -> String {
    match read_checkpoint_bytes(bytes).and_then(|c| c.state_dict(None)) {
        Ok(t) => panic!("expected an error, read {} tensors", t.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malicious_pickles_are_refused_naming_the_global() {
    let _ = std::fs::remove_file("/tmp/fairnas-pwned");
    for (stem, global) in [
        ("evil-os-system", "posix.system"),
        ("evil-eval", "builtins.eval"),
        ("evil-popen", "subprocess.Popen"),
    ] {
        for container in ["legacy", "zip"] {
            let file = format!("{stem}.{container}.pth");
            let err = match read_checkpoint(&fixture(&file)) {
                Err(e) => e,
                Ok(_) => panic!("{file} was accepted"),
            };
            assert!(matches!(err, CheckpointError::ForbiddenGlobal(_)), "{file}: {err}");
            assert!(err.to_string().contains(&format!("`{global}`")), "{file}: {err}");
        }
    }
    assert!(!Path::new("/tmp/fairnas-pwned").exists(), "a malicious pickle ran");
}

#[test]
fn hand_made_hostile_pickles() {
    // GLOBAL os system + REDUCE, with no container around it.
    let err = read_error(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.");
    assert!(err.contains("`os.system`"), "{err}");
    // STACK_GLOBAL builtins eval.
    let err = read_error(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93)R.");
    assert!(err.contains("`builtins.eval`"), "{err}");
    // Not a pickle at all, and empty.
    assert!(read_error(b"hello world").contains("not a PyTorch checkpoint"));
    assert!(read_error(b"").contains("empty"));
    // A legacy stream whose first pickle is not the magic number.
    let err = read_error(b"\x80\x02\x8a\x02\x34\x12.");
    assert!(err.contains("wrong magic number 0x1234"), "{err}");
    // A string claiming 2^63 bytes must fail on length, not allocate.
    let err = read_error(b"\x80\x02\x8d\x00\x00\x00\x00\x00\x00\x00\x80.");
    assert!(err.contains("truncated"), "{err}");
    // Memo reference to nothing; stack underflow; unknown opcode.
    assert!(read_error(b"\x80\x02h\x05.").contains("memo entry 5"));
    assert!(read_error(b"\x80\x02s.").contains("underflow"));
    assert!(read_error(b"\x80\x02\xff.").contains("unsupported opcode 0xff"));
}

/// A legacy checkpoint with one storage, built by hand, to reach the storage checks.
fn legacy_with_storage(declared: u64, stored: u64, size: (u8, u8), stride: (u8, u8), offset: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");
    f.extend_from_slice(b"\x80\x02M\xe9\x03.");
    f.extend_from_slice(b"\x80\x02}q\x00(X\x0d\x00\x00\x00little_endianq\x01\x88u.");
    // {'w': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', declared), offset, size, stride)}
    f.extend_from_slice(b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(");
    f.extend_from_slice(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu",
    );
    f.push(b'J');
    f.extend_from_slice(&(declared as u32).to_le_bytes());
    f.extend_from_slice(b"tQK");
    f.push(offset);
    f.extend_from_slice(&[b'K', size.0, b'K', size.1, 0x86, b'K', stride.0, b'K', stride.1, 0x86]);
    f.extend_from_slice(b"\x89)tRs.");
    f.extend_from_slice(b"\x80\x02]q\x00X\x01\x00\x00\x000a.");
    f.extend_from_slice(&stored.to_le_bytes());
    let available = (stored as usize).min(1 << 16);
    f.extend((0..available * 4).map(|i| i as u8));
    f
}

#[test]
fn storage_and_view_bounds() {
    // A consistent file reads back, including a transposed view.
    let ok = read_checkpoint_bytes(&legacy_with_storage(6, 6, (3, 2), (1, 3), 0)).unwrap();
    let tensors = ok.state_dict(None).unwrap();
    assert_eq!(tensors[0].1.shape, vec![3, 2]);
    let floats: Vec<u32> =
        tensors[0].1.data.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
    let element =
        |i: u32| u32::from_le_bytes([(4 * i) as u8, (4 * i + 1) as u8, (4 * i + 2) as u8, (4 * i + 3) as u8]);
    assert_eq!(floats, [0, 3, 1, 4, 2, 5].map(element));
    // The storage holds fewer elements than the object declares.
    let err = read_error(&legacy_with_storage(6, 4, (2, 2), (2, 1), 0));
    assert!(err.contains("storage shorter than declared"), "{err}");
    // A header claiming more elements than the file holds (also: no allocation of 2^40 x 4).
    let mut absurd = legacy_with_storage(6, 6, (2, 3), (3, 1), 0);
    let at = absurd.len() - 24 - 8;
    absurd[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = read_error(&absurd);
    assert!(err.contains("only 24 bytes remain"), "{err}");
    // Truncated inside the storage bytes.
    let full = legacy_with_storage(6, 6, (2, 3), (3, 1), 0);
    let err = read_error(&full[..full.len() - 3]);
    assert!(err.contains("remain in the file"), "{err}");
    // A tensor reaching past its storage (offset), and one larger than it.
    let err = read_error(&legacy_with_storage(6, 6, (2, 3), (3, 1), 1));
    assert!(err.contains("tensor 'w'") && err.contains("needs more than the 6 elements"), "{err}");
    let err = read_error(&legacy_with_storage(6, 6, (4, 3), (3, 1), 0));
    assert!(err.contains("needs more than the 6 elements"), "{err}");
}

#[test]
fn every_truncation_of_a_real_file_is_an_error() {
    for file in ["plain.legacy.pth.tar", "dtypes.zip.pth", "dtypes.legacy.pth"] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let step = (bytes.len() / 300).max(1);
        for len in (0..bytes.len()).step_by(step) {
            let result = read_checkpoint_bytes(&bytes[..len]).and_then(|c| c.state_dict(None));
            assert!(result.is_err(), "{file} truncated to {len} bytes was accepted");
        }
    }
}

#[test]
fn mismatches_are_all_reported_at_once() {
    let ckpt = read_checkpoint(&fixture("se.legacy.pth.tar")).unwrap();
    let mut state = ckpt.state_dict(None).unwrap();
    state.retain(|(name, _)| name != "conv_head.weight");
    for (name, t) in state.iter_mut() {
        if name == "bn2.running_var" {
            t.shape = vec![8];
            t.data.truncate(32);
        }
    }
    let stray = state[0].1.clone();
    state.push(("blocks.9.0.conv_pw.weight".into(), stray));
    // The plain model has no SE tensors, so each of the 19 x 4 SE tensors is unexpected too.
    let err = convert_state_dict(state, &tiny_spec(false, false), None).unwrap_err();
    let err = err.downcast::<ConversionError>().unwrap();
    let text = err.to_string();
    assert!(text.contains("missing tensor head.conv.weight [16, 4, 1, 1]"), "{text}");
    assert!(
        text.contains(
            "tensor bn2.running_var (-> head.bn.running_var) has shape [8], the model expects [16]"
        ),
        "{text}"
    );
    assert!(text.contains("unexpected tensor blocks.9.0.conv_pw.weight (not part of the layout)"), "{text}");
    assert!(
        text.contains(
            "unexpected tensor blocks.1.0.se.conv_reduce.weight (maps to blocks.1.se.reduce.weight"
        ),
        "{text}"
    );
    assert_eq!(err.problems.len(), 1 + 1 + 1 + 19 * 4, "{text}");
}

#[test]
fn real_lite0_checkpoint_matches_pytorch_logits() {
    use candle_core::{DType, Device};
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = fairnas_data::shared_data::for_test(&repo) else { return };
    let dev = Device::Cpu;
    let path = shared.join("data/weights/efficientnet-lite0-57934424.pth");
    let ckpt = read_checkpoint(&path).unwrap();
    assert_eq!(ckpt.container, fairnas_model::pytorch::container::Container::Legacy);
    let spec = fairnas_model::zoo::efficientnet_lite0();
    let converted = convert_state_dict(ckpt.state_dict(None).unwrap(), &spec, None).unwrap();
    assert_eq!(converted.layout, SourceLayout::EfficientnetPytorch);
    assert_eq!(converted.tensors.len() + converted.dropped_counters, 296);
    let weights = converted.to_candle(DType::F32, &dev).unwrap();
    let net = fairnas_model::network::Network::load(
        &spec,
        candle_nn::VarBuilder::from_tensors(weights, DType::F32, &dev),
    )
    .unwrap();

    let golden = candle_core::safetensors::load(fixture("lite0-golden.safetensors"), &dev).unwrap();
    let pixels = golden["pixels"].to_dtype(DType::F32).unwrap();
    let x = ((pixels.permute((0, 3, 1, 2)).unwrap() - 127.0).unwrap() / 128.0).unwrap();
    let got = net.forward(&x.contiguous().unwrap()).unwrap().to_vec2::<f32>().unwrap();
    let want = golden["logits"].to_vec2::<f32>().unwrap();
    let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.iter().flatten().zip(want.iter().flatten()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "lite0 real weights: max |diff| {diff:.3e}, max |logit| {scale:.3e}, relative {:.3e}",
        diff / scale
    );
    assert!(diff / scale <= 1e-4, "relative error {:.3e} exceeds 1e-4", diff / scale);
    let top1: Vec<usize> =
        got.iter().map(|row| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()).collect();
    assert_eq!(top1, [285, 967, 1], "tabby -> Egyptian cat, espresso, goldfish");
}

/// A legacy checkpoint whose state dict repeats one 6-float storage `entries` times, each time
/// viewed with the given shape (memoised tuple, so each extra entry costs a few bytes).
fn legacy_repeating_views(entries: usize, rank: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");
    f.extend_from_slice(b"\x80\x02M\xe9\x03.");
    f.extend_from_slice(b"\x80\x02}.");
    f.extend_from_slice(b"\x80\x02}q\x00");
    // memo 1: the tensor, built once
    f.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    f.extend_from_slice(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00(",
    );
    f.extend(std::iter::repeat_n(b"K\x01".as_slice(), rank - 1).flatten());
    f.extend_from_slice(b"K\x06t(");
    f.extend(std::iter::repeat_n(b"K\x00".as_slice(), rank - 1).flatten());
    f.extend_from_slice(b"K\x01t\x89)tRq\x01");
    f.push(b'0');
    f.push(b'(');
    for i in 0..entries {
        let name = format!("t{i}");
        f.push(b'X');
        f.extend_from_slice(&(name.len() as u32).to_le_bytes());
        f.extend_from_slice(name.as_bytes());
        f.extend_from_slice(b"h\x01");
    }
    f.extend_from_slice(b"u.");
    f.extend_from_slice(b"\x80\x02]X\x01\x00\x00\x000a.");
    f.extend_from_slice(&6u64.to_le_bytes());
    f.extend_from_slice(&[0u8; 24]);
    f
}

#[test]
fn repeated_views_and_huge_ranks_cannot_exhaust_memory() {
    // A handful of views of one storage is fine (weight tying does this).
    let ok = read_checkpoint_bytes(&legacy_repeating_views(3, 2)).unwrap().state_dict(None).unwrap();
    assert_eq!((ok.len(), ok[2].1.shape.clone()), (3, vec![1, 6]));
    // A million views of it would be 24 MB from a file of a few MB: refused before allocating.
    let err = read_error(&legacy_repeating_views(1_000_000, 2));
    assert!(err.contains("storage bytes in the file"), "{err}");
    let err = read_error(&legacy_repeating_views(1, 100));
    assert!(err.contains("tensor with 100 dimensions"), "{err}");
}
