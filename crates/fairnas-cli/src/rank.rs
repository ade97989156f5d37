//! `fairnas rank`: flags to a [`RankRun`] (fairnas-search), a progress bar while it scores,
//! and the report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use fairnas_model::search_space::format_choices;
use fairnas_search::rank::{ArchSample, RankRun};

use fairnas_supernet::scoring::ScoringOptions;
use fairnas_supernet::world::{leader_first, World};

#[derive(Args, Debug)]
pub struct RankArgs {
    /// A training checkpoint (checkpoint.safetensors) or its run folder.
    #[arg(long, value_name = "CKPT")]
    supernet: PathBuf,
    /// The benchmark's ground truth, e.g. nas-bench-macro_cifar10.json.
    #[arg(long, value_name = "FILE")]
    ground_truth: PathBuf,
    /// `all` canonical architectures, or a stratified sample of N (one per stand-alone
    /// accuracy stratum, seeded).
    #[arg(long, default_value = "all")]
    archs: ArchSample,
    #[command(flatten)]
    scoring: ScoringOptions,
    /// Seed of the stratified sample (--archs N).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (default: <run folder>/rank): scores.jsonl, scores.csv, report.json,
    /// scatter.svg, rank-config.json.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run_rank(args: RankArgs, world: &dyn World) -> Result<()> {
    let started = Instant::now();
    let options = args.scoring.clone();
    let (supernet, truth, out) = (&args.supernet, &args.ground_truth, args.out.as_deref());
    let open = || RankRun::open(supernet, truth, args.archs.size(), args.seed, &options, out);
    let mut run = leader_first(world, open)?;
    let todo = run.todo().len();
    if todo > 0 {
        let batches = fairnas_supernet::images::scoring_batches(&run.config.scoring, &run.train, &run.space)?;
        let total = run.archs.len();
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "scoring {bar:30} {pos}/{len} archs  {per_sec}  eta {eta}  {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position((total - todo) as u64);
        if args.json || !world.is_leader() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        if total > todo && world.is_leader() {
            let cached = run.out.join("scores.jsonl");
            eprintln!("resuming: {} of {total} architectures cached in {}", total - todo, cached.display());
        }
        run.score_in(world, &batches, &mut |arch, score| {
            bar.set_message(format!("{} {:.1}%", format_choices(arch), 100.0 * score.top1()));
            bar.inc(1);
        })?;
        bar.finish_and_clear();
    }
    if !world.is_leader() {
        return Ok(());
    }
    let report = run.report(started.elapsed().as_secs_f64())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", run.describe(&report));
    }
    Ok(())
}
