//! `fairnas search`: flags to [`SearchOptions`], then [`SearchRun`] (fairnas-search), with a
//! spinner and one line per generation.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fairnas_model::search_space::format_choices;
use fairnas_search::evolution::GenerationStats;
use fairnas_search::run::{
    parse_count, Algorithm, SearchConfig, SearchObserver, SearchOptions, SearchRun, SearchSummary,
};
use fairnas_supernet::scoring::{OneShotScore, ScoringOptions};
use fairnas_supernet::world::{leader_first, World};

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// A training checkpoint (checkpoint.safetensors) or its run folder.
    #[arg(long, value_name = "CKPT")]
    supernet: PathBuf,
    /// Objectives, comma-separated: acc (one-shot top-1, maximised), loss, madds, params
    /// (minimised).
    #[arg(long, default_value = "acc,madds", value_delimiter = ',')]
    objectives: Vec<String>,
    /// Constraint: at most this many multiply-adds (k/M/G suffixes, e.g. 400M).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    max_madds: Option<f64>,
    /// Constraint: at most this many parameters (k/M/G suffixes).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    max_params: Option<f64>,
    /// Latency lookup table (`fairnas latency-table`): enables the latency objective.
    #[arg(long, value_name = "FILE")]
    latency_table: Option<PathBuf>,
    /// Constraint: at most this many milliseconds by the latency table.
    #[arg(long, value_name = "MS")]
    max_latency: Option<f64>,
    /// nsga2 (multi-objective), random (baseline, same evaluation budget) or evolution
    /// (single-objective on the first objective under the constraints, SPOS-style).
    #[arg(long, default_value = "nsga2")]
    algorithm: Algorithm,
    #[arg(long, default_value_t = 64)]
    population: usize,
    #[arg(long, default_value_t = 30)]
    generations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    scoring: ScoringOptions,
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

/// The spinner with the architecture being scored (drawn on terminals only); generation lines
/// go above it.
pub(crate) struct Progress {
    spinner: indicatif::ProgressBar,
    quiet: bool,
}

impl Progress {
    pub(crate) fn new(quiet: bool) -> Self {
        let spinner =
            if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
        spinner.set_style(
            indicatif::ProgressStyle::with_template("{spinner} scored {pos} architectures  {per_sec}  {msg}")
                .expect("valid template"),
        );
        Progress { spinner, quiet }
    }
}

impl SearchObserver for Progress {
    fn message(&mut self, text: &str) {
        if !self.quiet {
            self.spinner.suspend(|| eprintln!("{text}"));
        }
    }

    fn scored(&mut self, choices: &[usize], score: &OneShotScore) {
        self.spinner.inc(1);
        self.spinner.set_message(format!(
            "{} one-shot top-1 {:.1}%",
            format_choices(choices),
            100.0 * score.top1()
        ));
    }

    fn generation(&mut self, s: &GenerationStats, total: usize, config: &SearchConfig) {
        self.message(&config.describe_generation(s, total));
    }
}

impl SearchArgs {
    fn options(&self) -> SearchOptions {
        SearchOptions {
            objectives: self.objectives.clone(),
            max_madds: self.max_madds,
            max_params: self.max_params,
            max_latency: self.max_latency,
            algorithm: self.algorithm,
            population: self.population,
            generations: self.generations,
            seed: self.seed,
            scoring: self.scoring.clone(),
            ground_truth: self.ground_truth.clone(),
        }
    }
}

pub fn run_search(args: SearchArgs, world: &dyn World) -> Result<()> {
    let run = leader_first(world, || {
        SearchRun::open(&args.supernet, args.options(), args.latency_table.as_deref(), &args.out, args.resume)
    })?;
    let batches = fairnas_supernet::images::scoring_batches(run.settings(), &run.train, &run.space)?;
    let mut progress = Progress::new(args.json || !world.is_leader());
    let summary = run.search_in(world, &batches, &mut progress)?;
    progress.spinner.finish_and_clear();
    match world.is_leader() {
        true => print_summary(&summary, args.json),
        false => Ok(()),
    }
}

fn print_summary(summary: &SearchSummary, json: bool) -> Result<()> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(summary)?),
        false => println!("{summary}"),
    }
    Ok(())
}
