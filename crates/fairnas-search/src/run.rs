//! A resumable search over a trained supernet, as a library call: what `fairnas search` and
//! the `nas` pipeline run.
//!
//! Files in the output folder: `search-config.json` (the settings; a resume must match them),
//! `scores.jsonl` (every one-shot score, as it comes), `search-state.json` (the whole search
//! state after the last finished generation, written atomically), and at the end `front.json`
//! ([`FrontMember`]s), `front.csv` and `front.svg`. A killed search resumes exactly as if never
//! stopped (the randomness of a generation depends only on the seed and its number).
//!
//! Three calls: [`SearchRun::open`] (loads the supernet run, resolves and guards the settings),
//! decoding the batches its [`SearchRun::settings`] name (e.g.
//! `fairnas_supernet::images::scoring_batches`), and [`SearchRun::search`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use fairnas_model::persist::write_atomically;
use fairnas_model::search_space::{format_choices, SearchSpace};
use fairnas_supernet::checkpoint::TrainState;
use fairnas_supernet::scoring::{
    OneShotScore, PrefixScorer, ScoringBatches, ScoringOptions, ScoringSettings,
};
use fairnas_supernet::trainer::{self, load_run, TrainConfig};
use fairnas_supernet::world::{Solo, World};
use fairnas_supernet::Supernet;
use serde::{Deserialize, Serialize};

use crate::evolution::{
    front_hypervolume, random_search, ConstrainedEvolution, EvolutionConfig, GenerationStats, Generational,
    Individual, Nsga2, Nsga2Config, SearchState,
};
use crate::ground_truth::GroundTruth;
use crate::latency::LatencyTable;
use crate::objective::{Direction, Goals, Problem};
use crate::one_shot::{block_strings, max_cost, OneShotProblem, ONE_SHOT_METRICS};
use crate::pareto::non_dominated_sort;
use crate::plot::{Marker, Scatter, Series};
use crate::store::{guard_settings, ScoreCache};
use crate::SearchError;

/// The search algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// NSGA-II, multi-objective.
    Nsga2,
    /// Uniform random sampling with the same evaluation budget (a baseline).
    Random,
    /// Single-objective evolution on the first objective under the constraints (SPOS-style).
    Evolution,
}

impl std::str::FromStr for Algorithm {
    type Err = SearchError;
    fn from_str(s: &str) -> Result<Self, SearchError> {
        match s {
            "nsga2" => Ok(Algorithm::Nsga2),
            "random" => Ok(Algorithm::Random),
            "evolution" => Ok(Algorithm::Evolution),
            other => Err(SearchError::UnknownAlgorithm(other.to_string())),
        }
    }
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Nsga2 => "nsga2",
            Algorithm::Random => "random",
            Algorithm::Evolution => "evolution",
        }
    }
}

/// What to search for, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    /// Objective names: `acc` (maximised), `loss`, `madds`, `params`, `latency` (minimised).
    pub objectives: Vec<String>,
    pub max_madds: Option<f64>,
    pub max_params: Option<f64>,
    /// Milliseconds by the latency table.
    pub max_latency: Option<f64>,
    pub algorithm: Algorithm,
    pub population: usize,
    pub generations: usize,
    pub seed: u64,
    pub scoring: ScoringOptions,
    /// A benchmark's stand-alone ground truth: judge the found front by it too.
    pub ground_truth: Option<PathBuf>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            objectives: vec!["acc".into(), "madds".into()],
            max_madds: None,
            max_params: None,
            max_latency: None,
            algorithm: Algorithm::Nsga2,
            population: 64,
            generations: 30,
            seed: 0,
            scoring: ScoringOptions::default(),
            ground_truth: None,
        }
    }
}

/// Everything the search's results depend on (`search-config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    pub scoring: ScoringSettings,
    pub objectives: Vec<(String, Direction)>,
    pub constraints: Vec<(String, f64)>,
    pub algorithm: String,
    pub population: usize,
    pub seed: u64,
    /// Hypervolume reference point, natural units per objective.
    pub reference: Vec<f64>,
}

impl SearchConfig {
    /// Volume of the box between the ideal point (100% accuracy; zero loss, cost and latency)
    /// and the reference point: a hypervolume divided by it is the fraction of that box the
    /// front dominates, in [0, 1].
    pub fn reference_box(&self) -> f64 {
        let side = |((name, _), r): (&(String, Direction), &f64)| match name.as_str() {
            "acc" => (100.0 - r).abs(),
            _ => r.abs(),
        };
        self.objectives.iter().zip(&self.reference).map(side).product()
    }

    /// One generation's progress line: front size, hypervolume, the best value of each
    /// objective, evaluations so far.
    pub fn describe_generation(&self, s: &GenerationStats, total: usize) -> String {
        let best: Vec<String> = self
            .objectives
            .iter()
            .zip(&s.best)
            .map(|((name, _), b)| format!("best {name} {}", b.map_or("-".into(), |v| format!("{v:.4}"))))
            .collect();
        format!(
            "generation {}/{total}: front {}, hypervolume {:.6e}, {}, {} evaluations",
            s.generation,
            s.front_size,
            s.hypervolume,
            best.join(", "),
            s.evaluations
        )
    }
}

/// `search-state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSearch {
    pub config: SearchConfig,
    pub state: SearchState,
}

/// One architecture of the found front, as `front.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontMember {
    /// One-shot top-1, percent.
    pub acc: f64,
    pub blocks: String,
    pub choices: String,
    pub latency_ms: Option<f64>,
    pub loss: f64,
    pub madds: u64,
    pub params: u64,
}

/// The found front judged by a benchmark's stand-alone ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruthComparison {
    pub file: PathBuf,
    pub front_hypervolume: f64,
    pub front_members_on_true_front: usize,
    pub hypervolume_ratio: f64,
    pub reference: Vec<f64>,
    pub true_front_size: usize,
    pub true_hypervolume: f64,
}

/// How a search ended (what `fairnas search --json` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchSummary {
    pub algorithm: String,
    pub evaluations: usize,
    pub front: Vec<FrontMember>,
    pub front_size: usize,
    pub generations: usize,
    pub ground_truth: Option<GroundTruthComparison>,
    pub hypervolume: f64,
    pub objectives: Vec<(String, Direction)>,
    pub out: PathBuf,
    pub reference: Vec<f64>,
    pub scored_in_this_run: usize,
    pub wall_s: f64,
}

/// The human report: the search, the ground-truth verdict, the front.
impl std::fmt::Display for SearchSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} architectures evaluated, front of {} (hypervolume {:.6e}), results in {} ({:.0} s)",
            self.algorithm,
            self.evaluations,
            self.front_size,
            self.hypervolume,
            self.out.display(),
            self.wall_s
        )?;
        if let Some(g) = &self.ground_truth {
            write!(
                f,
                "\nstand-alone (ground truth): the found front's hypervolume is {:.4} of the true front's ({} architectures; reference: worst accuracy and largest cost in the benchmark)",
                g.hypervolume_ratio, g.true_front_size
            )?;
        }
        for m in &self.front {
            let (madds, params) = (m.madds as f64 / 1e6, m.params as f64 / 1e6);
            write!(f, "\n  {}  acc {:.2}%  madds {madds:.1}M  params {params:.2}M", m.choices, m.acc)?;
        }
        Ok(())
    }
}

/// Progress callbacks (the CLI's spinner and generation lines).
pub trait SearchObserver {
    fn message(&mut self, _text: &str) {}
    fn scored(&mut self, _choices: &[usize], _score: &OneShotScore) {}
    fn generation(&mut self, _stats: &GenerationStats, _generations: usize, _config: &SearchConfig) {}
}

/// A no-op observer.
pub struct Quiet;
impl SearchObserver for Quiet {}

/// A search ready to run: the supernet loaded, the settings resolved and guarded.
pub struct SearchRun {
    pub supernet: Supernet,
    pub train: TrainConfig,
    pub train_state: TrainState,
    pub space: SearchSpace,
    pub config: SearchConfig,
    pub options: SearchOptions,
    pub latency: Option<LatencyTable>,
    pub out: PathBuf,
    resume: bool,
}

/// Reads a latency table and checks that it is one of `space`.
pub fn read_latency_table(path: &Path, space: &SearchSpace) -> Result<LatencyTable, SearchError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| SearchError::Io { path: path.into(), source })?;
    let table: LatencyTable =
        serde_json::from_str(&text).map_err(|source| SearchError::Json { path: path.into(), source })?;
    if table.space != space.name || table.layers_ms.len() != space.layers.len() {
        return Err(SearchError::LatencySpace {
            path: path.into(),
            table: table.space,
            space: space.name.clone(),
        });
    }
    Ok(table)
}

impl SearchRun {
    /// Loads the supernet run at `supernet` (a checkpoint or its folder) and prepares a search
    /// into `out`; `latency` is a table path (enables the `latency` metric). A fresh search is
    /// refused where one already is unless `resume`, and a resume with other settings always.
    pub fn open(
        supernet: &Path,
        options: SearchOptions,
        latency: Option<&Path>,
        out: &Path,
        resume: bool,
    ) -> Result<Self, SearchError> {
        let checkpoint = trainer::resolve_checkpoint(supernet);
        let (supernet, train, train_state) = load_run(&checkpoint)?;
        let space = supernet.space().clone();
        let latency = latency.map(|p| read_latency_table(p, &space)).transpose()?;
        let objectives = objectives(&options.objectives, latency.is_some())?;
        let constraints = constraints(&options, latency.is_some())?;
        if options.population < 2 {
            return Err(SearchError::Population(options.population));
        }
        let reference = reference_point(&space, &objectives, &constraints, latency.as_ref())?;
        let config = SearchConfig {
            scoring: options.scoring.settings(&checkpoint, &train, &train_state, &space)?,
            objectives,
            constraints,
            algorithm: options.algorithm.name().to_string(),
            population: options.population,
            seed: options.seed,
            reference,
        };
        std::fs::create_dir_all(out).map_err(|source| SearchError::Io { path: out.into(), source })?;
        if out.join("search-state.json").exists() && !resume {
            return Err(SearchError::SearchExists(out.into()));
        }
        guard_settings(&out.join("search-config.json"), &config, &["checkpoint", "data"])?;
        Ok(SearchRun {
            supernet,
            train,
            train_state,
            space,
            config,
            options,
            latency,
            out: out.into(),
            resume,
        })
    }

    /// The scoring settings: which batches [`SearchRun::search`] must be given.
    pub fn settings(&self) -> &ScoringSettings {
        &self.config.scoring
    }

    fn goals(&self) -> Result<Goals, SearchError> {
        let mut metrics: Vec<String> = ONE_SHOT_METRICS.iter().map(|m| m.to_string()).collect();
        if self.latency.is_some() {
            metrics.push("latency".into());
        }
        let named = |v: &[(String, Direction)]| v.iter().map(|(n, d)| (n.clone(), *d)).collect::<Vec<_>>();
        let objectives = named(&self.config.objectives);
        let objectives: Vec<(&str, Direction)> = objectives.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let constraints: Vec<(&str, f64)> =
            self.config.constraints.iter().map(|(n, m)| (n.as_str(), *m)).collect();
        Goals::named(&metrics, &objectives, &constraints)
    }

    /// Runs (or resumes) the search on `batches`, writes the front files, and returns the
    /// summary.
    pub fn search(
        &self,
        batches: &ScoringBatches,
        observer: &mut dyn SearchObserver,
    ) -> Result<SearchSummary, SearchError> {
        self.search_in(&Solo, batches, observer)
    }

    /// [`SearchRun::search`] as one process of the job `world`: every rank runs the same
    /// (seeded) evolution, each new architecture is scored by one rank
    /// ([`crate::one_shot::score_across`]), and only the leader writes files.
    pub fn search_in(
        &self,
        world: &dyn World,
        batches: &ScoringBatches,
        observer: &mut dyn SearchObserver,
    ) -> Result<SearchSummary, SearchError> {
        let started = Instant::now();
        let goals = self.goals()?;
        let mut cache = ScoreCache::open(&self.out.join("scores.jsonl"))?;
        cache.persist(world.is_leader());
        let observer = std::cell::RefCell::new(observer);
        let scored_now = std::cell::Cell::new(0usize);
        let mut problem = OneShotProblem {
            space: self.space.clone(),
            scorer: PrefixScorer::new(&self.supernet, batches),
            store: &mut cache,
            on_scored: Box::new(|g, s| {
                scored_now.set(scored_now.get() + 1);
                observer.borrow_mut().scored(g, s);
            }),
            latency: self.latency.as_ref(),
            world,
        };
        let state = self.evolve(&mut problem, &goals, &observer, world)?;
        let published = self.published(&mut problem)?;
        drop(problem);
        let mut front = state.archive_front(&goals);
        front.sort_by(|a, b| a.metrics[2].total_cmp(&b.metrics[2]).then_with(|| a.genome.cmp(&b.genome)));
        let members = front_members(&self.space, &front)?;
        if world.is_leader() {
            self.write_outputs(&state, &front, &members, &published)?;
        }
        let hypervolume = front_hypervolume(&goals, &front, &self.config.reference);
        let ground_truth = match &self.options.ground_truth {
            Some(path) => {
                let genomes: Vec<Vec<usize>> = front.iter().map(|i| i.genome.clone()).collect();
                let truth = GroundTruth::load(path, &self.space)?;
                Some(ground_truth_comparison(&truth, &self.space, &self.config.objectives, &genomes)?)
            }
            None => None,
        };
        Ok(SearchSummary {
            algorithm: self.config.algorithm.clone(),
            evaluations: state.archive.len(),
            front_size: front.len(),
            front: members,
            generations: state.generation,
            ground_truth,
            hypervolume,
            objectives: self.config.objectives.clone(),
            out: self.out.clone(),
            reference: self.config.reference.clone(),
            scored_in_this_run: scored_now.get(),
            wall_s: started.elapsed().as_secs_f64(),
        })
    }

    fn save(&self, state: &SearchState, world: &dyn World) -> Result<(), SearchError> {
        if !world.is_leader() {
            return Ok(());
        }
        let path = self.out.join("search-state.json");
        let saved = SavedSearch { config: self.config.clone(), state: state.clone() };
        let text = serde_json::to_string(&saved).expect("search state serialises");
        write_atomically(&path, text.as_bytes()).map_err(|source| SearchError::Io { path, source })
    }

    fn previous(&self, observer: &mut dyn SearchObserver) -> Result<Option<SearchState>, SearchError> {
        let path = self.out.join("search-state.json");
        if !(self.resume && path.exists()) {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|source| SearchError::Io { path: path.clone(), source })?;
        let saved: SavedSearch =
            serde_json::from_str(&text).map_err(|source| SearchError::Json { path: path.clone(), source })?;
        observer.message(&format!(
            "resuming after generation {} from {}",
            saved.state.generation,
            path.display()
        ));
        Ok(Some(saved.state))
    }

    fn evolve(
        &self,
        problem: &mut dyn Problem,
        goals: &Goals,
        observer: &std::cell::RefCell<&mut dyn SearchObserver>,
        world: &dyn World,
    ) -> Result<SearchState, SearchError> {
        let o = &self.options;
        let reference = self.config.reference.clone();
        let nsga = Nsga2 {
            config: Nsga2Config {
                population: o.population,
                generations: o.generations,
                crossover: 0.9,
                mutation: None,
                seed: o.seed,
                reference: reference.clone(),
            },
            goals,
        };
        let evolution = ConstrainedEvolution {
            config: EvolutionConfig {
                population: o.population,
                generations: o.generations,
                parents: (o.population / 2).max(1),
                mutation: 0.1,
                seed: o.seed,
                reference: reference.clone(),
            },
            goals,
        };
        let search: &dyn Generational = match o.algorithm {
            Algorithm::Nsga2 => &nsga,
            Algorithm::Evolution => &evolution,
            Algorithm::Random => {
                // Random search has no generations to resume: the score cache makes a rerun cheap.
                let budget = o.population * (o.generations + 1);
                let state = random_search(problem, goals, budget, o.population, o.seed, &reference)?;
                self.save(&state, world)?;
                return Ok(state);
            }
        };
        let generation = |state: &SearchState| {
            let stats = state.history.last().expect("one entry per generation");
            observer.borrow_mut().generation(stats, o.generations, &self.config);
        };
        let previous = self.previous(*observer.borrow_mut())?;
        let mut state = match previous {
            Some(s) => s,
            None => {
                let s = search.start(problem)?;
                self.save(&s, world)?;
                generation(&s);
                s
            }
        };
        while state.generation < o.generations {
            search.step(problem, &mut state)?;
            self.save(&state, world)?;
            generation(&state);
        }
        Ok(state)
    }

    /// Where the published models sit, when the searched supernet is FairNAS's: scored like
    /// any architecture (cached), shown on the plot, not part of the search's archive.
    fn published(&self, problem: &mut dyn Problem) -> Result<Vec<(String, Vec<f64>)>, SearchError> {
        if self.space.name != "fairnas" {
            return Ok(Vec::new());
        }
        let named = [
            ("FairNAS-A", "4041500552122115153"),
            ("FairNAS-B", "2020124012014053513"),
            ("FairNAS-C", "2040000001000055113"),
        ];
        let genomes: Vec<Vec<usize>> =
            named.iter().map(|(_, c)| self.space.parse_choices(c)).collect::<Result<_, _>>()?;
        let metrics = problem.evaluate(&genomes)?;
        Ok(named.iter().map(|(n, _)| n.to_string()).zip(metrics).collect())
    }

    fn write_outputs(
        &self,
        state: &SearchState,
        front: &[Individual],
        members: &[FrontMember],
        published: &[(String, Vec<f64>)],
    ) -> Result<(), SearchError> {
        let write = |name: &str, bytes: &[u8]| {
            let path = self.out.join(name);
            write_atomically(&path, bytes).map_err(|source| SearchError::Io { path, source })
        };
        write("front.json", serde_json::to_string_pretty(members).expect("front serialises").as_bytes())?;
        write("front.csv", front_csv(members).as_bytes())?;
        write("front.svg", self.front_plot(state, front, published).to_svg().as_bytes())
    }

    fn front_plot(
        &self,
        state: &SearchState,
        front: &[Individual],
        published: &[(String, Vec<f64>)],
    ) -> Scatter {
        let all: Vec<(f64, f64)> = state.archive.values().map(|m| (m[2] / 1e6, m[0])).collect();
        let markers: Vec<Marker> = published
            .iter()
            .map(|(name, m)| Marker { label: name.clone(), x: m[2] / 1e6, y: m[0] })
            .collect();
        let single = self.options.algorithm == Algorithm::Evolution;
        Scatter {
            title: format!(
                "{} search on the {} supernet: {} evaluated, front of {}{}",
                self.config.algorithm,
                self.space.name,
                state.archive.len(),
                front.len(),
                if single { " (single objective)" } else { "" }
            ),
            x_label: "multiply-adds (M)".into(),
            y_label: "one-shot top-1 (%)".into(),
            series: vec![
                Series {
                    name: "evaluated".into(),
                    color: "#999999".into(),
                    radius: 2.0,
                    line: false,
                    points: all,
                },
                Series {
                    name: "Pareto front".into(),
                    color: "#1f77b4".into(),
                    radius: 3.5,
                    line: true,
                    points: front.iter().map(|i| (i.metrics[2] / 1e6, i.metrics[0])).collect(),
                },
            ],
            markers,
        }
    }
}

/// Objective names with their directions; `latency` needs a table.
fn objectives(names: &[String], has_latency: bool) -> Result<Vec<(String, Direction)>, SearchError> {
    let objectives: Vec<(String, Direction)> = names
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| match o {
            "acc" => Ok((o.to_string(), Direction::Maximize)),
            "loss" | "madds" | "params" => Ok((o.to_string(), Direction::Minimize)),
            "latency" if has_latency => Ok((o.to_string(), Direction::Minimize)),
            "latency" => Err(SearchError::NeedsLatencyTable("objective 'latency'".into())),
            other => Err(SearchError::UnknownObjective(other.to_string())),
        })
        .collect::<Result<_, _>>()?;
    if objectives.is_empty() {
        return Err(SearchError::NoObjective);
    }
    Ok(objectives)
}

fn constraints(options: &SearchOptions, has_latency: bool) -> Result<Vec<(String, f64)>, SearchError> {
    let mut constraints = Vec::new();
    for (name, limit) in [("madds", options.max_madds), ("params", options.max_params)] {
        if let Some(limit) = limit {
            if !(limit > 0.0 && limit.is_finite()) {
                return Err(SearchError::Limit { metric: name.into(), limit });
            }
            constraints.push((name.to_string(), limit));
        }
    }
    if let Some(ms) = options.max_latency {
        if !has_latency {
            return Err(SearchError::NeedsLatencyTable("a latency limit".into()));
        }
        constraints.push(("latency".to_string(), ms));
    }
    Ok(constraints)
}

/// The hypervolume reference point: the worst value of each objective in the space (or its
/// constraint), slightly beyond.
fn reference_point(
    space: &SearchSpace,
    objectives: &[(String, Direction)],
    constraints: &[(String, f64)],
    latency: Option<&LatencyTable>,
) -> Result<Vec<f64>, SearchError> {
    let (most_madds, most_params) = max_cost(space)?;
    let limit =
        |name: &str, fallback: f64| constraints.iter().find(|(n, _)| n == name).map_or(fallback, |c| c.1);
    Ok(objectives
        .iter()
        .map(|(name, _)| match name.as_str() {
            "acc" => 0.0,
            "loss" => 10.0,
            "madds" => limit("madds", most_madds as f64) * 1.0001,
            "latency" => {
                let table = latency.expect("checked with the objectives");
                let slowest = table.stem_ms
                    + table.layers_ms.iter().map(|r| r.iter().fold(0.0f64, |m, &v| m.max(v))).sum::<f64>()
                    + table.head_ms;
                limit("latency", slowest) * 1.0001
            }
            _ => limit("params", most_params as f64) * 1.0001,
        })
        .collect())
}

fn front_members(space: &SearchSpace, front: &[Individual]) -> Result<Vec<FrontMember>, SearchError> {
    front
        .iter()
        .map(|i| {
            Ok(FrontMember {
                choices: format_choices(&i.genome),
                blocks: block_strings(space, &i.genome)?,
                acc: i.metrics[0],
                loss: i.metrics[1],
                madds: i.metrics[2] as u64,
                params: i.metrics[3] as u64,
                latency_ms: i.metrics.get(4).copied(),
            })
        })
        .collect()
}

fn front_csv(members: &[FrontMember]) -> String {
    let mut csv = String::from("choices,blocks,acc,loss,madds,params,latency_ms\n");
    for r in members {
        csv.push_str(&format!(
            "{},\"{}\",{:.4},{:.6},{},{},{}\n",
            r.choices,
            r.blocks,
            r.acc,
            r.loss,
            r.madds,
            r.params,
            r.latency_ms.map(|v| format!("{v:.4}")).unwrap_or_default()
        ));
    }
    csv
}

/// The found front judged by the benchmark: its architectures' stand-alone accuracy and cost,
/// re-sorted into a front, against the true front over every canonical architecture. The
/// reference point is the benchmark's worst accuracy and largest cost, so the ratio measures
/// the region that matters.
pub fn ground_truth_comparison(
    gt: &GroundTruth,
    space: &SearchSpace,
    objectives: &[(String, Direction)],
    front: &[Vec<usize>],
) -> Result<GroundTruthComparison, SearchError> {
    let names: Vec<String> = vec!["acc".into(), "madds".into(), "params".into()];
    let named: Vec<(&str, Direction)> = objectives.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let goals =
        Goals::named(&names, &named, &[]).map_err(|e| SearchError::GroundTruthObjectives(Box::new(e)))?;
    let stand_alone = |g: &[usize]| -> Result<Individual, SearchError> {
        let e = gt.require(space, g)?;
        // The benchmark's `flops` are conv + FC multiply-adds: our madds (checked for all keys).
        let metrics = vec![e.mean_acc, e.flops as f64, e.params as f64];
        Ok(Individual { fitness: goals.fitness(&metrics), genome: g.to_vec(), metrics })
    };
    let all: Vec<Individual> =
        space.canonical_architectures(1_000_000)?.iter().map(|g| stand_alone(g)).collect::<Result<_, _>>()?;
    let reference: Vec<f64> = goals
        .objectives
        .iter()
        .map(|&(m, d)| {
            let values = all.iter().map(|i| i.metrics[m]);
            match d {
                Direction::Maximize => values.fold(f64::INFINITY, f64::min),
                Direction::Minimize => values.fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect();
    let fitness: Vec<_> = all.iter().map(|i| i.fitness.clone()).collect();
    let true_front = non_dominated_sort(&fitness).into_iter().next().unwrap_or_default();
    let true_members: Vec<Individual> = true_front.iter().map(|&i| all[i].clone()).collect();
    let true_hv = front_hypervolume(&goals, &true_members, &reference);
    let found: Vec<Individual> = front.iter().map(|g| stand_alone(g)).collect::<Result<_, _>>()?;
    let found_hv = front_hypervolume(&goals, &found, &reference);
    let on_true_front = found.iter().filter(|f| true_members.iter().any(|t| t.genome == f.genome)).count();
    Ok(GroundTruthComparison {
        file: gt.path.clone(),
        reference,
        true_front_size: true_front.len(),
        true_hypervolume: true_hv,
        front_hypervolume: found_hv,
        hypervolume_ratio: if true_hv > 0.0 { found_hv / true_hv } else { 0.0 },
        front_members_on_true_front: on_true_front,
    })
}

/// `400M`, `5.5M`, `300k`, `1G`, or a plain number: a positive count.
pub fn parse_count(text: &str) -> Result<f64, SearchError> {
    let t = text.trim();
    let (number, scale) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        Some('g' | 'G') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = number.parse().map_err(|_| SearchError::Count(text.to_string()))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(SearchError::Count(text.to_string()));
    }
    Ok(v * scale)
}

/// Reads `front.json` back through the type that wrote it.
pub fn read_front(path: &Path) -> Result<Vec<FrontMember>, SearchError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| SearchError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| SearchError::Json { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_with_suffixes() {
        assert_eq!(parse_count("400M").unwrap(), 4e8);
        assert_eq!(parse_count("5.5m").unwrap(), 5.5e6);
        assert_eq!(parse_count("300k").unwrap(), 3e5);
        assert_eq!(parse_count("12").unwrap(), 12.0);
        assert!(parse_count("lots").unwrap_err().to_string().contains("'lots'"));
        assert!(parse_count("-3M").is_err());
    }
}
