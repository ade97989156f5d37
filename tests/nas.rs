//! End-to-end test of `fairnas nas`, the whole pipeline, on the embedded CIFAR-10 subset at a
//! tiny budget: every stage runs, the folder holds what the report promises, the report has its
//! sections, and a rerun resumes instead of redoing the work.

use std::path::{Path, PathBuf};

mod common;
use common::{failure, ok, repo};

fn scratch(name: &str) -> PathBuf {
    common::scratch("nas", name)
}

#[test]
fn runs_the_pipeline_and_writes_the_report() {
    let dir = scratch("tiny");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tiny.json");
    let truth = repo().join("data/nas-bench-macro/ground-truth.json");
    std::fs::write(
        &config,
        r#"{
            "supernet": {"epochs": 1},
            "scoring": {"bn_recal_batches": 1, "bn_recal_batch_size": 8, "eval_limit": 40},
            "latency": {"repeats": 2, "check": 2},
            "search": {"population": 4, "generations": 1},
            "export": {"count": 2, "bn_recal_batches": 1},
            "finetune": {"epochs": 1},
            "judge": {"ground_truth": "TRUTH"}
        }"#
        .replace("TRUTH", truth.to_str().unwrap()),
    )
    .unwrap();
    let out = dir.join("run");
    let data = repo().join("data/cifar10-mini").display().to_string();
    let args = [
        "--threads",
        "2",
        "nas",
        "--config",
        &config.display().to_string(),
        "--data",
        &data,
        "--out",
        &out.display().to_string(),
    ];
    let stdout = ok(&args);
    assert!(stdout.contains("FairNAS pipeline done"), "{stdout}");
    for file in [
        "nas-config.json",
        "supernet/checkpoint.safetensors",
        "supernet/metrics.jsonl",
        "latency.json",
        "search/front.json",
        "search/front.csv",
        "search/front.svg",
        "search/search-state.json",
        "models.json",
        "search-random/front.json",
        "judgement.json",
        "report.html",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let models: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("models.json")).unwrap()).unwrap();
    assert!(!models.is_empty() && models.len() <= 2);
    for m in &models {
        let folder = PathBuf::from(m["folder"].as_str().unwrap());
        assert!(folder.join("weights.safetensors").is_file() && folder.join("model.json").is_file());
        assert_eq!(m["onnx"].as_str(), Some(folder.join("model.onnx").to_str().unwrap()), "{m}");
        assert!(std::fs::metadata(folder.join("model.onnx")).unwrap().len() > 100_000);
        assert!(m["measured_latency_ms"].as_f64().unwrap() > 0.0);
    }
    assert!(models[0]["finetuned_top1"].as_f64().is_some(), "the most accurate model is fine-tuned");

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for id in ["timings", "training", "search", "frequencies", "models", "files"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "section {id} missing");
    }
    // The fronts by stand-alone accuracy, training loss, training top-1, the front,
    // hypervolume and front size per generation.
    assert_eq!(html.matches("<svg").count(), 6);
    assert!(html.contains("fraction of the reference box dominated"), "hypervolume in plain units");

    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("src=\"http"), "self-contained: nothing fetched");
    for m in &models {
        assert!(html.contains(m["choices"].as_str().unwrap()));
        assert!(html.contains(&format!("href=\"models/{}/model.onnx\"", m["choices"].as_str().unwrap())));
    }

    check_judgement(&out, &truth, &models, &html);

    // A rerun resumes every stage: nothing is trained again.
    let checkpoint = std::fs::read(out.join("supernet/checkpoint.safetensors")).unwrap();
    let rerun = ok(&args);
    assert!(rerun.contains("FairNAS pipeline done"));
    assert_eq!(std::fs::read(out.join("supernet/checkpoint.safetensors")).unwrap(), checkpoint);

    // Another config in the same folder is refused.
    let mut other = args.to_vec();
    other.extend(["--seed", "9"]);
    let e = failure(&other);
    assert!(e.contains("seed (cached 0, now 9)"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The run's verdict (`judgement.json` and the report's section) against the benchmark file.
fn check_judgement(out: &Path, truth: &Path, models: &[serde_json::Value], html: &str) {
    // The verdict, checked against the benchmark file itself.
    let truth: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(truth).unwrap()).unwrap();
    let judgement: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("judgement.json")).unwrap()).unwrap();
    assert_eq!(judgement["architectures"], 3969, "NAS-Bench-Macro's canonical architectures");
    let placed = judgement["models"].as_array().unwrap();
    assert_eq!(placed.len(), models.len());
    for (p, m) in placed.iter().zip(models) {
        let entry = &truth[p["choices"].as_str().unwrap()];
        assert_eq!(p["choices"], m["choices"]);
        assert_eq!(p["acc"], entry["mean_acc"], "{p}");
        assert_eq!(p["madds"], entry["flops"], "{p}");
        let percentile = p["percentile"].as_f64().unwrap();
        assert!((0.0..100.0).contains(&percentile), "{p}");
        assert!(html.contains(&format!("{:.2}", entry["mean_acc"].as_f64().unwrap())), "{p} in the report");
    }
    // The true front: cheapest first, each member more accurate than every cheaper one, and the
    // benchmark's most accurate architecture at its end.
    let front = judgement["true_front"].as_array().unwrap();
    let best =
        truth.as_object().unwrap().values().map(|e| e["mean_acc"].as_f64().unwrap()).fold(0.0, f64::max);
    assert_eq!(front.last().unwrap()["acc"].as_f64().unwrap(), best);
    assert_eq!(judgement["best_acc"].as_f64().unwrap(), best);
    for w in front.windows(2) {
        assert!(
            w[0]["madds"].as_u64() <= w[1]["madds"].as_u64() && w[0]["acc"].as_f64() < w[1]["acc"].as_f64()
        );
    }
    for run in ["search", "random"] {
        let ratio = judgement[run]["comparison"]["hypervolume_ratio"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio <= 1.0, "{run}: {ratio}");
        assert!(judgement[run]["evaluations"].as_u64().unwrap() > 0);
    }
    assert!(html.contains("id=\"judged\"") && html.contains("Judged by the benchmark"));
    for text in ["What ran.", "What the numbers mean.", "At scale."] {
        assert!(html.contains(text), "{text} missing from the opening");
    }
    let search_hv = judgement["search"]["comparison"]["hypervolume_ratio"].as_f64().unwrap();
    let random_hv = judgement["random"]["comparison"]["hypervolume_ratio"].as_f64().unwrap();
    let verdict =
        if search_hv > random_hv { "the search beat chance" } else { "the search did not beat chance" };
    assert!(html.contains(verdict), "{verdict}");
}
