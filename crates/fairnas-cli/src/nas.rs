//! `fairnas nas`: the whole FairNAS pipeline in one command, each stage one of the
//! subcommands run in-process with flags built from one config:
//!
//! 1. `train-supernet` (strict fairness) -> `supernet/`
//! 2. `latency-table` (measured now, on this machine) -> `latency.json`
//! 3. `search` (NSGA-II on one-shot accuracy, multiply-adds and latency) -> `search/`
//! 4. `export` of the front's best, middle and cheapest architectures -> `models/<choices>/`
//! 5. `train --init-weights`: a short stand-alone fine-tune of the most accurate one ->
//!    `finetune/<choices>/`
//! 6. `report.html`: one self-contained page (inline SVG, no network).
//!
//! Every stage resumes: rerunning the command continues an interrupted stage and skips the
//! finished ones, and a different config in the same folder is refused.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use fairnas_model::persist::write_atomically;
use fairnas_search::latency::{measure_end_to_end, LatencyTable};
use fairnas_supernet::trainer;
use serde::{Deserialize, Serialize};

use fairnas_search::store::guard_settings;

#[derive(Args, Debug)]
pub struct NasArgs {
    /// Pipeline settings (JSON, any subset of the fields of `nas-config.json`); flags override.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data folder (default: the embedded CIFAR-10 subset, data/cifar10-mini).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Output folder (default: runs/nas).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Supernet training epochs.
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
}

/// Every setting of the pipeline. The defaults run on the embedded data in a few minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NasConfig {
    pub data: PathBuf,
    pub out: PathBuf,
    pub space: String,
    pub seed: u64,
    pub supernet: SupernetStage,
    pub scoring: ScoringStage,
    pub latency: LatencyStage,
    pub search: SearchStage,
    pub export: ExportStage,
    pub finetune: FinetuneStage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupernetStage {
    pub sampler: String,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub train_limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringStage {
    pub bn_recal_batches: usize,
    pub bn_recal_batch_size: usize,
    pub eval_limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyStage {
    pub batch: usize,
    pub repeats: usize,
    pub check: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchStage {
    pub objectives: String,
    pub population: usize,
    pub generations: usize,
    pub max_madds: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportStage {
    /// Architectures exported from the front: the most accurate, the cheapest and evenly
    /// spaced ones between (by multiply-adds).
    pub count: usize,
    pub bn_recal_batches: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneStage {
    /// 0 skips the stand-alone fine-tune.
    pub epochs: u64,
    pub lr: f64,
    pub batch_size: usize,
}

impl Default for NasConfig {
    fn default() -> Self {
        NasConfig {
            data: PathBuf::from("data/cifar10-mini"),
            out: PathBuf::from("runs/nas"),
            space: "nas-bench-macro".into(),
            seed: 0,
            supernet: SupernetStage::default(),
            scoring: ScoringStage::default(),
            latency: LatencyStage::default(),
            search: SearchStage::default(),
            export: ExportStage::default(),
            finetune: FinetuneStage::default(),
        }
    }
}

impl Default for SupernetStage {
    fn default() -> Self {
        // lr 0.02 spiked the loss to 10 in epoch 2 on the 240 embedded images at batch 16.
        SupernetStage { sampler: "strict".into(), epochs: 8, batch_size: 16, lr: 0.01, train_limit: None }
    }
}

impl Default for ScoringStage {
    fn default() -> Self {
        ScoringStage { bn_recal_batches: 2, bn_recal_batch_size: 16, eval_limit: 80 }
    }
}

impl Default for LatencyStage {
    fn default() -> Self {
        LatencyStage { batch: 1, repeats: 10, check: 20 }
    }
}

impl Default for SearchStage {
    fn default() -> Self {
        SearchStage {
            objectives: "acc,madds,latency".into(),
            population: 32,
            generations: 8,
            max_madds: None,
        }
    }
}

impl Default for ExportStage {
    fn default() -> Self {
        ExportStage { count: 3, bn_recal_batches: 4 }
    }
}

impl Default for FinetuneStage {
    fn default() -> Self {
        FinetuneStage { epochs: 3, lr: 0.01, batch_size: 16 }
    }
}

/// Parses one subcommand's flags, exactly as the command line would.
fn parse<T: Args>(argv: &[String]) -> Result<T> {
    #[derive(Parser)]
    struct Stage<T: Args> {
        #[command(flatten)]
        inner: T,
    }
    let argv = std::iter::once("fairnas".to_string()).chain(argv.iter().cloned());
    Ok(Stage::<T>::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?.inner)
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn stage_banner(n: usize, title: &str) {
    eprintln!("\n== stage {n}/6: {title}");
}

/// One exported model as the report shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedModel {
    pub choices: String,
    pub blocks: String,
    pub params: u64,
    pub madds: u64,
    pub one_shot_acc: f64,
    pub predicted_latency_ms: f64,
    pub measured_latency_ms: f64,
    pub finetuned_top1: Option<f64>,
    pub folder: PathBuf,
}

pub fn run_nas(args: NasArgs) -> Result<()> {
    let started = Instant::now();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not a nas config", path.display()))?
        }
        None => NasConfig::default(),
    };
    if let Some(d) = args.data {
        config.data = d;
    }
    if let Some(o) = args.out {
        config.out = o;
    }
    if let Some(e) = args.epochs {
        config.supernet.epochs = e;
    }
    if let Some(s) = args.seed {
        config.seed = s;
    }
    if !config.data.is_dir() {
        bail!(
            "data folder {} not found (run from the repository root, or pass --data DIR)",
            config.data.display()
        );
    }
    let out = config.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    guard_settings(&out.join("nas-config.json"), &config, &[])?;
    let data = config.data.display().to_string();
    let seed = config.seed.to_string();
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &str, timings: &mut Vec<(String, f64)>| {
        timings.push((name.to_string(), clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };

    stage_banner(1, "strictly fair supernet training");
    let supernet_dir = out.join("supernet");
    let s = &config.supernet;
    let mut argv = strings(&[
        "--space",
        &config.space,
        "--sampler",
        &s.sampler,
        "--data",
        &data,
        "--epochs",
        &s.epochs.to_string(),
        "--batch-size",
        &s.batch_size.to_string(),
        "--lr",
        &s.lr.to_string(),
        "--seed",
        &seed,
        "--checkpoint-every",
        "20",
        "--out",
        &supernet_dir.display().to_string(),
    ]);
    if let Some(n) = s.train_limit {
        argv.extend(strings(&["--train-limit", &n.to_string()]));
    }
    if trainer::checkpoint_path(&supernet_dir).exists() {
        argv.push("--resume".into());
    }
    crate::train::run_train_supernet(parse(&argv)?)?;
    lap("supernet training", &mut timings);

    stage_banner(2, "latency lookup table (measured on this machine)");
    let latency_path = out.join("latency.json");
    if !latency_path.exists() {
        let l = &config.latency;
        crate::latency::run_latency_table(parse(&strings(&[
            "--space",
            &config.space,
            "--batch",
            &l.batch.to_string(),
            "--repeats",
            &l.repeats.to_string(),
            "--check",
            &l.check.to_string(),
            "--seed",
            &seed,
            "--out",
            &latency_path.display().to_string(),
        ]))?)?;
    } else {
        eprintln!("{} exists: kept", latency_path.display());
    }
    lap("latency table", &mut timings);

    stage_banner(3, "NSGA-II search");
    let search_dir = out.join("search");
    let sc = &config.scoring;
    let se = &config.search;
    let mut argv = strings(&[
        "--supernet",
        &supernet_dir.display().to_string(),
        "--objectives",
        &se.objectives,
        "--latency-table",
        &latency_path.display().to_string(),
        "--population",
        &se.population.to_string(),
        "--generations",
        &se.generations.to_string(),
        "--seed",
        &seed,
        "--bn-recal-batches",
        &sc.bn_recal_batches.to_string(),
        "--bn-recal-batch-size",
        &sc.bn_recal_batch_size.to_string(),
        "--eval-limit",
        &sc.eval_limit.to_string(),
        "--out",
        &search_dir.display().to_string(),
    ]);
    if let Some(m) = &se.max_madds {
        argv.extend(strings(&["--max-madds", m]));
    }
    if search_dir.join("search-state.json").exists() {
        argv.push("--resume".into());
    }
    crate::search::run_search(parse(&argv)?)?;
    lap("search", &mut timings);

    stage_banner(4, "export of the front's models");
    let front: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(search_dir.join("front.json")).context("the search wrote no front.json")?,
    )?;
    let picked = pick_models(&front, config.export.count);
    let table: LatencyTable = serde_json::from_str(&std::fs::read_to_string(&latency_path)?)?;
    let (timing_net, ..) = trainer::load_run(&trainer::checkpoint_path(&supernet_dir))?;
    let mut models = Vec::new();
    for f in &picked {
        let choices = f["choices"].as_str().unwrap_or_default().to_string();
        let folder = out.join("models").join(&choices);
        if !folder.join("model.json").exists() {
            crate::export::run_export(parse(&strings(&[
                "--supernet",
                &supernet_dir.display().to_string(),
                "--choices",
                &choices,
                "--bn-recal-batches",
                &config.export.bn_recal_batches.to_string(),
                "--out",
                &folder.display().to_string(),
            ]))?)?;
        }
        let path: Vec<usize> = choices.bytes().map(|b| (b - b'0') as usize).collect();
        models.push(ExportedModel {
            blocks: f["blocks"].as_str().unwrap_or_default().to_string(),
            params: f["params"].as_u64().unwrap_or_default(),
            madds: f["madds"].as_u64().unwrap_or_default(),
            one_shot_acc: f["acc"].as_f64().unwrap_or_default(),
            predicted_latency_ms: table.predict(&path),
            measured_latency_ms: measure_end_to_end(
                &timing_net,
                &path,
                table.batch,
                config.latency.repeats.max(5),
            )?,
            finetuned_top1: None,
            choices,
            folder,
        });
    }
    drop(timing_net);
    lap("export", &mut timings);

    stage_banner(5, "stand-alone fine-tune of the most accurate model");
    let ft = &config.finetune;
    if let (true, Some(best)) = (ft.epochs > 0, models.first_mut()) {
        let dir = out.join("finetune").join(&best.choices);
        let mut argv = strings(&[
            "--space",
            &config.space,
            "--arch",
            &best.choices,
            "--init-weights",
            &best.folder.join("weights.safetensors").display().to_string(),
            "--data",
            &data,
            "--epochs",
            &ft.epochs.to_string(),
            "--lr",
            &ft.lr.to_string(),
            "--batch-size",
            &ft.batch_size.to_string(),
            "--seed",
            &seed,
            "--out",
            &dir.display().to_string(),
        ]);
        if trainer::checkpoint_path(&dir).exists() {
            argv.push("--resume".into());
        }
        crate::train::run_train(parse(&argv)?)?;
        best.finetuned_top1 = crate::report::read_jsonl(&dir.join("metrics.jsonl"))?
            .last()
            .and_then(|m| m["eval_top1"].as_f64());
    }
    lap("fine-tune", &mut timings);
    write_atomically(&out.join("models.json"), serde_json::to_string_pretty(&models)?.as_bytes())?;

    stage_banner(6, "report");
    let report = crate::report::write(&out, &config, &models, &timings)?;
    println!(
        "\nFairNAS pipeline done in {:.0} s: {} models exported, report {}",
        started.elapsed().as_secs_f64(),
        models.len(),
        report.display()
    );
    Ok(())
}

/// The most accurate front member first, then the cheapest and evenly spaced ones by
/// multiply-adds; at most `count`, no repeats.
fn pick_models(front: &[serde_json::Value], count: usize) -> Vec<serde_json::Value> {
    if front.is_empty() || count == 0 {
        return Vec::new();
    }
    let mut by_madds: Vec<&serde_json::Value> = front.iter().collect();
    by_madds.sort_by_key(|f| f["madds"].as_u64().unwrap_or_default());
    let best = front
        .iter()
        .max_by(|a, b| {
            a["acc"].as_f64().unwrap_or_default().total_cmp(&b["acc"].as_f64().unwrap_or_default())
        })
        .expect("non-empty");
    let mut picked = vec![best.clone()];
    let n = by_madds.len();
    // Evenly spaced from the cheapest up (the most accurate is usually the costliest), then
    // any others in cost order if duplicates left room.
    let spaced = (0..count.saturating_sub(1)).map(|k| k * (n - 1) / count.saturating_sub(1).max(1));
    for i in spaced.chain(0..n) {
        if picked.len() >= count {
            break;
        }
        if !picked.iter().any(|p| p["choices"] == by_madds[i]["choices"]) {
            picked.push(by_madds[i].clone());
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `configs/nas/default.json` spells out the built-in defaults (the README points to it).
    #[test]
    fn the_shipped_default_config_is_the_built_in_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/nas/default.json");
        let shipped: NasConfig = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(shipped, NasConfig::default());
    }

    #[test]
    fn picks_the_most_accurate_then_spreads_over_cost() {
        let f = |c: &str, acc: f64, madds: u64| serde_json::json!({"choices": c, "acc": acc, "madds": madds});
        let front = vec![f("a", 10.0, 1), f("b", 20.0, 2), f("c", 30.0, 3), f("d", 40.0, 4)];
        let picked: Vec<String> =
            pick_models(&front, 3).iter().map(|p| p["choices"].as_str().unwrap().into()).collect();
        assert_eq!(picked, vec!["d", "a", "b"]); // the best, then the cheapest, then the middle
        assert!(pick_models(&[], 3).is_empty());
    }
}
