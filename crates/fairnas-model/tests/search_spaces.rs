//! The two shipped search spaces: FairNAS sub-networks are the published models, and the
//! NAS-Bench-Macro space is the benchmark's own (our cost model reproduces its `params` and
//! `flops` for all 6561 keys; `flops` there are conv + FC multiply-adds).

use std::path::Path;

use fairnas_model::cost::cost_report;
use fairnas_model::network::Network;
use fairnas_model::search_space::SearchSpace;
use fairnas_model::selection::ModelSelection;
use fairnas_model::zoo::FairnasVariant;

#[test]
fn fairnas_space_subnets_are_the_published_models() {
    for (name, digits) in [("fairnas-a", "4041500552122115153"), ("fairnas-c", "2040000001000055113")] {
        let space = SearchSpace::fairnas(FairnasVariant::PLAIN);
        assert_eq!(space.choice_counts(), vec![6; 19]);
        let sub = space.subnet(&space.parse_choices(digits).unwrap()).unwrap();
        let named = ModelSelection::named(name).resolve().unwrap();
        assert_eq!(sub.blocks, named.blocks, "{name}");
        assert_eq!(cost_report(&sub).params, cost_report(&named).params);
    }
    let se = SearchSpace::fairnas(FairnasVariant { se_ratio: Some(0.5), transfer: false });
    let sub = se.subnet(&se.parse_choices("4041500552122115153").unwrap()).unwrap();
    assert_eq!(cost_report(&sub).params, 5_881_920, "A-SE-0.5");
}

#[test]
fn bad_choices_name_the_layer() {
    let space = SearchSpace::nas_bench_macro();
    assert!(space.parse_choices("1201201").unwrap_err().to_string().contains("7 choices given for 8 layers"));
    assert!(space
        .parse_choices("12012013")
        .unwrap_err()
        .to_string()
        .contains("layer 7 has choices 0..2, got 3"));
    assert!(space.parse_choices("1201201x").unwrap_err().to_string().contains("'x'"));
    assert!(SearchSpace::named("darts").is_err());
}

#[test]
fn nas_bench_macro_all_identity_by_hand() {
    // stem 864 + 64; projections 32->64 (2048 + 128), 64->128 (8192 + 256), 128->256 (32768 + 512);
    // head 327680 + 2560; classifier 12810.
    let space = SearchSpace::nas_bench_macro();
    let r = cost_report(&space.subnet(&[0; 8]).unwrap());
    assert_eq!((r.params, r.madds), (387_882, 7_713_280));
    // Every sub-network builds, and its tensors match the cost model's parameter count.
    for digits in ["00000000", "12012012", "22222222", "10000001"] {
        let spec = space.subnet(&space.parse_choices(digits).unwrap()).unwrap();
        let manifest = Network::tensor_manifest(&spec).unwrap();
        let learnable: usize = manifest
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(learnable as u64, cost_report(&spec).params, "{digits}");
    }
}

#[test]
fn nas_bench_macro_cost_matches_the_benchmark_for_every_key() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = fairnas_data::shared_data::for_test(&repo) else { return };
    let text =
        std::fs::read_to_string(shared.join("data/nas-bench-macro/nas-bench-macro_cifar10.json")).unwrap();
    let bench: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(bench.len(), 6561);
    let space = SearchSpace::nas_bench_macro();
    let mut mismatches = Vec::new();
    for (key, entry) in &bench {
        let r = cost_report(&space.subnet(&space.parse_choices(key).unwrap()).unwrap());
        let want = (entry["params"].as_u64().unwrap(), entry["flops"].as_u64().unwrap());
        if (r.params, r.madds) != want {
            mismatches.push(format!("{key}: ours {:?}, benchmark {want:?}", (r.params, r.madds)));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of 6561 differ, e.g. {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}
