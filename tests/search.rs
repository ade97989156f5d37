//! End-to-end tests of `fairnas search` on a real (barely trained) NAS-Bench-Macro supernet and
//! the real CIFAR-10 images in `data/cifar10-mini`.

use std::path::{Path, PathBuf};

mod common;
use common::{failure, ok, tiny_supernet};

fn scratch(name: &str) -> PathBuf {
    common::scratch("search", name)
}

/// The flags every search here shares.
fn search_args(supernet: &str, out: &Path, generations: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--threads",
        "2",
        "search",
        "--supernet",
        supernet,
        "--objectives",
        "acc,madds",
        "--max-madds",
        "60M",
        "--population",
        "6",
        "--generations",
        generations,
        "--seed",
        "3",
        "--eval-limit",
        "40",
        "--bn-recal-batches",
        "1",
        "--bn-recal-batch-size",
        "8",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out.display().to_string());
    // `extra` adds flags, or replaces the value of one already there.
    let mut i = 0;
    while i < extra.len() {
        let value = extra.get(i + 1).filter(|v| !v.starts_with("--"));
        match (args.iter().position(|a| a == extra[i]), value) {
            (Some(at), Some(v)) => args[at + 1] = v.to_string(),
            (None, Some(v)) => args.extend([extra[i].to_string(), v.to_string()]),
            (_, None) => args.push(extra[i].to_string()),
        }
        i += if value.is_some() { 2 } else { 1 };
    }
    args
}

fn search(supernet: &str, out: &Path, generations: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = search_args(supernet, out, generations, extra);
    args.push("--json".into());
    serde_json::from_str(&ok(&args)).unwrap()
}

#[test]
fn searches_resumes_exactly_and_writes_the_front() {
    let dir = scratch("resume");
    let supernet = tiny_supernet(&dir, 2);
    let straight = search(&supernet, &dir.join("straight"), "3", &[]);
    assert_eq!(straight["generations"], 3);
    let front = straight["front"].as_array().unwrap();
    assert!(!front.is_empty());
    for f in front {
        assert!(f["madds"].as_u64().unwrap() <= 60_000_000, "the constraint holds: {f}");
        assert_eq!(f["choices"].as_str().unwrap().len(), 8);
        assert!(f["blocks"].as_str().unwrap().contains("_c"));
    }
    // Evaluations are distinct architectures: at most population x (generations + 1).
    assert!(straight["evaluations"].as_u64().unwrap() <= 24);
    let csv = std::fs::read_to_string(dir.join("straight/front.csv")).unwrap();
    assert_eq!(csv.lines().count(), front.len() + 1);
    let svg = std::fs::read_to_string(dir.join("straight/front.svg")).unwrap();
    assert!(svg.contains("Pareto front"));
    assert!(
        svg.matches("<circle").count() >= straight["evaluations"].as_u64().unwrap() as usize + front.len()
    );

    // Stop after generation 1 (as a kill after its state was saved would), then resume to 3.
    let split = dir.join("split");
    search(&supernet, &split, "1", &[]);
    // Same settings, no --resume: refused, the existing search is not overwritten.
    let e = failure(&search_args(&supernet, &split, "3", &[]));
    assert!(e.contains("--resume"), "{e}");
    let resumed = search(&supernet, &split, "3", &["--resume"]);
    assert_eq!(resumed["front"], straight["front"]);
    assert_eq!(resumed["hypervolume"], straight["hypervolume"]);
    let state = |d: &Path| std::fs::read_to_string(d.join("search-state.json")).unwrap();
    assert_eq!(state(&split), state(&dir.join("straight")), "same state, bit for bit");
    assert!(
        resumed["scored_in_this_run"].as_u64().unwrap() < straight["scored_in_this_run"].as_u64().unwrap()
    );

    // Other settings in the same folder are refused, naming the difference.
    let e = failure(&search_args(&supernet, &split, "4", &["--resume", "--seed", "4"]));
    assert!(e.contains("seed (cached 3, now 4)"), "{e}");

    // Judged by the benchmark's stand-alone results (when ../shared is here).
    if let Some(shared) = fairnas_data::shared_data::for_test(&common::repo()) {
        let gt = shared.join("data/nas-bench-macro/nas-bench-macro_cifar10.json").display().to_string();
        let judged = search(&supernet, &dir.join("straight"), "3", &["--resume", "--ground-truth", &gt]);
        let g = &judged["ground_truth"];
        let ratio = g["hypervolume_ratio"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio <= 1.0, "{g}");
        assert!(g["true_front_size"].as_u64().unwrap() > 5, "{g}");
        assert_eq!(judged["front"], straight["front"], "judging changes nothing");
    }

    // The baselines run on the same problem.
    let random = search(&supernet, &dir.join("random"), "3", &["--algorithm", "random"]);
    assert_eq!(random["evaluations"], 24);
    let evo = search(&supernet, &dir.join("evo"), "2", &["--algorithm", "evolution"]);
    assert!(evo["front"].as_array().unwrap().iter().all(|f| f["madds"].as_u64().unwrap() <= 60_000_000));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_settings_are_named() {
    let dir = scratch("bad");
    let supernet = tiny_supernet(&dir, 2);
    let out = dir.join("s").display().to_string();
    let e = failure(&["search", "--supernet", &supernet, "--objectives", "acc,speed", "--out", &out]);
    assert!(e.contains("'speed'"), "{e}");
    let e = failure(&["search", "--supernet", &supernet, "--max-madds", "lots", "--out", &out]);
    assert!(e.contains("'lots'"), "{e}");
    let e = failure(&["search", "--supernet", &supernet, "--algorithm", "annealing", "--out", &out]);
    assert!(e.contains("annealing"), "{e}");
    let e = failure(&["search", "--supernet", &dir.join("nothing").display().to_string(), "--out", &out]);
    assert!(e.contains("nothing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exports_a_subnet_that_info_predict_and_train_accept() {
    let dir = scratch("export");
    let supernet = tiny_supernet(&dir, 2);
    let export = |out: &Path, format: &[&str]| -> serde_json::Value {
        let out = out.display().to_string();
        let args = ["--threads", "2", "export", "--supernet", &supernet, "--choices", "12012012"];
        let rest = ["--bn-recal-batches", "2", "--out", &out, "--json"];
        serde_json::from_str(&ok(&[&args[..], &rest, format].concat())).unwrap()
    };
    let x = dir.join("x");
    let exported = export(&x, &[]);
    // NAS-Bench-Macro's own numbers for 12012012: 2,014,602 params, 67,092,992 FLOPs.
    assert_eq!(exported["params"], 2_014_602);
    assert_eq!(exported["madds"], 67_092_992);
    let weights = x.join("weights.safetensors").display().to_string();
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--space", "nas-bench-macro", "--choices", "12012012", "--json"]))
            .unwrap();
    assert_eq!(info["params"], 2_014_602, "{info}");
    let image = common::repo().join("data/cifar10-mini/test/cat/0000.jpg").display().to_string();
    let model = ["--space", "nas-bench-macro", "--choices", "12012012", "--weights", &weights];
    let predicted = ok(&[&["predict"][..], &model, &[&image]].concat());
    assert!(!predicted.trim().is_empty());
    // The stand-alone evaluator scores the exported network as eval-subnet scores the path
    // (same recalibration, the network's own 32x32 resolution and CIFAR statistics).
    let mini = common::repo().join("data/cifar10-mini").display().to_string();
    let verified: serde_json::Value =
        serde_json::from_str(&ok(
            &[&["transfer-verify"][..], &model, &["--cifar-root", &mini, "--json"]].concat()
        ))
        .unwrap();
    let one_shot: serde_json::Value = serde_json::from_str(&ok(&[
        "--threads",
        "2",
        "eval-subnet",
        "--supernet",
        &supernet,
        "--choices",
        "12012012",
        "--bn-recal-batches",
        "2",
        "--json",
    ]))
    .unwrap();
    assert_eq!(verified["evaluated"], 80);
    assert_eq!(verified["top1_correct"], one_shot["correct"], "{verified} vs {one_shot}");
    // Zero training steps from the exported weights write them back unchanged, bit for bit:
    // train really starts from them.
    let data = common::repo().join("data/cifar10-mini").display().to_string();
    let train_from_export = |arch: &str, out: &Path| -> Vec<String> {
        let out = out.display().to_string();
        let args = [
            "train",
            "--space",
            "nas-bench-macro",
            "--arch",
            arch,
            "--init-weights",
            &weights,
            "--data",
            &data,
        ];
        let rest = ["--max-steps", "0", "--batch-size", "16", "--no-eval", "--out", &out];
        args.iter().chain(&rest).map(|s| s.to_string()).collect()
    };
    let tuned = dir.join("tuned");
    ok(&train_from_export("12012012", &tuned));
    assert_eq!(
        std::fs::read(x.join("weights.safetensors")).unwrap(),
        std::fs::read(tuned.join("weights.safetensors")).unwrap()
    );
    // `--format onnx` adds model.onnx: the graph `convert --to onnx` makes of the exported
    // weights, byte for byte (the same export, checked against tract in fairnas-model).
    let y = dir.join("y");
    let with_onnx = export(&y, &["--format", "onnx"]);
    assert_eq!(with_onnx["onnx"].as_str(), Some(y.join("model.onnx").to_str().unwrap()), "{with_onnx}");
    assert!(exported.get("onnx").is_none(), "safetensors only by default: {exported}");
    let converted = dir.join("converted.onnx").display().to_string();
    ok(&[&["convert", "--input", &weights, "--output", &converted, "--to", "onnx"][..], &model[..4]]
        .concat());
    assert!(std::fs::read(y.join("model.onnx")).unwrap() == std::fs::read(&converted).unwrap());
    // Weights of another sub-network do not fit, and the error says what is missing.
    let e = failure(&train_from_export("22222222", &dir.join("bad")));
    assert!(e.contains("weights.safetensors") && e.contains("shape"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn latency_table_feeds_the_latency_objective() {
    let dir = scratch("latency");
    std::fs::create_dir_all(&dir).unwrap();
    let table_path = dir.join("table.json");
    let table: serde_json::Value = serde_json::from_str(&ok(&[
        "--threads",
        "2",
        "latency-table",
        "--space",
        "nas-bench-macro",
        "--repeats",
        "2",
        "--check",
        "3",
        "--out",
        &table_path.display().to_string(),
        "--json",
    ]))
    .unwrap();
    let layers = table["layers_ms"].as_array().unwrap();
    assert_eq!(layers.len(), 8);
    assert!(layers.iter().all(|r| r.as_array().unwrap().len() == 3));
    let check = &table["check"];
    assert_eq!(check["architectures"].as_array().unwrap().len(), 3);
    assert!(check["mape"].as_f64().unwrap().is_finite());
    let supernet = tiny_supernet(&dir, 1);
    let table_arg = table_path.display().to_string();
    let found = search(
        &supernet,
        &dir.join("s"),
        "1",
        &["--objectives", "acc,latency", "--latency-table", &table_arg],
    );
    // Each front member's latency is the sum of its table entries.
    let ms = |v: &serde_json::Value| v.as_f64().unwrap();
    for f in found["front"].as_array().unwrap() {
        let choices: Vec<usize> =
            f["choices"].as_str().unwrap().bytes().map(|b| (b - b'0') as usize).collect();
        let sum = ms(&table["stem_ms"])
            + choices.iter().zip(layers).map(|(&c, r)| ms(&r[c])).sum::<f64>()
            + ms(&table["head_ms"]);
        assert!((ms(&f["latency_ms"]) - sum).abs() < 1e-9, "{f}");
    }
    let e = failure(&[
        "search",
        "--supernet",
        &supernet,
        "--objectives",
        "acc,latency",
        "--out",
        &dir.join("t").display().to_string(),
    ]);
    assert!(e.contains("--latency-table"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_search_resumes_to_the_same_state() {
    let dir = scratch("killed");
    let supernet = tiny_supernet(&dir, 2);
    let straight = dir.join("straight");
    search(&supernet, &straight, "8", &[]);

    // The same search, SIGKILLed after its generation-1 state was written, then resumed.
    let killed = dir.join("killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fairnas"))
        .args(search_args(&supernet, &killed, "8", &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let generation = |d: &Path| -> Option<u64> {
        let text = std::fs::read_to_string(d.join("search-state.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["state"]["generation"].as_u64()
    };
    let started = std::time::Instant::now();
    while generation(&killed).is_none_or(|g| g < 1) {
        assert!(child.try_wait().unwrap().is_none(), "the search ended before it could be killed");
        assert!(started.elapsed().as_secs() < 300, "no generation finished in 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the search was not killed: {status:?}");
    let at_kill = generation(&killed).unwrap();
    assert!(at_kill < 8, "killed at generation {at_kill}");
    search(&supernet, &killed, "8", &["--resume"]);
    let state = |d: &Path| std::fs::read_to_string(d.join("search-state.json")).unwrap();
    assert_eq!(state(&killed), state(&straight), "killed at generation {at_kill}, resumed: same state");
    let front = |d: &Path| std::fs::read_to_string(d.join("front.json")).unwrap();
    assert_eq!(front(&killed), front(&straight));
    std::fs::remove_dir_all(&dir).unwrap();
}
