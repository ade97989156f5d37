//! End-to-end tests of `fairnas train-supernet`, `fairnas train` and `fairnas eval-subnet` on the
//! real CIFAR-10 images committed in `data/cifar10-mini` (24 train / 8 test images per class).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use fairnas_model::network::Network;
use fairnas_model::search_space::SearchSpace;

mod common;
use common::{failure, ok};

fn data() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cifar10-mini").display().to_string()
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("train", name)
}

/// Every tensor of a checkpoint, as raw little-endian bytes by name.
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect()
}

/// The deterministic part of each metrics line (wall time and speed vary).
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("wall_s");
            o.remove("images_per_s");
            v
        })
        .collect()
}

fn state_step(out: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(out.join("state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

/// 96 images, batch 16: 6 steps per epoch, 12 in all, 3 strictly fair paths each.
const RUN: [&str; 12] = [
    "--threads",
    "2",
    "train-supernet",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--train-limit",
    "96",
    "--lr",
    "0.02",
    "--checkpoint-every",
];

fn run_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = RUN.to_vec();
    args.extend_from_slice(&["2", "--data", data, "--out", out]);
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_killed_run_resumes_to_bit_identical_weights() {
    let data = data();
    let straight = scratch("straight");
    let straight_s = straight.display().to_string();
    ok(&run_args(&data, &straight_s, &[]));
    assert_eq!(state_step(&straight), Some(12));

    // The same run, SIGKILLed right after its step-4 checkpoint (mid epoch 0), then resumed.
    let killed = scratch("killed");
    let killed_s = killed.display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fairnas"))
        .args(run_args(&data, &killed_s, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while state_step(&killed).is_none_or(|s| s < 4) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint at step 4");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was not killed: {status:?}");
    let at_kill = state_step(&killed).unwrap();
    assert!((4..12).contains(&at_kill), "killed at step {at_kill}");
    assert!(metrics(&killed).is_empty(), "no epoch had finished");

    // Resuming without --resume is refused, and so is a changed configuration.
    let err = failure(&run_args(&data, &killed_s, &[]));
    assert!(err.contains("--resume"), "{err}");
    let err = failure(&run_args(&data, &killed_s, &["--resume", "--seed", "9"]));
    assert!(err.contains("seed"), "{err}");

    ok(&run_args(&data, &killed_s, &["--resume"]));
    assert_eq!(state_step(&killed), Some(12));
    let (a, b) =
        (tensors(&straight.join("checkpoint.safetensors")), tensors(&killed.join("checkpoint.safetensors")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(a.keys().any(|k| k.starts_with("momentum/")) && a.len() > 100);
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs between the killed+resumed and the straight run");
    }
    assert_eq!(metrics(&straight), metrics(&killed));
    assert_eq!(metrics(&straight).len(), 2);

    // eval-subnet on the trained supernet, from the run folder.
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "eval-subnet",
        "--supernet",
        &straight_s,
        "--choices",
        "12012012",
        "--bn-recal-batches",
        "3",
        "--json",
    ]))
    .unwrap();
    assert_eq!(j["images"], 80);
    assert_eq!(j["bn_recal_batches"], 3);
    assert_eq!(j["trained_steps"], 12);
    let top1 = j["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    assert_eq!(j["correct"].as_u64().unwrap() as f64 / 80.0, top1);
    let err = failure(&["eval-subnet", "--supernet", &straight_s, "--choices", "1201"]);
    assert!(err.contains("4 choices given for 8 layers"), "{err}");
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&killed);
}

#[test]
fn a_diverging_run_stops_naming_step_and_path_and_keeps_its_checkpoint() {
    let data = data();
    let out = scratch("nan");
    let out_s = out.display().to_string();
    let mut args = run_args(&data, &out_s, &[]);
    // An absurd learning rate: the first update blows the weights up.
    let lr = args.iter().position(|a| *a == "0.02").unwrap();
    args[lr] = "1e30";
    let cp = args.iter().position(|a| *a == "--checkpoint-every").unwrap();
    args[cp + 1] = "1";
    let err = failure(&args);
    assert!(err.contains("loss is") && err.contains("on path") && err.contains("step "), "{err}");
    assert!(err.contains("intact"), "{err}");
    let step = state_step(&out).expect("a checkpoint was written before the divergence");
    assert!(step >= 1, "{step}");
    // The last good checkpoint loads (eval-subnet reads it completely).
    ok(&["eval-subnet", "--supernet", &out_s, "--choices", "00000000", "--bn-recal-batches", "0"]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn train_fits_a_standalone_network_and_exports_its_weights() {
    let data = data();
    let out = scratch("standalone");
    let out_s = out.display().to_string();
    let summary: serde_json::Value = serde_json::from_str(&ok(&[
        "train",
        "--arch",
        "01201020",
        "--space",
        "nas-bench-macro",
        "--data",
        &data,
        "--out",
        &out_s,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--train-limit",
        "64",
        "--json",
    ]))
    .unwrap();
    assert_eq!(summary["paths_per_step"], 1);
    assert_eq!(summary["steps"], 4);
    let m = metrics(&out);
    assert_eq!(m.len(), 1);
    let eval = m[0]["eval_top1"].as_f64().expect("held-out accuracy after the epoch");
    assert!((0.0..=1.0).contains(&eval));
    // The exported weights are exactly a plain network of that architecture.
    let space = SearchSpace::nas_bench_macro();
    let spec = space.subnet(&space.parse_choices("01201020").unwrap()).unwrap();
    let weights = candle_core::safetensors::load(out.join("weights.safetensors"), &Device::Cpu).unwrap();
    Network::check_tensors(&spec, &weights).unwrap();
    Network::load(&spec, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu)).unwrap();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn config_files_and_bad_settings_are_checked() {
    let data = data();
    let dir = scratch("config");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("run.json");
    std::fs::write(&config, r#"{"epochs": 1, "batch_size": 16, "train_limit": 32, "sampler": "uniform"}"#)
        .unwrap();
    let out = dir.join("run");
    let (config_s, out_s) = (config.display().to_string(), out.display().to_string());
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "train-supernet",
        "--config",
        &config_s,
        "--data",
        &data,
        "--out",
        &out_s,
        "--json",
    ]))
    .unwrap();
    assert_eq!(j["paths_per_step"], 1, "uniform sampling from the config file");
    assert_eq!(j["steps"], 2);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(written["sampler"], "uniform");
    assert_eq!(written["batch_size"], 16);

    std::fs::write(&config, r#"{"epochs": 1, "learning_rate": 0.1}"#).unwrap();
    let err =
        failure(&["train-supernet", "--config", &config_s, "--data", &data, "--out", &format!("{out_s}2")]);
    assert!(err.contains("learning_rate"), "{err}");
    let err =
        failure(&["train-supernet", "--sampler", "greedy", "--data", &data, "--out", &format!("{out_s}3")]);
    assert!(err.contains("greedy"), "{err}");
    let err = failure(&["train-supernet", "--data", "/nonexistent/cifar", "--out", &format!("{out_s}4")]);
    assert!(err.contains("/nonexistent/cifar"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_training_image_is_named_and_nothing_is_written() {
    let root = scratch("corrupt");
    for split in ["train", "test"] {
        for class in fairnas_data::classes::CIFAR10_CLASSES {
            let (from, to) = (Path::new(&data()).join(split).join(class), root.join(split).join(class));
            std::fs::create_dir_all(&to).unwrap();
            let mut files: Vec<_> = std::fs::read_dir(&from).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for file in files.iter().take(2) {
                std::fs::copy(file, to.join(file.file_name().unwrap())).unwrap();
            }
        }
    }
    let bad = root.join("train/cat/0000.jpg");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap(); // truncated JPEG
    let out = root.join("run");
    let err = failure(&[
        "train-supernet",
        "--data",
        &root.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--batch-size",
        "4",
    ]);
    assert!(err.contains("train/cat/0000.jpg") && err.contains("truncated"), "{err}");
    assert!(!out.join("checkpoint.safetensors").exists());
    let _ = std::fs::remove_dir_all(&root);
}

/// Any image folder trains, not just CIFAR-10: two classes of real ImageNet photos (full-size
/// JPEGs, resized by the training transform to the space's 32x32). A class count that is not the
/// space's is refused naming `--classes`; with it the classifier follows the data, and the run
/// scores sub-networks.
#[test]
fn a_two_class_image_folder_trains_with_classes() {
    let dir = scratch("folder");
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/images");
    for split in ["train", "test"] {
        for (class, file) in [("espresso", "n07920052_espresso.JPEG"), ("nail", "n03804744_nail.JPEG")] {
            let to = dir.join("data").join(split).join(class);
            std::fs::create_dir_all(&to).unwrap();
            for copy in ["a.JPEG", "b.JPEG"] {
                std::fs::copy(images.join(file), to.join(copy)).unwrap();
            }
        }
    }
    let data = dir.join("data").display().to_string();
    let out = dir.join("run").display().to_string();
    let args = |extra: &[&'static str]| {
        let mut a: Vec<String> = ["--threads", "2", "train-supernet", "--data", &data, "--out", &out]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--epochs", "1", "--batch-size", "2"].iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let err = failure(&args(&[]));
    assert!(err.contains("2 classes") && err.contains("10 outputs") && err.contains("--classes 2"), "{err}");
    ok(&args(&["--classes", "2"]));
    let m = metrics(&dir.join("run"));
    assert_eq!(m.len(), 1);
    assert!(m[0]["train_loss"].as_f64().unwrap().is_finite());
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "eval-subnet",
        "--supernet",
        &out,
        "--choices",
        "12012012",
        "--bn-recal-batches",
        "1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(j["images"], 4);
    let top1 = j["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1), "{j}");
    let err = failure(&args(&["--classes", "1", "--resume"]));
    assert!(err.contains("classes must be at least 2, got 1"), "{err}");
}
