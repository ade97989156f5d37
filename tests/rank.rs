//! End-to-end tests of `fairnas rank` on the real CIFAR-10 images in `data/cifar10-mini` and
//! the real NAS-Bench-Macro ground truth from ../shared.

use std::path::PathBuf;

use fairnas_model::search_space::SearchSpace;
use fairnas_search::ground_truth::GroundTruth;
use fairnas_search::ranking::kendall_tau_b;

mod common;
use common::{fairnas, ok, repo, tiny_supernet};

fn scratch(name: &str) -> PathBuf {
    common::scratch("rank", name)
}

#[test]
fn ranks_resumes_from_its_cache_and_refuses_other_settings() {
    let Some(shared) = fairnas_data::shared_data::for_test(&repo()) else { return };
    let gt_path = shared.join("data/nas-bench-macro/nas-bench-macro_cifar10.json");
    let gt = gt_path.display().to_string();
    let dir = scratch("resume");
    let supernet = tiny_supernet(&dir, 3);
    let out = dir.join("rank");
    let out_s = out.display().to_string();
    let args = [
        "--threads",
        "2",
        "rank",
        "--supernet",
        &supernet,
        "--ground-truth",
        &gt,
        "--archs",
        "12",
        "--eval-limit",
        "40",
        "--bn-recal-batches",
        "2",
        "--bn-recal-batch-size",
        "8",
        "--out",
        &out_s,
        "--json",
    ];
    let report: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(report["architectures"], 12);
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13, "{csv}");
    assert_eq!(std::fs::read_to_string(out.join("scores.jsonl")).unwrap().lines().count(), 12);
    let svg = std::fs::read_to_string(out.join("scatter.svg")).unwrap();
    assert!(svg.contains("Kendall tau") && svg.matches("<circle").count() >= 12);

    // The report's statistics are those of the CSV's columns: recompute the FLOPs baseline
    // and the one-shot tau from the files, with the stand-alone accuracies from the benchmark.
    let space = SearchSpace::nas_bench_macro();
    let truth = GroundTruth::load(&gt_path, &space).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let col = |i: usize| rows.iter().map(|r| r[i].parse::<f64>().unwrap()).collect::<Vec<f64>>();
    for r in &rows {
        let choices = space.parse_choices(r[0]).unwrap();
        assert_eq!(space.canonical(&choices), choices, "only canonical forms are scored");
        let e = truth.get(&choices).unwrap();
        assert_eq!(r[3].parse::<f64>().unwrap(), (e.mean_acc * 1e4).round() / 1e4);
    }
    let stand_alone: Vec<f64> =
        rows.iter().map(|r| truth.get(&space.parse_choices(r[0]).unwrap()).unwrap().mean_acc).collect();
    let flops_tau = kendall_tau_b(&col(4), &stand_alone).unwrap();
    assert!((report["flops_baseline"]["kendall_tau"].as_f64().unwrap() - flops_tau).abs() < 1e-12);
    // (JSON numbers come back within an ulp, hence the tolerance.)
    let one_shot_tau = kendall_tau_b(&col(1), &stand_alone).unwrap();
    assert!((report["one_shot_top1"]["kendall_tau"].as_f64().unwrap() - one_shot_tau).abs() < 1e-12);

    // A kill leaves complete lines and at most one torn line: keep 5 and tear the 6th.
    let jsonl = std::fs::read_to_string(out.join("scores.jsonl")).unwrap();
    let lines: Vec<&str> = jsonl.lines().collect();
    let torn = format!("{}\n{}", lines[..5].join("\n"), &lines[5][..lines[5].len() / 2]);
    std::fs::write(out.join("scores.jsonl"), torn).unwrap();
    let resumed = fairnas(&args[..args.len() - 1]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(stdout.contains("12 architectures") && stdout.contains("tau"), "{stdout}");
    assert!(stderr.contains("resuming: 5 of 12") || stdout.contains("resuming: 5 of 12"), "{stderr}{stdout}");
    assert_eq!(
        std::fs::read_to_string(out.join("scores.csv")).unwrap(),
        csv,
        "resumed scores are the same bits"
    );
    // The torn line is gone and the cache reads back whole: a third run scores nothing.
    let jsonl = std::fs::read_to_string(out.join("scores.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 12);
    assert!(jsonl.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    let again = fairnas(&args[..args.len() - 1]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read_to_string(out.join("scores.jsonl")).unwrap(), jsonl, "nothing rescored");
    assert_eq!(std::fs::read_to_string(out.join("scores.csv")).unwrap(), csv);

    // Cached scores made with other settings are never mixed in.
    let mut other = args.to_vec();
    other[10] = "30";
    let e = fairnas(&other);
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(msg.contains("eval_limit (cached 40, now 30)") && msg.contains("another --out"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_named() {
    let dir = scratch("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("none.json").display().to_string();
    let supernet = tiny_supernet(&dir, 3);
    let e = fairnas(&["rank", "--supernet", &supernet, "--ground-truth", &missing]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("none.json"));
    let truncated = dir.join("truncated.json");
    std::fs::write(&truncated, r#"{"00000000": {"mean_acc": 80.0, "params": 1, "flops": 1}"#).unwrap();
    let e = fairnas(&["rank", "--supernet", &supernet, "--ground-truth", &truncated.display().to_string()]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("truncated.json"));
    let partial = dir.join("partial.json");
    std::fs::write(&partial, r#"{"00000000": {"mean_acc": 80.0, "params": 1, "flops": 1}}"#).unwrap();
    let e = fairnas(&["rank", "--supernet", &supernet, "--ground-truth", &partial.display().to_string()]);
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(msg.contains("partial.json") && msg.contains("no entry for sub-network"), "{msg}");
    let e = fairnas(&[
        "rank",
        "--supernet",
        &supernet,
        "--ground-truth",
        &partial.display().to_string(),
        "--archs",
        "x",
    ]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("--archs"));
    std::fs::remove_dir_all(&dir).unwrap();
}
