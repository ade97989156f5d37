//! The CPU side of the CUDA backend, end to end: the GPU check's harness (run on the CPU
//! kernels, f32 against f64, and on the CUDA kernels' source under the CPU emulator), and the
//! advice a build without the `cuda` feature gives. The CUDA kernels run on a GPU in
//! `fairnas gpu-check` on a GPU machine (see benches/gpu/ and BENCHMARKS.md); CI has no GPU and
//! builds without the feature.

mod common;

use common::{ok, scratch};

/// How many checks the GPU check runs (see the count in the first test).
const CHECKS: usize = 4 * 3 * 2 * 2 * 9 + 4 * 3 * 2 * 5 + 3 * 2 * 2 + 2 + 2 * 6 + 2 + 1;

#[test]
fn gpu_check_harness_runs_every_check_on_the_cpu_kernels() {
    let dir = scratch("gpu-check", "cpu");
    let out = dir.display().to_string();
    let stdout = ok(&["--threads", "2", "gpu-check", "--device", "cpu", "--no-timing", "--out", &out]);
    assert!(stdout.contains("0 failed"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("gpu-check.json")).unwrap()).unwrap();
    assert_eq!(report["all_pass"], true);
    let checks = report["checks"].as_array().unwrap();
    // 4 shapes x 3 kernel sizes x 2 strides x 2 paddings x (forward + 3 fused + 3 tiled
    // variants (the 2 strip heights `Auto` does not pick, the chunk-indexed staging) + 2
    // gradients), at stride 2 three more tiled variants (plain rows with either staging, plain
    // rows read in pairs) and the 2 gradients again (the simple kernels), the fitted tile on the one FairNAS-shaped shape
    // (3 kernel sizes x 2 strides x 2 paddings), 2 small-plane cases, 2 SE shapes x (forward,
    // plane stats, scale planes, 3 gradients), 2 depthwise autograd gradients, and the
    // FairNAS-A logits.
    assert_eq!(checks.len(), CHECKS, "{checks:?}");
    for c in checks {
        assert!(c["rel_l2"].as_f64().unwrap() <= c["limit_rel_l2"].as_f64().unwrap(), "{c}");
        assert_eq!(c["nan"], 0, "{c}");
    }
    let logits = checks.iter().find(|c| c["name"].as_str().unwrap().starts_with("FairNAS-A logits")).unwrap();
    assert!(logits["max_rel"].as_f64().unwrap() < 1e-4, "{logits}");
    // The input and logits the PyTorch peer compares against.
    assert!(dir.join("fairnas_a_io.safetensors").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The CUDA kernels' own source (kernels.cu compiled for the host, run under the emulator that
/// test builds carry), through the same checks against the CPU ops in f64: CI's test of the
/// kernels' indexing, tiling, halos, barriers and launch plans, with no GPU. It runs as the GPU
/// machine runs it: the bundle's `gpu-check.sh` (beside a `fairnas` binary and the real-data
/// folder `cargo xtask cuda-build` packs), so the script's wiring is tested too, including the
/// real EfficientNet-Lite0 checkpoint's logits on real photos.
#[test]
fn gpu_check_passes_with_the_cuda_kernels_emulated_on_the_cpu() {
    let dir = scratch("gpu-check", "emulated");
    let bundle = dir.join("fairnas-cuda");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::copy(common::repo().join("benches/gpu/gpu-check.sh"), bundle.join("gpu-check.sh")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fairnas"), bundle.join("fairnas")).unwrap();
    // The bundle's layout (xtask/src/cuda_build.rs, `stage_real_data`), with links for copies.
    let shared = fairnas_data::shared_data::for_test(&common::repo());
    if let Some(shared) = &shared {
        let real = bundle.join("real-data");
        std::fs::create_dir_all(real.join("photos")).unwrap();
        for name in ["n01440764_tench.JPEG", "n01443537_goldfish.JPEG"] {
            let photo = shared.join("data/imagenet-sample").join(name);
            std::os::unix::fs::symlink(photo, real.join("photos").join(name)).unwrap();
        }
        let pth = shared.join("data/weights/efficientnet-lite0-57934424.pth");
        std::os::unix::fs::symlink(pth, real.join("efficientnet-lite0.pth")).unwrap();
    }
    let out = dir.join("out");
    let run = std::process::Command::new("sh")
        .arg(bundle.join("gpu-check.sh"))
        .arg(&out)
        .args(["--device", "cpu", "--emulate-cuda", "--no-timing", "--threads", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "gpu-check.sh failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let real_checks = usize::from(shared.is_some());
    assert!(stdout.contains(&format!("{} checks, 0 failed", CHECKS + real_checks)), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("gpu-check.json")).unwrap()).unwrap();
    assert!(report["device"].as_str().unwrap().starts_with("CUDA kernels emulated"), "{}", report["device"]);
    assert_eq!(report["all_pass"], true);
    if shared.is_some() {
        let real = report["checks"].as_array().unwrap().last().unwrap();
        assert_eq!(real["name"], "efficientnet-lite0 logits, 2 real photos (real checkpoint)", "{real}");
        assert!(real["max_rel"].as_f64().unwrap() < 1e-4, "{real}");
        // Tench and goldfish: this checkpoint gets both right (as `--real-limit 2` on the shared
        // sample shows on the CPU).
        assert!(
            stdout.contains(
                "the same class as the CPU's for 2 of 2 photos; correct for 2 (device) and 2 (CPU)"
            ),
            "{stdout}"
        );
    }
    // Correctness only: the emulator's speed means nothing.
    assert_eq!(report["timings"].as_array().unwrap().len(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A bundle built without the shared folder carries no real data: the script says so and the
/// check runs without it; a wrong real-data path fails before any check runs, naming it.
#[test]
fn gpu_check_names_missing_real_data_before_running_anything() {
    let fails = |real: &[&str]| {
        let base = ["gpu-check", "--device", "cpu", "--no-timing", "--out", "/nonexistent-never-created"];
        common::failure(&[&base[..], real].concat())
    };
    let err = fails(&["--real-weights", "/nonexistent/lite0.pth", "--real-images", "."]);
    assert!(err.contains("--real-weights /nonexistent/lite0.pth: no such file"), "{err}");
    assert!(!err.contains("depthwise"), "checks ran before the path was checked: {err}");
    let (cargo_toml, photos) = (common::repo().join("Cargo.toml"), common::repo().join("data/images"));
    let (cargo_toml, photos) = (cargo_toml.display().to_string(), photos.display().to_string());
    let err = fails(&["--real-weights", &cargo_toml, "--real-images", &photos]);
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
    assert!(!err.contains("depthwise"), "checks ran before the checkpoint was read: {err}");
    let err = fails(&["--real-weights", &cargo_toml, "--real-images", &photos, "--real-limit", "0"]);
    assert!(err.contains("--real-limit must be at least 1"), "{err}");
    let err = fails(&["--real-images", "."]);
    assert!(err.contains("--real-weights"), "{err}");
}

/// Real weights on real photos through the CUDA kernels' source: the released EfficientNet-Lite0
/// checkpoint (TF-SAME, i.e. asymmetric, padding at every stride-2 depthwise layer) on three
/// shared ImageNet photos gives the CPU kernels' classes and probabilities.
#[test]
fn emulated_cuda_kernels_classify_real_photos_with_the_real_checkpoint_as_the_cpu_does() {
    let Some(shared) = fairnas_data::shared_data::for_test(&common::repo()) else { return };
    let pth = shared.join("data/weights/efficientnet-lite0-57934424.pth");
    let images = ["n02123045_tabby.JPEG", "n07920052_espresso.JPEG", "n01443537_goldfish.JPEG"]
        .map(|n| shared.join("data/imagenet-sample").join(n).display().to_string());
    let predict = |emulate: bool| {
        let mut args = vec!["--threads", "2"];
        if emulate {
            args.push("--emulate-cuda");
        }
        args.extend([
            "predict",
            "--model",
            "efficientnet-lite0",
            "--weights",
            pth.to_str().unwrap(),
            "--json",
        ]);
        args.extend(images.iter().map(String::as_str));
        serde_json::from_str::<serde_json::Value>(&ok(&args)).unwrap()
    };
    let (cpu, emulated) = (predict(false), predict(true));
    let top = |j: &serde_json::Value| -> Vec<(u64, f64)> {
        j["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["top"].as_array().unwrap().iter())
            .map(|t| (t["index"].as_u64().unwrap(), t["probability"].as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (top(&cpu), top(&emulated));
    assert_eq!(a.len(), 3 * 5, "{cpu}");
    // Egyptian cat, espresso, goldfish (as the CPU test of this checkpoint finds).
    assert_eq!([a[0].0, a[5].0, a[10].0], [285, 967, 1], "{cpu}");
    for ((ca, pa), (cb, pb)) in a.iter().zip(&b) {
        assert_eq!(ca, cb, "cpu {cpu}\nemulated {emulated}");
        // f32 rounding of differently ordered sums, not a different result.
        assert!((pa - pb).abs() <= 1e-5, "probability {pa} vs {pb}: cpu {cpu}\nemulated {emulated}");
    }
}

#[test]
fn the_emulator_is_for_the_cpu_device_only() {
    use common::failure;
    let err =
        failure(&["gpu-check", "--device", "cuda", "--emulate-cuda", "--out", "/nonexistent-never-created"]);
    assert!(err.contains("--emulate-cuda") && err.contains("--device cpu"), "{err}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_build_refuses_cuda_and_says_how_to_build_it() {
    use common::failure;
    let err = failure(&["gpu-check", "--out", "/nonexistent-never-created"]);
    assert!(err.contains("cargo xtask cuda-build"), "{err}");
    let err = failure(&[
        "predict",
        "--device",
        "cuda",
        "--model",
        "fairnas-a",
        "--weights",
        "w.safetensors",
        "x.jpg",
    ]);
    assert!(err.contains("--device cuda:0") && err.contains("cargo xtask cuda-build"), "{err}");
    let err = failure(&[
        "verify",
        "--device",
        "gpu",
        "--model",
        "fairnas-a",
        "--weights",
        "w.safetensors",
        "--val-dataset-root",
        ".",
    ]);
    assert!(err.contains("--device gpu: expected cpu, cuda or cuda:N"), "{err}");
}
