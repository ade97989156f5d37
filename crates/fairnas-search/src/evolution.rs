//! The searches: NSGA-II (multi-objective), and two baselines at the same evaluation budget:
//! random search, and a single-objective evolutionary search under constraints (SPOS-style:
//! top-k parents, mutation and crossover).
//!
//! Every search is deterministic for its seed and resumable: the randomness of generation `g`
//! comes from `SampleRng::new(seed, g, ..)` alone, and [`SearchState`] (population, archive of
//! every evaluated architecture, history) is everything else, so a state saved after any
//! generation continues exactly as the uninterrupted run would.

use std::collections::{BTreeMap, BTreeSet};

use fairnas_ops::rng::SampleRng;

use crate::SearchError;
use serde::{Deserialize, Serialize};

use crate::objective::{Goals, Problem};
use crate::pareto::{crowding_distance, hypervolume, non_dominated_sort, Fitness};

/// One evaluated architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Individual {
    pub genome: Vec<usize>,
    /// The problem's metrics, natural units, in its `metric_names` order.
    pub metrics: Vec<f64>,
    pub fitness: Fitness,
}

/// Progress after one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    pub generation: usize,
    /// Distinct architectures evaluated so far (the search's cost).
    pub evaluations: usize,
    /// Size of the feasible first front of the population.
    pub front_size: usize,
    /// Hypervolume of that front against the search's reference point.
    pub hypervolume: f64,
    /// Best natural value of each objective among feasible members.
    pub best: Vec<Option<f64>>,
}

/// Everything a search carries from one generation to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    pub algorithm: String,
    pub generation: usize,
    pub population: Vec<Individual>,
    /// Metrics of every architecture evaluated so far, by canonical genome (a list of
    /// `[genome, metrics]` pairs in JSON, whose map keys must be strings).
    #[serde(with = "archive_pairs")]
    pub archive: BTreeMap<Vec<usize>, Vec<f64>>,
    pub history: Vec<GenerationStats>,
}

mod archive_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<Vec<usize>, Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Vec<usize>, Vec<f64>>, D::Error> {
        Ok(Vec::<(Vec<usize>, Vec<f64>)>::deserialize(d)?.into_iter().collect())
    }
}

impl SearchState {
    fn new(algorithm: &str) -> Self {
        SearchState {
            algorithm: algorithm.into(),
            generation: 0,
            population: Vec::new(),
            archive: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    /// The feasible non-dominated individuals among everything evaluated (not only the final
    /// population: NSGA-II can drop a front member when crowding decides).
    pub fn archive_front(&self, goals: &Goals) -> Vec<Individual> {
        let all: Vec<Individual> = self
            .archive
            .iter()
            .map(|(g, m)| Individual { genome: g.clone(), metrics: m.clone(), fitness: goals.fitness(m) })
            .filter(|i| i.fitness.feasible())
            .collect();
        let fitness: Vec<Fitness> = all.iter().map(|i| i.fitness.clone()).collect();
        match non_dominated_sort(&fitness).first() {
            Some(front) => front.iter().map(|&i| all[i].clone()).collect(),
            None => Vec::new(),
        }
    }
}

/// Hypervolume (minimisation form) of the feasible first front of `items` against `reference`
/// (natural units, converted with `goals`).
pub fn front_hypervolume(goals: &Goals, items: &[Individual], reference: &[f64]) -> f64 {
    let reference = goals.fitness_of_objectives(reference);
    let feasible: Vec<Vec<f64>> =
        items.iter().filter(|i| i.fitness.feasible()).map(|i| i.fitness.values.clone()).collect();
    hypervolume(&feasible, &reference)
}

fn statistics(goals: &Goals, state: &SearchState, reference: &[f64]) -> GenerationStats {
    let fitness: Vec<Fitness> = state.population.iter().map(|i| i.fitness.clone()).collect();
    let front: Vec<Individual> = non_dominated_sort(&fitness)
        .first()
        .map(|f| f.iter().map(|&i| state.population[i].clone()).filter(|i| i.fitness.feasible()).collect())
        .unwrap_or_default();
    let best = (0..goals.objectives.len())
        .map(|k| {
            state
                .population
                .iter()
                .filter(|i| i.fitness.feasible())
                .map(|i| i.fitness.values[k])
                .min_by(f64::total_cmp)
                .map(|v| goals.natural_value(k, v))
        })
        .collect();
    GenerationStats {
        generation: state.generation,
        evaluations: state.archive.len(),
        front_size: front.len(),
        hypervolume: front_hypervolume(goals, &front, reference),
        best,
    }
}

/// Evaluates the genomes not yet in the archive (one batch), then returns all as individuals.
fn evaluate(
    problem: &mut dyn Problem,
    goals: &Goals,
    archive: &mut BTreeMap<Vec<usize>, Vec<f64>>,
    genomes: Vec<Vec<usize>>,
) -> Result<Vec<Individual>, SearchError> {
    let mut new: Vec<Vec<usize>> = genomes.iter().filter(|g| !archive.contains_key(*g)).cloned().collect();
    new.sort();
    new.dedup();
    if !new.is_empty() {
        let metrics = problem.evaluate(&new)?;
        let expected = problem.metric_names().len();
        if metrics.len() != new.len() || metrics.iter().any(|m| m.len() != expected) {
            return Err(SearchError::MetricRows { rows: metrics.len(), architectures: new.len() });
        }
        if let Some((g, m)) = new.iter().zip(&metrics).find(|(_, m)| m.iter().any(|v| !v.is_finite())) {
            return Err(SearchError::NonFinite { choices: g.clone(), metrics: m.clone() });
        }
        archive.extend(new.into_iter().zip(metrics));
    }
    Ok(genomes
        .into_iter()
        .map(|g| {
            let metrics = archive[&g].clone();
            Individual { fitness: goals.fitness(&metrics), genome: g, metrics }
        })
        .collect())
}

fn random_genome(counts: &[usize], rng: &mut SampleRng) -> Vec<usize> {
    counts.iter().map(|&n| rng.up_to(n as u32 - 1) as usize).collect()
}

/// A canonical genome from `make`, preferring one not in `avoid` (up to 32 tries).
fn novel(
    problem: &dyn Problem,
    avoid: &dyn Fn(&[usize]) -> bool,
    mut make: impl FnMut() -> Vec<usize>,
) -> Vec<usize> {
    let mut last = Vec::new();
    for _ in 0..32 {
        last = problem.canonical(&make());
        if !avoid(&last) {
            break;
        }
    }
    last
}

/// `count` distinct random canonical genomes (fewer if the space is smaller).
fn random_population(problem: &dyn Problem, count: usize, rng: &mut SampleRng) -> Vec<Vec<usize>> {
    let counts = problem.choice_counts();
    let mut taken = BTreeSet::new();
    let mut out = Vec::new();
    let mut misses = 0;
    while out.len() < count && misses < 64 * count.max(1) {
        let g = problem.canonical(&random_genome(&counts, rng));
        if taken.insert(g.clone()) {
            out.push(g);
        } else {
            misses += 1;
        }
    }
    out
}

/// A search that advances generation by generation (NSGA-II, the constrained evolution).
pub trait Generational {
    /// Generation 0.
    fn start(&self, problem: &mut dyn Problem) -> Result<SearchState, SearchError>;
    /// The next generation.
    fn step(&self, problem: &mut dyn Problem, state: &mut SearchState) -> Result<(), SearchError>;
}

/// Generation 0 of a search: `population` distinct random architectures, evaluated, put in
/// the search's order.
fn random_start(
    algorithm: &str,
    problem: &mut dyn Problem,
    goals: &Goals,
    population: usize,
    mut rng: SampleRng,
    reference: &[f64],
    order: impl Fn(&mut [Individual]),
) -> Result<SearchState, SearchError> {
    let mut state = SearchState::new(algorithm);
    let genomes = random_population(problem, population, &mut rng);
    state.population = evaluate(problem, goals, &mut state.archive, genomes)?;
    order(&mut state.population);
    state.history.push(statistics(goals, &state, reference));
    Ok(state)
}

/// NSGA-II settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nsga2Config {
    pub population: usize,
    pub generations: usize,
    /// Probability that a child comes from uniform crossover (else a copy of one parent).
    pub crossover: f64,
    /// Per-layer mutation probability (default 1 / layers).
    pub mutation: Option<f64>,
    pub seed: u64,
    /// Reference point for the reported hypervolume, natural units per objective.
    pub reference: Vec<f64>,
}

/// NSGA-II (Deb et al. 2002) over choice vectors: binary tournament on (front rank, crowding),
/// uniform crossover, per-layer mutation to another candidate, elitist (mu + lambda) selection
/// by fronts and crowding distance, under constrained domination.
pub struct Nsga2<'a> {
    pub config: Nsga2Config,
    pub goals: &'a Goals,
}

impl Generational for Nsga2<'_> {
    /// Generation 0: a random population.
    fn start(&self, problem: &mut dyn Problem) -> Result<SearchState, SearchError> {
        let c = &self.config;
        random_start(
            "nsga2",
            problem,
            self.goals,
            c.population,
            SampleRng::new(c.seed, 0, 0),
            &c.reference,
            |_| {},
        )
    }

    fn step(&self, problem: &mut dyn Problem, state: &mut SearchState) -> Result<(), SearchError> {
        self.next_generation(problem, state)
    }
}

impl Nsga2<'_> {
    /// Rank (front index) and crowding distance of every member.
    fn rank_and_crowd(items: &[Individual]) -> (Vec<usize>, Vec<f64>) {
        let fitness: Vec<Fitness> = items.iter().map(|i| i.fitness.clone()).collect();
        let (mut rank, mut crowd) = (vec![0; items.len()], vec![0.0; items.len()]);
        for (r, front) in non_dominated_sort(&fitness).iter().enumerate() {
            for (&i, d) in front.iter().zip(crowding_distance(&fitness, front)) {
                rank[i] = r;
                crowd[i] = d;
            }
        }
        (rank, crowd)
    }

    /// One generation: offspring by tournament, crossover and mutation, then elitist selection.
    fn next_generation(&self, problem: &mut dyn Problem, state: &mut SearchState) -> Result<(), SearchError> {
        let generation = state.generation + 1;
        let mut rng = SampleRng::new(self.config.seed, generation as u64, 1);
        let counts = problem.choice_counts();
        let pm = self.config.mutation.unwrap_or(1.0 / counts.len().max(1) as f64);
        let parents = &state.population;
        if parents.is_empty() {
            return Err(SearchError::EmptyPopulation);
        }
        let (rank, crowd) = Self::rank_and_crowd(parents);
        let tournament = |rng: &mut SampleRng| {
            let i = rng.up_to(parents.len() as u32 - 1) as usize;
            let j = rng.up_to(parents.len() as u32 - 1) as usize;
            let better = rank[j] < rank[i] || (rank[j] == rank[i] && crowd[j] > crowd[i]);
            if better {
                j
            } else {
                i
            }
        };
        let mut offspring: Vec<Vec<usize>> = Vec::new();
        let in_population: BTreeSet<&Vec<usize>> = parents.iter().map(|p| &p.genome).collect();
        while offspring.len() < self.config.population {
            let (a, b) = (tournament(&mut rng), tournament(&mut rng));
            let cross = rng.uniform() < self.config.crossover;
            let taken = |g: &[usize]| {
                state.archive.contains_key(g)
                    || in_population.contains(&g.to_vec())
                    || offspring.iter().any(|o| o == g)
            };
            let child = novel(problem, &taken, || {
                let mut child: Vec<usize> = (0..counts.len())
                    .map(|l| {
                        if cross && rng.uniform() < 0.5 {
                            parents[b].genome[l]
                        } else {
                            parents[a].genome[l]
                        }
                    })
                    .collect();
                for (l, gene) in child.iter_mut().enumerate() {
                    if counts[l] > 1 && rng.uniform() < pm {
                        // another candidate, uniformly
                        let other = rng.up_to(counts[l] as u32 - 2) as usize;
                        *gene = if other >= *gene { other + 1 } else { other };
                    }
                }
                child
            });
            offspring.push(child);
        }
        let children = evaluate(problem, self.goals, &mut state.archive, offspring)?;
        let mut combined: Vec<Individual> = state.population.drain(..).collect();
        for c in children {
            if !combined.iter().any(|p| p.genome == c.genome) {
                combined.push(c);
            }
        }
        state.population = environmental_selection(combined, self.config.population);
        state.generation = generation;
        state.history.push(statistics(self.goals, state, &self.config.reference));
        Ok(())
    }
}

/// The best `n` of `items` by front, then crowding distance within the last front admitted.
fn environmental_selection(items: Vec<Individual>, n: usize) -> Vec<Individual> {
    let fitness: Vec<Fitness> = items.iter().map(|i| i.fitness.clone()).collect();
    let mut keep = Vec::new();
    for front in non_dominated_sort(&fitness) {
        if keep.len() + front.len() <= n {
            keep.extend(front);
        } else {
            let d = crowding_distance(&fitness, &front);
            let mut order: Vec<usize> = (0..front.len()).collect();
            order.sort_by(|&a, &b| d[b].total_cmp(&d[a]).then(a.cmp(&b)));
            keep.extend(order.into_iter().take(n - keep.len()).map(|k| front[k]));
        }
        if keep.len() >= n {
            break;
        }
    }
    keep.sort_unstable();
    let mut items: Vec<Option<Individual>> = items.into_iter().map(Some).collect();
    keep.into_iter().map(|i| items[i].take().expect("each index once")).collect()
}

/// Random search: `evaluations` distinct random canonical architectures, in batches of
/// `batch` (each batch is one "generation" in the history).
pub fn random_search(
    problem: &mut dyn Problem,
    goals: &Goals,
    evaluations: usize,
    batch: usize,
    seed: u64,
    reference: &[f64],
) -> Result<SearchState, SearchError> {
    let mut state = SearchState::new("random");
    let mut rng = SampleRng::new(seed, 0, 2);
    let genomes = random_population(problem, evaluations, &mut rng);
    for (g, chunk) in genomes.chunks(batch.max(1)).enumerate() {
        let mut evaluated = evaluate(problem, goals, &mut state.archive, chunk.to_vec())?;
        state.population.append(&mut evaluated);
        state.generation = g;
        state.history.push(statistics(goals, &state, reference));
    }
    Ok(state)
}

/// Single-objective evolution under constraints (the SPOS search): the first objective is
/// optimised; each generation keeps the top `parents`, and makes half its children by
/// mutation, half by crossover of two parents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvolutionConfig {
    pub population: usize,
    pub generations: usize,
    pub parents: usize,
    pub mutation: f64,
    pub seed: u64,
    pub reference: Vec<f64>,
}

pub struct ConstrainedEvolution<'a> {
    pub config: EvolutionConfig,
    pub goals: &'a Goals,
}

impl Generational for ConstrainedEvolution<'_> {
    fn start(&self, problem: &mut dyn Problem) -> Result<SearchState, SearchError> {
        let c = &self.config;
        let rng = SampleRng::new(c.seed, 0, 3);
        random_start("evolution", problem, self.goals, c.population, rng, &c.reference, Self::order)
    }

    fn step(&self, problem: &mut dyn Problem, state: &mut SearchState) -> Result<(), SearchError> {
        self.next_generation(problem, state)
    }
}

impl ConstrainedEvolution<'_> {
    /// Feasible first, then by the first objective (minimisation form), then genome.
    fn order(items: &mut [Individual]) {
        items.sort_by(|a, b| {
            (a.fitness.violation, a.fitness.values[0])
                .partial_cmp(&(b.fitness.violation, b.fitness.values[0]))
                .expect("finite")
                .then_with(|| a.genome.cmp(&b.genome))
        });
    }

    fn next_generation(&self, problem: &mut dyn Problem, state: &mut SearchState) -> Result<(), SearchError> {
        let generation = state.generation + 1;
        let mut rng = SampleRng::new(self.config.seed, generation as u64, 4);
        let counts = problem.choice_counts();
        let k = self.config.parents.clamp(1, state.population.len().max(1));
        let parents: Vec<Vec<usize>> = state.population.iter().take(k).map(|i| i.genome.clone()).collect();
        let mut children: Vec<Vec<usize>> = Vec::new();
        while children.len() < self.config.population {
            let mutate = children.len().is_multiple_of(2);
            let taken = |g: &[usize]| state.archive.contains_key(g) || children.iter().any(|c| c == g);
            let child = novel(problem, &taken, || {
                let a = &parents[rng.up_to(k as u32 - 1) as usize];
                if mutate {
                    a.iter()
                        .enumerate()
                        .map(|(l, &c)| {
                            if rng.uniform() < self.config.mutation {
                                rng.up_to(counts[l] as u32 - 1) as usize
                            } else {
                                c
                            }
                        })
                        .collect()
                } else {
                    let b = &parents[rng.up_to(k as u32 - 1) as usize];
                    a.iter().zip(b).map(|(&x, &y)| if rng.uniform() < 0.5 { x } else { y }).collect()
                }
            });
            children.push(child);
        }
        let mut all = state.population.clone();
        for c in evaluate(problem, self.goals, &mut state.archive, children)? {
            if !all.iter().any(|p| p.genome == c.genome) {
                all.push(c);
            }
        }
        Self::order(&mut all);
        all.truncate(self.config.population);
        state.population = all;
        state.generation = generation;
        state.history.push(statistics(self.goals, state, &self.config.reference));
        Ok(())
    }
}
