//! The searches on problems whose true Pareto front is known by enumeration: a synthetic space
//! and NAS-Bench-Macro's real ground truth (stand-alone accuracy vs FLOPs, 3969 architectures).

use std::path::Path;

use fairnas_model::search_space::SearchSpace;
use fairnas_search::evolution::{
    front_hypervolume, random_search, ConstrainedEvolution, EvolutionConfig, Generational, Individual, Nsga2,
    Nsga2Config, SearchState,
};
use fairnas_search::ground_truth::GroundTruth;
use fairnas_search::objective::{Direction, Goals, Problem};

/// 6 layers x 3 choices; two conflicting costs from a fixed hash (no structure to exploit).
struct Toy {
    evaluated: usize,
}

fn toy_metrics(g: &[usize]) -> Vec<f64> {
    let mut h = 1469598103934665603u64;
    for &c in g {
        h = (h ^ c as u64).wrapping_mul(1099511628211);
    }
    let noise = |k: u64| ((h >> (16 * k)) % 1000) as f64 / 500.0; // [0, 2)
    let cost: f64 = g.iter().enumerate().map(|(l, &c)| (c * (l + 1)) as f64).sum();
    let error: f64 = g.iter().enumerate().map(|(l, &c)| ((2 - c) * (6 - l)) as f64).sum();
    vec![cost + noise(0), error + noise(1), (h % 7) as f64]
}

impl Problem for Toy {
    fn choice_counts(&self) -> Vec<usize> {
        vec![3; 6]
    }
    fn metric_names(&self) -> Vec<String> {
        vec!["cost".into(), "error".into(), "latency".into()]
    }
    fn evaluate(&mut self, genomes: &[Vec<usize>]) -> Result<Vec<Vec<f64>>, fairnas_search::SearchError> {
        self.evaluated += genomes.len();
        Ok(genomes.iter().map(|g| toy_metrics(g)).collect())
    }
}

fn all_genomes(counts: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &n in counts {
        out = out.into_iter().flat_map(|g| (0..n).map(move |c| [g.clone(), vec![c]].concat())).collect();
    }
    out
}

fn individuals(
    goals: &Goals,
    genomes: Vec<Vec<usize>>,
    metrics: impl Fn(&[usize]) -> Vec<f64>,
) -> Vec<Individual> {
    genomes
        .into_iter()
        .map(|g| {
            let m = metrics(&g);
            Individual { fitness: goals.fitness(&m), metrics: m, genome: g }
        })
        .collect()
}

#[test]
fn nsga2_finds_the_enumerated_front_deterministically_and_resumes_exactly() {
    let metrics = Toy { evaluated: 0 }.metric_names();
    let goals = Goals::named(&metrics, &[("cost", Direction::Minimize), ("error", Direction::Minimize)], &[])
        .unwrap();
    let reference = vec![45.0, 45.0];
    let truth = individuals(&goals, all_genomes(&[3; 6]), toy_metrics);
    let true_hv = front_hypervolume(&goals, &truth, &reference);
    let config = Nsga2Config {
        population: 24,
        generations: 15,
        crossover: 0.9,
        mutation: None,
        seed: 5,
        reference: reference.clone(),
    };
    let nsga = Nsga2 { config: config.clone(), goals: &goals };
    let run = |generations: usize, mut state: Option<SearchState>| {
        let mut toy = Toy { evaluated: 0 };
        let mut s = state.take().unwrap_or_else(|| nsga.start(&mut toy).unwrap());
        while s.generation < generations {
            nsga.step(&mut toy, &mut s).unwrap();
        }
        (s, toy.evaluated)
    };
    let (full, evaluated) = run(15, None);
    assert_eq!(evaluated, full.archive.len(), "every architecture is evaluated once");
    assert!(evaluated <= 24 * 16, "at most one new architecture per child");
    let true_front = fairnas_search::pareto::non_dominated_sort(
        &truth.iter().map(|i| i.fitness.clone()).collect::<Vec<_>>(),
    )[0]
    .len();
    let found = full.archive_front(&goals);
    let hv = front_hypervolume(&goals, &found, &reference);
    eprintln!(
        "toy: NSGA-II front of {} (true {true_front}), hypervolume {hv:.4} of the true front's {true_hv:.4} ({:.2}%) after {evaluated} of 729 evaluations; final population alone {:.4}",
        found.len(),
        100.0 * hv / true_hv,
        front_hypervolume(&goals, &full.population, &reference)
    );
    assert!(hv / true_hv > 0.99, "{hv} vs {true_hv}");
    assert!(hv <= true_hv + 1e-9);
    // Same seed, same run; a state saved mid-way (through JSON) continues to the same end.
    assert_eq!(run(15, None).0, full);
    let (half, _) = run(6, None);
    let saved: SearchState = serde_json::from_str(&serde_json::to_string(&half).unwrap()).unwrap();
    assert_eq!(run(15, Some(saved)).0, full);
    // History grows one entry per generation with a non-decreasing hypervolume (elitism).
    assert_eq!(full.history.len(), 16);
    assert!(full.history.windows(2).all(|w| w[1].hypervolume >= w[0].hypervolume - 1e-12));
}

#[test]
fn constraints_keep_the_result_feasible() {
    let metrics = Toy { evaluated: 0 }.metric_names();
    let goals = Goals::named(
        &metrics,
        &[("cost", Direction::Minimize), ("error", Direction::Minimize)],
        &[("latency", 3.0)],
    )
    .unwrap();
    let nsga = Nsga2 {
        config: Nsga2Config {
            population: 16,
            generations: 8,
            crossover: 0.9,
            mutation: None,
            seed: 1,
            reference: vec![45.0, 45.0],
        },
        goals: &goals,
    };
    let mut toy = Toy { evaluated: 0 };
    let mut s = nsga.start(&mut toy).unwrap();
    for _ in 0..8 {
        nsga.step(&mut toy, &mut s).unwrap();
    }
    assert!(s.population.iter().all(|i| i.metrics[2] <= 3.0));
    assert!(s.archive_front(&goals).iter().all(|i| i.metrics[2] <= 3.0));
    // The single-objective search: least cost with error <= 20 and latency <= 3.
    let goals1 =
        Goals::named(&metrics, &[("cost", Direction::Minimize)], &[("error", 20.0), ("latency", 3.0)])
            .unwrap();
    let evo = ConstrainedEvolution {
        config: EvolutionConfig {
            population: 16,
            generations: 10,
            parents: 8,
            mutation: 0.2,
            seed: 2,
            reference: vec![45.0],
        },
        goals: &goals1,
    };
    let mut toy = Toy { evaluated: 0 };
    let mut s = evo.start(&mut toy).unwrap();
    for _ in 0..10 {
        evo.step(&mut toy, &mut s).unwrap();
    }
    let best_true = all_genomes(&[3; 6])
        .iter()
        .map(|g| toy_metrics(g))
        .filter(|m| m[1] <= 20.0 && m[2] <= 3.0)
        .map(|m| m[0])
        .fold(f64::INFINITY, f64::min);
    let best = &s.population[0];
    assert!(best.fitness.feasible());
    eprintln!(
        "toy constrained: best cost {} (true optimum {best_true}) in {} evaluations",
        best.metrics[0],
        s.archive.len()
    );
    assert!(best.metrics[0] <= best_true + 1.0, "{} vs {best_true}", best.metrics[0]);
}

/// NAS-Bench-Macro's stand-alone accuracy and FLOPs as the objectives (no supernet): NSGA-II
/// against random search at the same number of evaluations, against the true front.
struct Benchmark<'a> {
    space: SearchSpace,
    gt: &'a GroundTruth,
}

impl Problem for Benchmark<'_> {
    fn choice_counts(&self) -> Vec<usize> {
        self.space.choice_counts()
    }
    fn metric_names(&self) -> Vec<String> {
        vec!["acc".into(), "flops".into()]
    }
    fn evaluate(&mut self, genomes: &[Vec<usize>]) -> Result<Vec<Vec<f64>>, fairnas_search::SearchError> {
        genomes
            .iter()
            .map(|g| {
                self.gt
                    .require(&self.space, g)
                    .map(|e| vec![e.mean_acc, e.flops as f64])
                    .map_err(fairnas_search::SearchError::from)
            })
            .collect()
    }
    fn canonical(&self, genome: &[usize]) -> Vec<usize> {
        self.space.canonical(genome)
    }
}

#[test]
fn on_nas_bench_macro_ground_truth_nsga2_beats_random_search() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = fairnas_data::shared_data::for_test(&repo) else { return };
    let space = SearchSpace::nas_bench_macro();
    let gt =
        GroundTruth::load(&shared.join("data/nas-bench-macro/nas-bench-macro_cifar10.json"), &space).unwrap();
    let metrics = vec!["acc".to_string(), "flops".to_string()];
    let goals =
        Goals::named(&metrics, &[("acc", Direction::Maximize), ("flops", Direction::Minimize)], &[]).unwrap();
    let all = space.canonical_architectures(10_000).unwrap();
    let truth = individuals(&goals, all.clone(), |g| {
        let e = gt.get(g).unwrap();
        vec![e.mean_acc, e.flops as f64]
    });
    let worst_acc = truth.iter().map(|i| i.metrics[0]).fold(f64::INFINITY, f64::min);
    let most_flops = truth.iter().map(|i| i.metrics[1]).fold(0.0, f64::max);
    let reference = vec![worst_acc, most_flops];
    let true_hv = front_hypervolume(&goals, &truth, &reference);
    let (mut nsga_sum, mut random_sum) = (0.0, 0.0);
    for seed in 0..3 {
        let nsga = Nsga2 {
            config: Nsga2Config {
                population: 24,
                generations: 12,
                crossover: 0.9,
                mutation: None,
                seed,
                reference: reference.clone(),
            },
            goals: &goals,
        };
        let mut problem = Benchmark { space: space.clone(), gt: &gt };
        let mut s = nsga.start(&mut problem).unwrap();
        for _ in 0..12 {
            nsga.step(&mut problem, &mut s).unwrap();
        }
        let evaluations = s.archive.len();
        let nsga_hv = front_hypervolume(&goals, &s.archive_front(&goals), &reference) / true_hv;
        let r = random_search(&mut problem, &goals, evaluations, 24, seed, &reference).unwrap();
        assert_eq!(r.archive.len(), evaluations);
        let random_hv = front_hypervolume(&goals, &r.population, &reference) / true_hv;
        eprintln!("seed {seed}: {evaluations} evaluations of 3969: NSGA-II {:.4}, random {:.4} of the true front's hypervolume", nsga_hv, random_hv);
        nsga_sum += nsga_hv;
        random_sum += random_hv;
    }
    assert!(nsga_sum > random_sum, "NSGA-II {nsga_sum} vs random {random_sum} (sums over 3 seeds)");
    assert!(nsga_sum / 3.0 > 0.97, "NSGA-II mean hypervolume ratio {}", nsga_sum / 3.0);
}
