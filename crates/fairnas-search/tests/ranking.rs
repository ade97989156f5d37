//! Ranking statistics against scipy (fixtures/generate_ranking.py) and, on the real
//! NAS-Bench-Macro ground truth, the FLOPs baseline docs/FAIRNAS.md section 7 quotes (tau 0.546).

use std::path::Path;

use fairnas_model::search_space::SearchSpace;
use fairnas_search::ground_truth::GroundTruth;
use fairnas_search::ranking::{kendall_tau_b, pearson, spearman, RankingReport};
use serde_json::Value;

/// Agreement with scipy: both compute in f64; only summation order differs.
const TOLERANCE: f64 = 1e-12;

fn golden() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ranking_golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn matches_scipy_with_and_without_ties() {
    let golden = golden();
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let (x, y) = (floats(&case["x"]), floats(&case["y"]));
        for (name, got) in [
            ("kendall_tau_b", kendall_tau_b(&x, &y)),
            ("spearman_rho", spearman(&x, &y)),
            ("pearson_r", pearson(&x, &y)),
        ] {
            let want = case[name].as_f64().unwrap();
            let got = got.unwrap();
            assert!((got - want).abs() < TOLERANCE, "case {i} {name}: {got} vs scipy {want}");
        }
    }
}

#[test]
fn flops_baseline_on_nas_bench_macro_matches_scipy_and_the_paper() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = fairnas_data::shared_data::for_test(&repo) else { return };
    let space = SearchSpace::nas_bench_macro();
    let gt =
        GroundTruth::load(&shared.join("data/nas-bench-macro/nas-bench-macro_cifar10.json"), &space).unwrap();
    assert_eq!(gt.len(), 6561);
    let archs = space.canonical_architectures(10_000).unwrap();
    let truth: Vec<f64> = archs.iter().map(|a| gt.require(&space, a).unwrap().mean_acc).collect();
    let flops: Vec<f64> = archs.iter().map(|a| gt.require(&space, a).unwrap().flops as f64).collect();
    let report = RankingReport::new(&flops, &truth);
    let want = &golden()["nas_bench_macro_flops"];
    assert_eq!(report.architectures as u64, want["architectures"].as_u64().unwrap());
    for (got, name) in [
        (report.kendall_tau, "kendall_tau_b"),
        (report.spearman_rho, "spearman_rho"),
        (report.pearson_r, "pearson_r"),
    ] {
        let want = want[name].as_f64().unwrap();
        assert!((got.unwrap() - want).abs() < TOLERANCE, "{name}: {got:?} vs scipy {want}");
    }
    assert!((report.kendall_tau.unwrap() - 0.546).abs() < 5e-4, "docs/FAIRNAS.md section 7 quotes 0.546");
}

#[test]
fn bad_ground_truth_files_are_named() {
    let dir = std::env::temp_dir().join(format!("fairnas-gt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let space = SearchSpace::nas_bench_macro();
    let bad_key = dir.join("bad-key.json");
    std::fs::write(&bad_key, r#"{"1201201x": {"mean_acc": 90, "params": 1, "flops": 1}}"#).unwrap();
    let e = GroundTruth::load(&bad_key, &space).unwrap_err().to_string();
    assert!(e.contains("bad-key.json") && e.contains("'1201201x'"), "{e}");
    let not_json = dir.join("not.json");
    std::fs::write(&not_json, "[1, 2").unwrap();
    let e = GroundTruth::load(&not_json, &space).unwrap_err().to_string();
    assert!(e.contains("not.json"), "{e}");
    let gt = {
        let one = dir.join("one.json");
        std::fs::write(&one, r#"{"12012012": {"mean_acc": 90.5, "params": 1, "flops": 2}}"#).unwrap();
        GroundTruth::load(&one, &space).unwrap()
    };
    let e = gt.require(&space, &[0; 8]).unwrap_err().to_string();
    assert!(e.contains("00000000"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
