//! `fairnas search`: multi-objective evolutionary search over a trained supernet.
//!
//! Files in `--out`: `search-config.json` (the settings; a resume must match them),
//! `scores.jsonl` (every one-shot score, as it comes), `search-state.json` (the whole search
//! state after the last finished generation, written atomically), and at the end `front.json`,
//! `front.csv` and `front.svg`. A killed search continues with `--resume` exactly as if never
//! stopped (the randomness of a generation depends only on the seed and its number).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fairnas_model::persist::write_atomically;
use fairnas_model::search_space::SearchSpace;
use fairnas_search::evolution::{
    random_search, ConstrainedEvolution, EvolutionConfig, GenerationStats, Generational, Individual, Nsga2,
    Nsga2Config, SearchState,
};
use fairnas_search::ground_truth::{digits, GroundTruth};
use fairnas_search::latency::LatencyTable;
use fairnas_search::objective::{Direction, Goals, Problem};
use fairnas_search::one_shot::{block_strings, max_cost, OneShotProblem, ScoreStore, ONE_SHOT_METRICS};
use fairnas_search::plot::{Marker, Scatter, Series};
use fairnas_supernet::scoring::{OneShotScore, PrefixScorer};
use fairnas_supernet::trainer::{self, load_run};
use serde::{Deserialize, Serialize};

use crate::one_shot::{guard_settings, OneShotArgs, ScoreCache, ScoringSettings};

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// A training checkpoint (checkpoint.safetensors) or its run folder.
    #[arg(long, value_name = "CKPT")]
    supernet: PathBuf,
    /// Objectives, comma-separated: acc (one-shot top-1, maximised), loss, madds, params
    /// (minimised).
    #[arg(long, default_value = "acc,madds")]
    objectives: String,
    /// Constraint: at most this many multiply-adds (k/M/G suffixes, e.g. 400M).
    #[arg(long, value_name = "N")]
    max_madds: Option<String>,
    /// Constraint: at most this many parameters (k/M/G suffixes).
    #[arg(long, value_name = "N")]
    max_params: Option<String>,
    /// Latency lookup table (`fairnas latency-table`): enables the latency objective.
    #[arg(long, value_name = "FILE")]
    latency_table: Option<PathBuf>,
    /// Constraint: at most this many milliseconds by the latency table.
    #[arg(long, value_name = "MS")]
    max_latency: Option<f64>,
    /// nsga2 (multi-objective), random (baseline, same evaluation budget) or evolution
    /// (single-objective on the first objective under the constraints, SPOS-style).
    #[arg(long, default_value = "nsga2")]
    algorithm: String,
    #[arg(long, default_value_t = 64)]
    population: usize,
    #[arg(long, default_value_t = 30)]
    generations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    scoring: OneShotArgs,
    /// A benchmark's stand-alone ground truth (NAS-Bench-Macro): also report how the found
    /// front's architectures do stand-alone, against the benchmark's true Pareto front.
    #[arg(long, value_name = "FILE")]
    ground_truth: Option<PathBuf>,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Continue the search in --out from its last finished generation.
    #[arg(long)]
    resume: bool,
    /// Print the final front as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Everything the search's results depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SearchConfig {
    scoring: ScoringSettings,
    objectives: Vec<(String, Direction)>,
    constraints: Vec<(String, f64)>,
    algorithm: String,
    population: usize,
    seed: u64,
    /// Hypervolume reference point, natural units per objective.
    reference: Vec<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedSearch {
    config: SearchConfig,
    state: SearchState,
}

/// `400M`, `5.5M`, `300k`, `1G`, or a plain number.
pub fn parse_count(text: &str) -> Result<f64> {
    let t = text.trim();
    let (number, scale) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        Some('g' | 'G') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 =
        number.parse().map_err(|_| anyhow::anyhow!("'{text}' is not a count like 400M, 5.5M or 300k"))?;
    if !(v > 0.0 && v.is_finite()) {
        bail!("'{text}': a limit must be positive");
    }
    Ok(v * scale)
}

impl ScoreStore for ScoreCache {
    fn get(&self, choices: &[usize]) -> Option<OneShotScore> {
        ScoreCache::get(self, choices)
    }
    fn put(&mut self, choices: &[usize], score: OneShotScore) -> Result<(), String> {
        self.insert(choices, score).map_err(|e| e.to_string())
    }
}

fn progress_line(s: &GenerationStats, total: usize, config: &SearchConfig) -> String {
    let best: Vec<String> = config
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

pub fn run_search(args: SearchArgs) -> Result<()> {
    let started = Instant::now();
    let ckpt =
        if args.supernet.is_dir() { trainer::checkpoint_path(&args.supernet) } else { args.supernet.clone() };
    let (supernet, train_config, train_state) = load_run(&ckpt)?;
    let space = supernet.space().clone();
    let latency_table: Option<LatencyTable> = match &args.latency_table {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            let table: LatencyTable = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a latency table", path.display()))?;
            if table.space != space.name || table.layers_ms.len() != space.layers.len() {
                bail!("{}: a latency table of the {} space, not {}", path.display(), table.space, space.name);
            }
            Some(table)
        }
        None => None,
    };
    let mut metrics: Vec<String> = ONE_SHOT_METRICS.iter().map(|m| m.to_string()).collect();
    if latency_table.is_some() {
        metrics.push("latency".into());
    }
    let objectives: Vec<(String, Direction)> = args
        .objectives
        .split(',')
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| match o {
            "acc" => Ok((o.to_string(), Direction::Maximize)),
            "loss" | "madds" | "params" => Ok((o.to_string(), Direction::Minimize)),
            "latency" if latency_table.is_some() => Ok((o.to_string(), Direction::Minimize)),
            "latency" => bail!("objective 'latency' needs --latency-table FILE (fairnas latency-table)"),
            other => bail!("unknown objective '{other}' (acc, loss, madds, params, latency)"),
        })
        .collect::<Result<_>>()?;
    if objectives.is_empty() {
        bail!("--objectives: name at least one of acc, loss, madds, params");
    }
    let mut constraints = Vec::new();
    if let Some(m) = &args.max_madds {
        constraints.push(("madds".to_string(), parse_count(m).context("--max-madds")?));
    }
    if let Some(p) = &args.max_params {
        constraints.push(("params".to_string(), parse_count(p).context("--max-params")?));
    }
    if let Some(ms) = args.max_latency {
        if latency_table.is_none() {
            bail!("--max-latency needs --latency-table FILE");
        }
        constraints.push(("latency".to_string(), ms));
    }
    if !["nsga2", "random", "evolution"].contains(&args.algorithm.as_str()) {
        bail!("--algorithm: '{}' is not nsga2, random or evolution", args.algorithm);
    }
    if args.population < 2 {
        bail!("--population: need at least 2");
    }
    let (most_madds, most_params) = max_cost(&space).map_err(anyhow::Error::msg)?;
    let limit =
        |name: &str, fallback: f64| constraints.iter().find(|(n, _)| n == name).map_or(fallback, |c| c.1);
    let reference: Vec<f64> = objectives
        .iter()
        .map(|(name, _)| match name.as_str() {
            "acc" => 0.0,
            "loss" => 10.0,
            "madds" => limit("madds", most_madds as f64) * 1.0001,
            "latency" => {
                let table = latency_table.as_ref().expect("checked with the objectives");
                let slowest = table.stem_ms
                    + table.layers_ms.iter().map(|r| r.iter().fold(0.0f64, |m, &v| m.max(v))).sum::<f64>()
                    + table.head_ms;
                limit("latency", slowest) * 1.0001
            }
            _ => limit("params", most_params as f64) * 1.0001,
        })
        .collect();
    let goals = Goals::named(
        &metrics,
        &objectives.iter().map(|(n, d)| (n.as_str(), *d)).collect::<Vec<_>>(),
        &constraints.iter().map(|(n, m)| (n.as_str(), *m)).collect::<Vec<_>>(),
    )
    .map_err(anyhow::Error::msg)?;
    let config = SearchConfig {
        scoring: args.scoring.settings(&ckpt, &train_config, &train_state, &space)?,
        objectives: objectives.clone(),
        constraints,
        algorithm: args.algorithm.clone(),
        population: args.population,
        seed: args.seed,
        reference: reference.clone(),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let state_path = args.out.join("search-state.json");
    if state_path.exists() && !args.resume {
        bail!(
            "{} holds a search already: pass --resume to continue it, or pick another --out",
            args.out.display()
        );
    }
    guard_settings(&args.out.join("search-config.json"), &config, &["checkpoint", "data"])?;
    let mut cache = ScoreCache::open(&args.out.join("scores.jsonl"))?;
    let batches = config.scoring.batches(&train_config, &space)?;
    let quiet = args.json;
    // A spinner with the architecture being scored (drawn on terminals only); generation lines
    // go above it.
    let spinner =
        if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} scored {pos} architectures  {per_sec}  {msg}")
            .expect("valid template"),
    );
    let scored_now = std::cell::Cell::new(0usize);
    let mut problem = OneShotProblem {
        space: space.clone(),
        scorer: PrefixScorer::new(&supernet, &batches),
        store: &mut cache,
        on_scored: Box::new(|g, s| {
            scored_now.set(scored_now.get() + 1);
            spinner.inc(1);
            spinner.set_message(format!("{} one-shot top-1 {:.1}%", digits(g), 100.0 * s.top1()));
        }),
        latency: latency_table.as_ref(),
    };
    let say = |text: String| {
        if !quiet {
            spinner.suspend(|| eprintln!("{text}"));
        }
    };
    let save = |state: &SearchState| -> Result<()> {
        let saved = SavedSearch { config: config.clone(), state: state.clone() };
        write_atomically(&state_path, serde_json::to_string(&saved)?.as_bytes())?;
        Ok(())
    };
    let previous: Option<SearchState> = if args.resume && state_path.exists() {
        let text =
            std::fs::read_to_string(&state_path).with_context(|| format!("{}", state_path.display()))?;
        let saved: SavedSearch = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a search state", state_path.display()))?;
        say(format!("resuming after generation {} from {}", saved.state.generation, state_path.display()));
        Some(saved.state)
    } else {
        None
    };
    let nsga = Nsga2 {
        config: Nsga2Config {
            population: args.population,
            generations: args.generations,
            crossover: 0.9,
            mutation: None,
            seed: args.seed,
            reference: reference.clone(),
        },
        goals: &goals,
    };
    let evolution = ConstrainedEvolution {
        config: EvolutionConfig {
            population: args.population,
            generations: args.generations,
            parents: (args.population / 2).max(1),
            mutation: 0.1,
            seed: args.seed,
            reference: reference.clone(),
        },
        goals: &goals,
    };
    let generational: Option<&dyn Generational> = match args.algorithm.as_str() {
        "nsga2" => Some(&nsga),
        "evolution" => Some(&evolution),
        _ => None,
    };
    let state = match generational {
        Some(search) => {
            let mut state = match previous {
                Some(s) => s,
                None => {
                    let s = search.start(&mut problem).map_err(anyhow::Error::msg)?;
                    save(&s)?;
                    say(progress_line(s.history.last().expect("one entry"), args.generations, &config));
                    s
                }
            };
            while state.generation < args.generations {
                search.step(&mut problem, &mut state).map_err(anyhow::Error::msg)?;
                save(&state)?;
                say(progress_line(
                    state.history.last().expect("one entry per generation"),
                    args.generations,
                    &config,
                ));
            }
            state
        }
        None => {
            // Random search has no generations to resume: the score cache makes a rerun cheap.
            let budget = args.population * (args.generations + 1);
            let state = random_search(&mut problem, &goals, budget, args.population, args.seed, &reference)
                .map_err(anyhow::Error::msg)?;
            save(&state)?;
            state
        }
    };
    // Where the published models sit, when the searched supernet is FairNAS's: scored like
    // any architecture (cached), shown on the plot, not part of the search's archive.
    let published: Vec<(String, Vec<f64>)> = if space.name == "fairnas" {
        let named = [
            ("FairNAS-A", "4041500552122115153"),
            ("FairNAS-B", "2020124012014053513"),
            ("FairNAS-C", "2040000001000055113"),
        ];
        let genomes: Vec<Vec<usize>> = named
            .iter()
            .map(|(_, c)| space.parse_choices(c))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let metrics = problem.evaluate(&genomes).map_err(anyhow::Error::msg)?;
        named.iter().map(|(n, _)| n.to_string()).zip(metrics).collect()
    } else {
        Vec::new()
    };
    drop(problem);
    spinner.finish_and_clear();

    // The front over everything evaluated.
    let mut front = state.archive_front(&goals);
    front.sort_by(|a, b| a.metrics[2].total_cmp(&b.metrics[2]).then_with(|| a.genome.cmp(&b.genome)));
    write_outputs(&args.out, &space, &config, &state, &front, &published, args.algorithm == "evolution")?;
    let hypervolume = fairnas_search::evolution::front_hypervolume(&goals, &front, &reference);
    let ground_truth = match &args.ground_truth {
        Some(path) => Some(ground_truth_comparison(path, &space, &objectives, &front)?),
        None => None,
    };
    let summary = serde_json::json!({
        "algorithm": args.algorithm,
        "generations": state.generation,
        "evaluations": state.archive.len(),
        "scored_in_this_run": scored_now.get(),
        "front_size": front.len(),
        "hypervolume": hypervolume,
        "reference": reference,
        "objectives": objectives,
        "front": front_json(&space, &front)?,
        "ground_truth": ground_truth,
        "out": args.out,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{}: {} architectures evaluated, front of {} (hypervolume {:.6e}), results in {} ({:.0} s)",
            args.algorithm,
            state.archive.len(),
            front.len(),
            hypervolume,
            args.out.display(),
            started.elapsed().as_secs_f64()
        );
        if let Some(g) = &ground_truth {
            println!(
                "stand-alone (ground truth): the found front's hypervolume is {:.4} of the true front's ({} architectures; reference: worst accuracy and largest cost in the benchmark)",
                g["hypervolume_ratio"].as_f64().unwrap_or_default(),
                g["true_front_size"]
            );
        }
        for i in &front {
            println!(
                "  {}  acc {:.2}%  madds {:.1}M  params {:.2}M",
                digits(&i.genome),
                i.metrics[0],
                i.metrics[2] / 1e6,
                i.metrics[3] / 1e6
            );
        }
    }
    Ok(())
}

/// The found front judged by the benchmark: its architectures' stand-alone accuracy and cost,
/// re-sorted into a front, against the true front over every canonical architecture. The
/// reference point is the benchmark's worst accuracy and largest cost, so the ratio measures
/// the region that matters.
fn ground_truth_comparison(
    path: &Path,
    space: &SearchSpace,
    objectives: &[(String, Direction)],
    front: &[Individual],
) -> Result<serde_json::Value> {
    let gt = GroundTruth::load(path, space)?;
    let names: Vec<String> = vec!["acc".into(), "madds".into(), "params".into()];
    let named: Vec<(&str, Direction)> = objectives.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let goals = Goals::named(&names, &named, &[])
        .map_err(|e| anyhow::anyhow!("--ground-truth compares acc, madds and params only: {e}"))?;
    let stand_alone = |g: &[usize]| -> Result<Individual> {
        let e = gt.require(space, g)?;
        // The benchmark's `flops` are conv + FC multiply-adds: our madds (checked for all keys).
        let metrics = vec![e.mean_acc, e.flops as f64, e.params as f64];
        Ok(Individual { fitness: goals.fitness(&metrics), genome: g.to_vec(), metrics })
    };
    let all: Vec<Individual> = space
        .canonical_architectures(1_000_000)
        .map_err(anyhow::Error::msg)?
        .iter()
        .map(|g| stand_alone(g))
        .collect::<Result<_>>()?;
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
    let true_front = fairnas_search::pareto::non_dominated_sort(
        &all.iter().map(|i| i.fitness.clone()).collect::<Vec<_>>(),
    )
    .into_iter()
    .next()
    .unwrap_or_default();
    let true_hv = fairnas_search::evolution::front_hypervolume(
        &goals,
        &true_front.iter().map(|&i| all[i].clone()).collect::<Vec<_>>(),
        &reference,
    );
    let found: Vec<Individual> = front.iter().map(|i| stand_alone(&i.genome)).collect::<Result<_>>()?;
    let found_hv = fairnas_search::evolution::front_hypervolume(&goals, &found, &reference);
    let on_true_front =
        found.iter().filter(|f| true_front.iter().any(|&t| all[t].genome == f.genome)).count();
    Ok(serde_json::json!({
        "file": path,
        "reference": reference,
        "true_front_size": true_front.len(),
        "true_hypervolume": true_hv,
        "front_hypervolume": found_hv,
        "hypervolume_ratio": if true_hv > 0.0 { found_hv / true_hv } else { 0.0 },
        "front_members_on_true_front": on_true_front,
    }))
}

fn front_json(space: &SearchSpace, front: &[Individual]) -> Result<Vec<serde_json::Value>> {
    front
        .iter()
        .map(|i| {
            Ok(serde_json::json!({
                "choices": digits(&i.genome),
                "blocks": block_strings(space, &i.genome).map_err(anyhow::Error::msg)?,
                "acc": i.metrics[0],
                "loss": i.metrics[1],
                "madds": i.metrics[2] as u64,
                "params": i.metrics[3] as u64,
                "latency_ms": i.metrics.get(4),
            }))
        })
        .collect()
}

fn write_outputs(
    out: &Path,
    space: &SearchSpace,
    config: &SearchConfig,
    state: &SearchState,
    front: &[Individual],
    published: &[(String, Vec<f64>)],
    single_objective: bool,
) -> Result<()> {
    let rows = front_json(space, front)?;
    write_atomically(&out.join("front.json"), serde_json::to_string_pretty(&rows)?.as_bytes())?;
    let mut csv = String::from("choices,blocks,acc,loss,madds,params,latency_ms\n");
    for r in &rows {
        csv.push_str(&format!(
            "{},\"{}\",{:.4},{:.6},{},{},{}\n",
            r["choices"].as_str().unwrap_or_default(),
            r["blocks"].as_str().unwrap_or_default(),
            r["acc"].as_f64().unwrap_or_default(),
            r["loss"].as_f64().unwrap_or_default(),
            r["madds"],
            r["params"],
            r["latency_ms"].as_f64().map(|v| format!("{v:.4}")).unwrap_or_default()
        ));
    }
    write_atomically(&out.join("front.csv"), csv.as_bytes())?;
    let all: Vec<(f64, f64)> = state.archive.values().map(|m| (m[2] / 1e6, m[0])).collect();
    let markers: Vec<Marker> =
        published.iter().map(|(name, m)| Marker { label: name.clone(), x: m[2] / 1e6, y: m[0] }).collect();
    let plot = Scatter {
        title: format!(
            "{} search on the {} supernet: {} evaluated, front of {}{}",
            config.algorithm,
            space.name,
            state.archive.len(),
            front.len(),
            if single_objective { " (single objective)" } else { "" }
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
    };
    write_atomically(&out.join("front.svg"), plot.to_svg().as_bytes())?;
    Ok(())
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
