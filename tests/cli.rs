//! End-to-end tests of the `fairnas` binary: real processes, real files, real photos.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fairnas_model::network::Network;
use fairnas_model::selection::ModelSelection;
use fairnas_model::synthetic::synthetic_weights;

fn fairnas(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairnas")).args(args).output().expect("run fairnas")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = fairnas(args);
    assert!(out.status.success(), "fairnas {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fairnas-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn info_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["info", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&stdout_ok(&all)).unwrap()
}

#[test]
fn info_prints_the_published_plain_model_sizes() {
    for (model, params, madds) in [
        ("fairnas-a", "4,651,352", "388,122,848"),
        ("fairnas-b", "4,506,272", "345,297,632"),
        ("fairnas-c", "4,397,864", "321,024,992"),
    ] {
        let text = stdout_ok(&["info", "--model", model]);
        assert!(text.contains(&format!("params: {params}\n")), "{model}:\n{text}");
        assert!(text.contains(&format!("multiply-adds: {madds}\n")), "{model}:\n{text}");
    }
}

#[test]
fn info_prints_se_and_transfer_sizes() {
    let se = [
        ("fairnas-a-se", "1.0", 7_103_512),
        ("fairnas-a-se", "0.5", 5_881_920),
        ("fairnas-b-se", "1.0", 6_871_432),
        ("fairnas-b-se", "0.5", 5_693_040),
        ("fairnas-c-se", "1.0", 6_697_720),
        ("fairnas-c-se", "0.5", 5_551_776),
    ];
    for (model, ratio, params) in se {
        let j = info_json(&["--model", model, "--se-ratio", ratio]);
        assert_eq!(j["params"], params, "{model} {ratio}");
    }
    let transfer = [
        ("fairnas-a", "1.0", 5_835_322, Some(403_362_640u64)),
        ("fairnas-b", "1.0", 5_603_242, None),
        ("fairnas-c", "1.0", 5_429_530, None),
        ("fairnas-a", "0.5", 4_613_730, None),
        ("fairnas-b", "0.5", 4_424_850, Some(358_330_632)),
        ("fairnas-c", "0.5", 4_283_586, Some(333_272_088)),
    ];
    for (model, ratio, params, flops) in transfer {
        let text = stdout_ok(&["info", "--model", model, "--se-ratio", ratio, "--transfer"]);
        let p = params.to_string();
        let formatted = format!("{},{},{}", &p[..1], &p[1..4], &p[4..]);
        assert!(text.contains(&format!("params: {formatted}\n")), "{model} {ratio}:\n{text}");
        if let Some(f) = flops {
            let j = info_json(&["--model", model, "--se-ratio", ratio, "--transfer"]);
            assert_eq!(j["thop_flops"], f, "{model} {ratio}");
        }
    }
}

#[test]
fn info_table_has_a_row_per_layer_with_block_strings() {
    let j = info_json(&["--model", "fairnas-a-se-0.5"]);
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 23);
    assert_eq!(layers[2]["description"], "ir_r1_k7_s2_e3_c32_se0.5");
    assert_eq!(layers[2]["out_size"], serde_json::json!([56, 56]));
    let text = stdout_ok(&["info", "--model", "fairnas-a"]);
    assert!(text.contains("ir_r1_k7_s2_e3_c32"), "{text}");
    assert!(text.contains("112x112->56x56"), "{text}");
}

#[test]
fn choices_and_arch_select_the_same_network_as_the_name() {
    let by_name = info_json(&["--model", "fairnas-a"]);
    let by_choices = info_json(&["--choices", "4041500552122115153"]);
    assert_eq!(by_name["params"], by_choices["params"]);
    assert_eq!(by_name["madds"], by_choices["madds"]);
    let blocks = by_name["blocks"].as_str().unwrap().to_string();
    let by_arch = info_json(&["--arch", &blocks]);
    assert_eq!(by_name["params"], by_arch["params"]);
    assert_eq!(by_name["madds"], by_arch["madds"]);
}

#[test]
fn bad_model_selection_fails_with_a_named_error() {
    let out = fairnas(&["info", "--arch", "ds_r1_k3_s1_c16 ir_r1_k4_s2_e6_c24"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'k4'"), "{err}");
    let out = fairnas(&["info", "--model", "fairnas-z"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model 'fairnas-z'"));
    let out = fairnas(&["info", "--choices", "404150055212211515"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("18 digits"));
}

#[test]
fn help_lists_the_models() {
    let text = stdout_ok(&["--help"]);
    for name in ["fairnas-a", "fairnas-{a,b,c}-se", "efficientnet-lite0", "--choices"] {
        assert!(text.contains(name), "{name} missing from --help:\n{text}");
    }
}

fn write_weights(model: &str, seed: u64, path: &Path) -> Network {
    let spec = ModelSelection::named(model).resolve().unwrap();
    let weights = synthetic_weights(&spec, seed, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&weights, path).unwrap();
    Network::load(&spec, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu)).unwrap()
}

#[test]
fn predict_classifies_real_photos_like_the_library() {
    let dir = scratch("predict");
    let weights = dir.join("a.safetensors");
    let net = write_weights("fairnas-a", 3, &weights);
    let images =
        [repo().join("data/images/n07920052_espresso.JPEG"), repo().join("data/images/n03804744_nail.JPEG")];
    let args = [
        "predict",
        "--model",
        "fairnas-a",
        "--weights",
        weights.to_str().unwrap(),
        "--json",
        "--topk",
        "3",
        images[0].to_str().unwrap(),
        images[1].to_str().unwrap(),
    ];
    let j: serde_json::Value = serde_json::from_str(&stdout_ok(&args)).unwrap();
    let preds = j["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    let transform = fairnas_data::EvalTransform::default();
    for (pred, image) in preds.iter().zip(&images) {
        let top = pred["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-6);
        // The binary's answer equals the library's on the same preprocessed photo.
        let x = Tensor::from_vec(transform.load(image).unwrap(), (1, 3, 224, 224), &Device::Cpu).unwrap();
        let logits = net.forward(&x).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
        assert_eq!(top[0]["index"], best, "{}", image.display());
        assert!(!top[0]["name"].as_str().unwrap().is_empty());
    }
    // Human-readable output names the image and the classes.
    let text = stdout_ok(&[
        "predict",
        "--model",
        "fairnas-a",
        "--weights",
        weights.to_str().unwrap(),
        images[0].to_str().unwrap(),
    ]);
    assert!(text.contains("espresso.JPEG") && text.lines().count() == 6, "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn predict_reports_every_weight_problem_and_bad_images() {
    let dir = scratch("bad");
    let weights = dir.join("c.safetensors");
    write_weights("fairnas-c", 1, &weights);
    let image = repo().join("data/images/n07920052_espresso.JPEG");
    // Weights of C loaded as A: kernels differ in several layers, every one is listed.
    let out = fairnas(&[
        "predict",
        "--model",
        "fairnas-a",
        "--weights",
        weights.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blocks.1.dw.conv.weight has shape [48, 1, 5, 5], expected [48, 1, 7, 7]"), "{err}");
    assert!(err.contains("(82 problems)"), "{err}");
    // A corrupt image is named.
    let corrupt = dir.join("broken.jpg");
    std::fs::write(&corrupt, &std::fs::read(&image).unwrap()[..500]).unwrap();
    let out = fairnas(&[
        "predict",
        "--model",
        "fairnas-c",
        "--weights",
        weights.to_str().unwrap(),
        corrupt.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.jpg"));
    // A missing weights file is named.
    let out = fairnas(&[
        "predict",
        "--model",
        "fairnas-c",
        "--weights",
        "/nonexistent/w.safetensors",
        image.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/w.safetensors"));
    std::fs::remove_dir_all(dir).unwrap();
}

fn shared_dir() -> Option<PathBuf> {
    fairnas_data::shared_data::for_test(&repo())
}

fn top1_indices(json: &str) -> Vec<u64> {
    let j: serde_json::Value = serde_json::from_str(json).unwrap();
    j["predictions"].as_array().unwrap().iter().map(|p| p["top"][0]["index"].as_u64().unwrap()).collect()
}

#[test]
fn real_lite0_checkpoint_converts_and_classifies() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("lite0");
    let pth = shared.join("data/weights/efficientnet-lite0-57934424.pth");
    let out = dir.join("lite0.safetensors");
    let summary: serde_json::Value = serde_json::from_str(&stdout_ok(&[
        "convert",
        "--input",
        pth.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--model",
        "efficientnet-lite0",
        "--json",
    ]))
    .unwrap();
    assert_eq!(summary["layout"], "efficientnet-pytorch");
    assert_eq!(summary["parameters"], 4_652_008);
    assert_eq!(summary["dropped_num_batches_tracked"], 49);
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["source_sha256"], summary["source_sha256"].as_str().unwrap());
    assert!(meta["source_sha256"].starts_with("5793442"), "{meta:?}");
    assert_eq!(
        (meta["layout"].as_str(), meta["model"].as_str()),
        ("efficientnet-pytorch", "efficientnet-lite0")
    );

    let images = ["n02123045_tabby.JPEG", "n07920052_espresso.JPEG", "n01443537_goldfish.JPEG"]
        .map(|n| shared.join("data/imagenet-sample").join(n).to_str().unwrap().to_string());
    let predict = |weights: &str| {
        let mut args = vec!["predict", "--model", "efficientnet-lite0", "--weights", weights, "--json"];
        args.extend(images.iter().map(String::as_str));
        stdout_ok(&args)
    };
    // The checkpoint read directly and its conversion give identical answers.
    let direct = predict(pth.to_str().unwrap());
    assert_eq!(direct, predict(out.to_str().unwrap()));
    assert_eq!(top1_indices(&direct), [285, 967, 1], "Egyptian cat, espresso, goldfish:\n{direct}");

    // The same checkpoint as ONNX: the file the library writes (whose logits tract checks in
    // fairnas-model's tests/onnx.rs), byte for byte, with Lite0's preprocessing recorded.
    let onnx = dir.join("lite0.onnx");
    let written: serde_json::Value = serde_json::from_str(&stdout_ok(&[
        "convert",
        "--input",
        pth.to_str().unwrap(),
        "--output",
        onnx.to_str().unwrap(),
        "--model",
        "efficientnet-lite0",
        "--to",
        "onnx",
        "--json",
    ]))
    .unwrap();
    assert_eq!(written["opset"], 17, "{written}");
    assert_eq!(written["fold_bn"], true, "{written}");
    let bytes = std::fs::read(&onnx).unwrap();
    assert_eq!(written["bytes"], bytes.len() as u64);
    let library = dir.join("library.onnx");
    let spec = fairnas_model::selection::ModelSelection::named("efficientnet-lite0").resolve().unwrap();
    fairnas_data::deploy::convert_to_onnx(pth.to_str().unwrap(), &library, &spec, &Default::default(), true)
        .unwrap();
    assert!(bytes == std::fs::read(&library).unwrap(), "the binary writes what the library writes");
    let metadata: Vec<(String, String)> = serde_json::from_value(written["metadata"].clone()).unwrap();
    for (key, value) in
        [("preprocessing.interpolation", "bicubic"), ("preprocessing.normalization", "inception")]
    {
        assert!(metadata.contains(&(key.into(), value.into())), "{key}: {metadata:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn malicious_and_broken_checkpoints_are_refused_cleanly() {
    let fixtures = repo().join("crates/fairnas-model/tests/fixtures/checkpoints");
    let image = repo().join("data/images/n07920052_espresso.JPEG");
    for (file, needle) in [
        ("evil-os-system.legacy.pth", "refusing to load global `posix.system`"),
        ("evil-popen.zip.pth", "refusing to load global `subprocess.Popen`"),
        ("dtypes.zip.pth", "cannot recognise the checkpoint layout"),
    ] {
        let path = fixtures.join(file);
        let out = fairnas(&[
            "predict",
            "--model",
            "fairnas-a",
            "--weights",
            path.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(needle) && err.contains(file), "{file}: {err}");
        assert!(!err.contains("panicked"), "{file}: {err}");
    }
    // A wrong --layout or --key is named, and nothing is written.
    let se = fixtures.join("se.zip.pth.tar");
    for (flag, value, needle) in
        [("--layout", "timm", "unknown layout 'timm'"), ("--key", "ema", "no entry 'ema'")]
    {
        let mut args = vec!["convert", "--input", se.to_str().unwrap(), "--output", "/tmp/never.safetensors"];
        args.extend(["--model", "fairnas-a", flag, value]);
        let err = String::from_utf8_lossy(&fairnas(&args).stderr).into_owned();
        assert!(err.contains(needle), "{err}");
    }
    assert!(!Path::new("/tmp/never.safetensors").exists());
}

/// Lays out a Hugging Face cache the way the hub client does:
/// `hub/models--<owner>--<repo>/refs/<revision>` holds a commit id and the file lives under
/// `snapshots/<commit>/`.
fn lay_out_hf_cache(home: &Path, repo_id: &str, revision: &str, commit: &str, file: &str, source: &Path) {
    let repo_dir = home.join("hub").join(format!("models--{}", repo_id.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join(revision), commit).unwrap();
    let target = repo_dir.join("snapshots").join(commit).join(file);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(source, target).unwrap();
}

#[test]
fn weights_resolve_from_the_hugging_face_cache_offline() {
    let dir = scratch("hf");
    let weights = dir.join("a.safetensors");
    write_weights("fairnas-a", 5, &weights);
    let home = dir.join("hf-home");
    lay_out_hf_cache(&home, "fairnas-test/tiny", "main", "0123abcd", "weights/a.safetensors", &weights);
    lay_out_hf_cache(&home, "fairnas-test/tiny", "v2", "4567ef01", "weights/a.safetensors", &weights);
    let image = repo().join("data/images/n07920052_espresso.JPEG");
    let run = |w: &str| {
        Command::new(env!("CARGO_BIN_EXE_fairnas"))
            .args(["predict", "--model", "fairnas-a", "--json", "--weights", w, image.to_str().unwrap()])
            .env("HF_HOME", &home)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("HF_HUB_CACHE")
            .output()
            .unwrap()
    };
    let local = run(weights.to_str().unwrap());
    assert!(local.status.success());
    for uri in
        ["hf://fairnas-test/tiny/weights/a.safetensors", "hf://fairnas-test/tiny@v2/weights/a.safetensors"]
    {
        let hub = run(uri);
        assert!(hub.status.success(), "{uri}: {}", String::from_utf8_lossy(&hub.stderr));
        assert_eq!(hub.stdout, local.stdout, "{uri}");
    }
    // Absent from the cache while offline: a clear error, no network attempt.
    let missing = run("hf://fairnas-test/tiny/weights/b.safetensors");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        err.contains("hf://fairnas-test/tiny/weights/b.safetensors: not in the Hugging Face cache"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    let malformed = run("hf://fairnas-test");
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("expected hf://owner/repo"));
    std::fs::remove_dir_all(dir).unwrap();
}

fn verify_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&stdout_ok(&all)).unwrap()
}

/// PyTorch + PIL + torchvision on the same 1000 photos with Lite0's protocol
/// (benches/peers/verify_imagenet.py, torch 2.15, 2026-11-28): 883 and 976 correct.
const TORCH_LITE0_TOP1: f64 = 88.3;
const TORCH_LITE0_TOP5: f64 = 97.6;

#[test]
fn verify_real_lite0_on_the_imagenet_sample_matches_pytorch() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("verify-lite0");
    let csv = dir.join("per-class.csv");
    let pth = shared.join("data/weights/efficientnet-lite0-57934424.pth");
    let root = shared.join("data/imagenet-sample");
    let j = verify_json(&[
        "--model",
        "efficientnet-lite0",
        "--weights",
        pth.to_str().unwrap(),
        "--val-dataset-root",
        root.to_str().unwrap(),
        "--batch-size",
        "16",
        "--per-class-csv",
        csv.to_str().unwrap(),
    ]);
    let (top1, top5) = (j["top1"].as_f64().unwrap(), j["top5"].as_f64().unwrap());
    eprintln!(
        "fairnas verify lite0: top-1 {top1} top-5 {top5} (PyTorch {TORCH_LITE0_TOP1} / {TORCH_LITE0_TOP5})"
    );
    assert_eq!(j["evaluated"], 1000);
    assert!((top1 - TORCH_LITE0_TOP1).abs() <= 0.3, "top-1 {top1} vs PyTorch {TORCH_LITE0_TOP1}");
    assert!((top5 - TORCH_LITE0_TOP5).abs() <= 0.3, "top-5 {top5} vs PyTorch {TORCH_LITE0_TOP5}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 1001, "header + one row per class");
    assert!(text.lines().nth(1).unwrap().starts_with("0,n01440764,\"tench\",1,"), "{text:.200}");
    let correct: usize =
        text.lines().skip(1).map(|l| l.split(',').nth(4).unwrap().parse::<usize>().unwrap()).sum();
    assert_eq!(correct as u64, j["top1_correct"].as_u64().unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn verify_results_do_not_depend_on_batch_size_or_threads() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("verify-determinism");
    let pth = shared.join("data/weights/efficientnet-lite0-57934424.pth");
    let root = shared.join("data/imagenet-sample");
    let mut outcomes = Vec::new();
    for (batch, threads) in [("1", "1"), ("5", "2"), ("24", "2")] {
        let csv = dir.join(format!("b{batch}-t{threads}.csv"));
        let j: serde_json::Value = serde_json::from_str(&stdout_ok(&[
            "--threads",
            threads,
            "verify",
            "--json",
            "--model",
            "efficientnet-lite0",
            "--weights",
            pth.to_str().unwrap(),
            "--val-dataset-root",
            root.to_str().unwrap(),
            "--limit",
            "24",
            "--batch-size",
            batch,
            "--per-class-csv",
            csv.to_str().unwrap(),
        ]))
        .unwrap();
        outcomes.push((
            j["top1_correct"].clone(),
            j["top5_correct"].clone(),
            std::fs::read_to_string(&csv).unwrap(),
        ));
    }
    assert_eq!(outcomes[0].0, 20, "20 of the first 24 photos right at top-1");
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn verify_reports_bad_images_by_path_and_can_skip_them() {
    let dir = scratch("verify-bad");
    let root = dir.join("val");
    let espresso = repo().join("data/images/n07920052_espresso.JPEG");
    let nail = repo().join("data/images/n03804744_nail.JPEG");
    std::fs::create_dir_all(root.join("n07920052")).unwrap();
    std::fs::create_dir_all(root.join("n03804744")).unwrap();
    std::fs::copy(&espresso, root.join("n07920052/good.JPEG")).unwrap();
    std::fs::copy(&nail, root.join("n03804744/good.JPEG")).unwrap();
    let bytes = std::fs::read(&espresso).unwrap();
    std::fs::write(root.join("n07920052/truncated.JPEG"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(root.join("n03804744/not-an-image.JPEG"), "hello").unwrap();
    let weights = dir.join("a.safetensors");
    write_weights("fairnas-a", 2, &weights);
    let base = [
        "--model",
        "fairnas-a",
        "--weights",
        weights.to_str().unwrap(),
        "--val-dataset-root",
        root.to_str().unwrap(),
    ];
    let out = fairnas(&[&["verify"], &base[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not-an-image.JPEG") && err.contains("--on-bad-image skip"), "{err}");
    let j = verify_json(&[&base[..], &["--on-bad-image", "skip"]].concat());
    assert_eq!(j["evaluated"], 2);
    let skipped: Vec<&str> =
        j["skipped"].as_array().unwrap().iter().map(|s| s["image"].as_str().unwrap()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped[0].ends_with("n03804744/not-an-image.JPEG")
            && skipped[1].ends_with("n07920052/truncated.JPEG")
    );
    // Text output lists them too.
    let text = stdout_ok(&[&["verify"], &base[..], &["--on-bad-image", "skip"]].concat());
    assert!(text.contains("skipped 2 unreadable image(s)") && text.contains("truncated.JPEG"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn transfer_verify_reads_the_real_cifar_jpeg_tree() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("cifar");
    let tar = shared.join("data/cifar10/cifar10-jpg.tar.gz");
    let status = Command::new("tar")
        .args([
            "-xzf",
            tar.to_str().unwrap(),
            "-C",
            dir.to_str().unwrap(),
            "--wildcards",
            "test/*/000[0-4].jpg",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let weights = dir.join("t.safetensors");
    write_weights("fairnas-c-se-0.5-transfer", 4, &weights);
    let j: serde_json::Value = serde_json::from_str(&stdout_ok(&[
        "transfer-verify",
        "--json",
        "--model",
        "fairnas-c-se-0.5-transfer",
        "--weights",
        weights.to_str().unwrap(),
        "--cifar-root",
        dir.to_str().unwrap(),
        "--batch-size",
        "8",
    ]))
    .unwrap();
    assert_eq!(j["evaluated"], 50);
    assert_eq!(j["dataset"]["layout"], "CIFAR-10 test JPEG tree");
    // The original's spelling (`--model fairnas-c-se --se-ratio 0.5`) means the transfer model.
    let same: serde_json::Value = serde_json::from_str(&stdout_ok(&[
        "transfer-verify",
        "--json",
        "--model",
        "fairnas-c-se",
        "--se-ratio",
        "0.5",
        "--weights",
        weights.to_str().unwrap(),
        "--cifar-root",
        dir.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!((&same["model"], &same["top1_correct"]), (&j["model"], &j["top1_correct"]));
    // A model without a CIFAR-10 head is refused with the reason.
    let root = dir.to_str().unwrap();
    let out = fairnas(&[
        "transfer-verify",
        "--model",
        "efficientnet-lite0",
        "--weights",
        "x",
        "--cifar-root",
        root,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no SE or transfer variant"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `fairnas bench --json` reports one timing per batch size with consistent derived figures,
/// and, with `--matmul-peak`, the peak and each batch's fraction of it.
#[test]
fn bench_reports_throughput_and_the_fraction_of_the_matmul_peak() {
    let out = stdout_ok(&[
        "--threads",
        "2",
        "bench",
        "--model",
        "fairnas-a",
        "--batch",
        "1,2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--matmul-peak",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"], "fairnas-a");
    assert_eq!(v["threads"], 2);
    let peak = v["matmul_peak_gflop_per_s"].as_f64().unwrap();
    assert!(peak > 0.0, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.iter().map(|r| r["batch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    for r in results {
        let (ms, batch) = (r["median_ms"].as_f64().unwrap(), r["batch"].as_f64().unwrap());
        let images_per_s = r["images_per_s"].as_f64().unwrap();
        assert!((images_per_s - batch / (ms * 1e-3)).abs() < 1e-6 * images_per_s, "{r}");
        let gflops = r["gflop_per_s"].as_f64().unwrap();
        let expected = 2.0 * v["madds_per_image"].as_f64().unwrap() * images_per_s / 1e9;
        assert!((gflops - expected).abs() < 1e-6 * gflops, "{r}");
        let fraction = r["fraction_of_matmul_peak"].as_f64().unwrap();
        assert!((fraction - gflops / peak).abs() < 1e-9, "{r}");
    }
    let err = fairnas(&["bench", "--model", "fairnas-a", "--batch", "0"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("--batch needs positive sizes"));
}

/// `fairnas bench --stages` breaks each batch's time down by stage, in network order, with
/// shares that add up to one and every multiply-add of the model accounted for.
#[test]
fn bench_stages_account_for_the_whole_network() {
    let out = stdout_ok(&[
        "bench",
        "--model",
        "fairnas-b",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--stages",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stages = v["results"][0]["stages"].as_array().unwrap();
    assert_eq!(stages[0]["stage"], "stem");
    assert_eq!(stages[stages.len() - 1]["stage"], "pool+classifier");
    assert!(stages.iter().any(|s| s["stage"] == "blocks.7.dw"), "{stages:?}");
    let share: f64 = stages.iter().map(|s| s["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9, "{share}");
    let madds: u64 = stages.iter().map(|s| s["madds"].as_u64().unwrap()).sum();
    assert_eq!(madds, 2 * v["madds_per_image"].as_u64().unwrap());
}
