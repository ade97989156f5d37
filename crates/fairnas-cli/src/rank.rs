//! `fairnas rank`: how faithfully a trained supernet ranks architectures, against a
//! benchmark's stand-alone ground truth (NAS-Bench-Macro).
//!
//! Every architecture is scored after BN recalibration on the same fixed training batches and
//! on the same held-out images (`fairnas_supernet::scoring`, which shares the work of common
//! prefixes). Scores go to `scores.jsonl` as they come, one line per architecture, so a killed
//! run resumes where it stopped; the settings they were made with (and the checkpoint's
//! SHA-256) sit in `rank-config.json`, and a resume with other settings is refused.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fairnas_model::persist::write_atomically;
use fairnas_model::search_space::SearchSpace;
use fairnas_search::ground_truth::{digits, GroundTruth};
use fairnas_search::plot::{Scatter, Series};
use fairnas_search::ranking::RankingReport;
use fairnas_search::store::{guard_settings, ScoreCache};
use fairnas_supernet::scoring::{OneShotScore, PrefixScorer, ScoringSettings};
use fairnas_supernet::trainer::{self, load_run};
use serde::{Deserialize, Serialize};

use crate::one_shot::OneShotArgs;

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
    archs: String,
    #[command(flatten)]
    scoring: OneShotArgs,
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

/// What the cached scores depend on; a resume must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RankConfig {
    #[serde(flatten)]
    scoring: ScoringSettings,
    ground_truth: PathBuf,
    archs: String,
    /// Seed of the stratified sample; none when every architecture is ranked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sample_seed: Option<u64>,
}

/// The architectures to score: all canonical forms, or one per stratum of `n` equal strata of
/// the ground-truth order (a seeded pick inside each), in lexicographic order.
fn select_architectures(
    space: &SearchSpace,
    gt: &GroundTruth,
    archs: &str,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    let sample = match archs {
        "all" => None,
        n => match n.parse::<usize>() {
            Ok(0) | Err(_) => bail!("--archs: expected 'all' or a positive number, got '{archs}'"),
            Ok(n) => Some(n),
        },
    };
    let mut all = space.canonical_architectures(1_000_000)?;
    for a in &all {
        gt.require(space, a)?;
    }
    let Some(n) = sample.filter(|&n| n < all.len()) else { return Ok(all) };
    let accuracy = |a: &Vec<usize>| gt.get(a).map_or(0.0, |e| e.mean_acc);
    all.sort_by(|a, b| accuracy(a).total_cmp(&accuracy(b)).then_with(|| a.cmp(b)));
    let mut picked: Vec<Vec<usize>> = (0..n)
        .map(|s| {
            let (start, end) = (s * all.len() / n, (s + 1) * all.len() / n);
            let offset = fairnas_ops::rng::epoch_order(end - start, seed, s as u64)[0];
            all[start + offset].clone()
        })
        .collect();
    picked.sort();
    Ok(picked)
}

pub fn run_rank(args: RankArgs) -> Result<()> {
    let started = Instant::now();
    let ckpt =
        if args.supernet.is_dir() { trainer::checkpoint_path(&args.supernet) } else { args.supernet.clone() };
    let (supernet, train_config, state) = load_run(&ckpt)?;
    let space = supernet.space().clone();
    let gt = GroundTruth::load(&args.ground_truth, &space)?;
    let archs = select_architectures(&space, &gt, &args.archs, args.seed)?;
    let out = args.out.clone().unwrap_or_else(|| ckpt.parent().unwrap_or(Path::new(".")).join("rank"));
    let scoring = args.scoring.options().settings(&ckpt, &train_config, &state, &space)?;
    let sample_seed = (args.archs != "all").then_some(args.seed);
    let config = RankConfig {
        scoring,
        ground_truth: args.ground_truth.clone(),
        archs: args.archs.clone(),
        sample_seed,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    guard_settings(&out.join("rank-config.json"), &config, &["checkpoint", "data"])?;
    let scores_path = out.join("scores.jsonl");
    let mut cache = ScoreCache::open(&scores_path)?;
    let todo: Vec<&Vec<usize>> = archs.iter().filter(|a| cache.get(a).is_none()).collect();

    if !todo.is_empty() {
        let batches = fairnas_supernet::images::scoring_batches(&config.scoring, &train_config, &space)?;
        let bar = indicatif::ProgressBar::new(archs.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "scoring {bar:30} {pos}/{len} archs  {per_sec}  eta {eta}  {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position((archs.len() - todo.len()) as u64);
        if args.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let cached = archs.len() - todo.len();
        if cached > 0 {
            eprintln!(
                "resuming: {cached} of {} architectures cached in {}",
                archs.len(),
                scores_path.display()
            );
        }
        let mut scorer = PrefixScorer::new(&supernet, &batches);
        for arch in todo {
            let score = scorer.score(arch)?;
            cache.insert(arch, score)?;
            bar.set_message(format!("{} {:.1}%", digits(arch), 100.0 * score.top1()));
            bar.inc(1);
        }
        bar.finish_and_clear();
    }

    // Report: one-shot top-1 (and -loss) vs stand-alone accuracy, and the FLOPs baseline.
    let rows: Vec<(&Vec<usize>, OneShotScore, f64, u64, u64)> = archs
        .iter()
        .map(|a| {
            let e = gt.get(a).expect("checked when selecting");
            (a, cache.get(a).expect("scored above"), e.mean_acc, e.flops, e.params)
        })
        .collect();
    let truth: Vec<f64> = rows.iter().map(|r| r.2).collect();
    let one_shot: Vec<f64> = rows.iter().map(|r| 100.0 * r.1.top1()).collect();
    let neg_loss: Vec<f64> = rows.iter().map(|r| -r.1.loss).collect();
    let flops: Vec<f64> = rows.iter().map(|r| r.3 as f64).collect();
    let by_accuracy = RankingReport::new(&one_shot, &truth);
    let by_loss = RankingReport::new(&neg_loss, &truth);
    let by_flops = RankingReport::new(&flops, &truth);

    let mut csv = String::from("choices,one_shot_top1,one_shot_loss,stand_alone_acc,flops,params\n");
    for (a, s, acc, f, p) in &rows {
        csv.push_str(&format!("{},{:.4},{:.6},{acc:.4},{f},{p}\n", digits(a), 100.0 * s.top1(), s.loss));
    }
    write_atomically(&out.join("scores.csv"), csv.as_bytes())?;
    let tau = |r: &RankingReport| r.kendall_tau.map_or("n/a".into(), |t| format!("{t:.4}"));
    let plot = Scatter {
        title: format!(
            "{} supernet ({}, step {}): Kendall tau {} over {} architectures",
            space.name,
            state.sampler,
            state.step,
            tau(&by_accuracy),
            rows.len()
        ),
        x_label: "stand-alone accuracy (%)".into(),
        y_label: format!("one-shot top-1 (%) on {} held-out images", config.scoring.eval_limit),
        series: vec![Series {
            name: format!("architectures (FLOPs baseline tau {})", tau(&by_flops)),
            color: "steelblue".into(),
            radius: 2.0,
            line: false,
            points: truth.iter().copied().zip(one_shot.iter().copied()).collect(),
        }],
        markers: Vec::new(),
    };
    write_atomically(&out.join("scatter.svg"), plot.to_svg().as_bytes())?;
    let report = serde_json::json!({
        "config": config,
        "architectures": rows.len(),
        "one_shot_top1": by_accuracy,
        "one_shot_loss": by_loss,
        "flops_baseline": by_flops,
        "held_out_images": config.scoring.eval_limit,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    write_atomically(&out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let line = |name: &str, r: &RankingReport| {
            let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
            let topk: Vec<String> = r
                .top_k_precision
                .iter()
                .map(|(f, k, p)| format!("top-{:.0}% ({k}) {:.2}", 100.0 * f, p))
                .collect();
            println!(
                "{name:<22} tau {}  rho {}  r {}  {}",
                f(r.kendall_tau),
                f(r.spearman_rho),
                f(r.pearson_r),
                topk.join("  ")
            );
        };
        println!(
            "{} architectures of {}, supernet {} ({} steps, {}), {} held-out images, BN recalibration {} x {}:",
            rows.len(),
            space.name,
            ckpt.display(),
            state.step,
            state.sampler,
            config.scoring.eval_limit,
            config.scoring.bn_recal_batches,
            config.scoring.bn_recal_batch_size
        );
        line("one-shot top-1", &by_accuracy);
        line("one-shot loss", &by_loss);
        line("FLOPs (baseline)", &by_flops);
        println!("results in {} ({:.0} s)", out.display(), started.elapsed().as_secs_f64());
    }
    Ok(())
}
