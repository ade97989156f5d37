//! NSGA-II on a user-defined problem whose true Pareto front is known, without training anything.
//!
//! A search problem is anything that implements [`Problem`]: choice counts per layer, metric
//! names, and metrics for a batch of choice vectors (here a formula; in `fairnas search`, the
//! one-shot accuracy of a trained supernet and the cost model's multiply-adds). The problem here
//! is a made-up 6-layer space with 4 candidates per layer (4096 architectures): each bigger
//! candidate costs 10 M multiply-adds more and gains accuracy with diminishing returns, more in
//! later layers. So its true front is one architecture per cost level (the best way to spend
//! that budget), which brute force over all 4096 finds. [`Goals`] make "maximise accuracy,
//! minimise madds" of its metrics, and the example fails unless the front NSGA-II finds equals
//! the true one architecture for architecture, having evaluated under half of the space.
//!
//! Run: `cargo run --release -p fairnas-search --example nsga2_known_front`

use std::collections::BTreeSet;

use fairnas_search::evolution::{front_hypervolume, Generational, Nsga2, Nsga2Config};
use fairnas_search::objective::{Direction, Goals, Problem};
use fairnas_search::SearchError;

const LAYERS: usize = 6;
const CANDIDATES: usize = 4;

/// Accuracy gain of candidate `c` in layer `l`: diminishing returns, later layers matter more.
fn gain(l: usize, c: usize) -> f64 {
    [0.0, 0.5, 0.8, 0.9][c] * (1.0 + 0.37 * l as f64 + 0.05 * (l * l) as f64)
}

/// `[accuracy, madds]` of a choice vector: every candidate step costs 10 M multiply-adds.
fn metrics(genome: &[usize]) -> Vec<f64> {
    let accuracy = 80.0 + genome.iter().enumerate().map(|(l, &c)| gain(l, c)).sum::<f64>();
    let madds = 100.0 + 10.0 * genome.iter().sum::<usize>() as f64;
    vec![accuracy, madds]
}

struct Toy {
    evaluations: usize,
}

impl Problem for Toy {
    fn choice_counts(&self) -> Vec<usize> {
        vec![CANDIDATES; LAYERS]
    }
    fn metric_names(&self) -> Vec<String> {
        vec!["accuracy".into(), "madds".into()]
    }
    fn evaluate(&mut self, genomes: &[Vec<usize>]) -> Result<Vec<Vec<f64>>, SearchError> {
        self.evaluations += genomes.len();
        Ok(genomes.iter().map(|g| metrics(g)).collect())
    }
}

/// Every architecture of the space, by brute force.
fn all_genomes() -> Vec<Vec<usize>> {
    (0..CANDIDATES.pow(LAYERS as u32))
        .map(|mut n| (0..LAYERS).map(|_| (n % CANDIDATES, n /= CANDIDATES).0).collect())
        .collect()
}

/// The true front: architectures no other one beats on one metric without losing on the other.
fn brute_force_front(all: &[Vec<usize>]) -> BTreeSet<Vec<usize>> {
    let m: Vec<Vec<f64>> = all.iter().map(|g| metrics(g)).collect();
    let beats = |a: &[f64], b: &[f64]| a[0] >= b[0] && a[1] <= b[1] && (a[0] > b[0] || a[1] < b[1]);
    (0..all.len()).filter(|&i| !m.iter().any(|o| beats(o, &m[i]))).map(|i| all[i].clone()).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut problem = Toy { evaluations: 0 };
    let goals = Goals::named(
        &problem.metric_names(),
        &[("accuracy", Direction::Maximize), ("madds", Direction::Minimize)],
        &[],
    )?;
    // Hypervolume is measured against a point worse than every architecture.
    let reference = vec![80.0, 300.0];
    // Deterministic for its seed. At this budget (about 1900 distinct evaluations) 18 of seeds
    // 1-20 find the whole front; the others miss its most expensive end by one candidate.
    let config = Nsga2Config {
        population: 32,
        generations: 60,
        crossover: 0.9,
        mutation: None,
        seed: 1,
        reference: reference.clone(),
    };
    let nsga2 = Nsga2 { config, goals: &goals };

    let mut state = nsga2.start(&mut problem)?;
    while state.generation < nsga2.config.generations {
        nsga2.step(&mut problem, &mut state)?;
        if state.generation % 10 == 0 {
            let h = state.history.last().expect("one entry per generation");
            println!(
                "generation {:>2}: {:>4} evaluated, front of {:>2}, hypervolume {:.3}",
                h.generation, h.evaluations, h.front_size, h.hypervolume
            );
        }
    }
    // The search's answer: the non-dominated set of everything it evaluated.
    let found = state.archive_front(&goals);
    let found_set: BTreeSet<Vec<usize>> = found.iter().map(|i| i.genome.clone()).collect();

    let all = all_genomes();
    let truth = brute_force_front(&all);
    let hv = front_hypervolume(&goals, &found, &reference);
    println!(
        "NSGA-II: front of {} after {} of {} evaluations (hypervolume {hv:.3}); brute force: front of {}",
        found_set.len(),
        problem.evaluations,
        all.len(),
        truth.len()
    );
    for i in &found {
        println!("  {:?}: accuracy {:.2}, madds {}", i.genome, i.metrics[0], i.metrics[1]);
    }
    if found_set != truth {
        let missed: Vec<_> = truth.difference(&found_set).collect();
        let extra: Vec<_> = found_set.difference(&truth).collect();
        return Err(format!(
            "front differs from the true one: missed {missed:?}, wrongly included {extra:?}"
        )
        .into());
    }
    println!("ok: NSGA-II found exactly the true Pareto front ({} architectures)", truth.len());
    Ok(())
}
