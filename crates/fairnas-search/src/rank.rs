//! How faithfully a trained supernet ranks architectures, against a benchmark's stand-alone
//! ground truth (NAS-Bench-Macro), as library calls: what `fairnas rank` runs.
//!
//! Every architecture is scored after BN recalibration on the same fixed training batches and
//! on the same held-out images (`fairnas_supernet::scoring`, which shares the work of common
//! prefixes). Scores go to `scores.jsonl` as they come, one line per architecture, so a killed
//! run resumes where it stopped; the settings they were made with (and the checkpoint's
//! SHA-256) sit in `rank-config.json`, and a resume with other settings is refused.
//!
//! [`RankRun::open`], then (when [`RankRun::todo`] is not empty) the batches its settings name,
//! [`RankRun::score`], and [`RankRun::report`].

use std::path::{Path, PathBuf};

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

use crate::ground_truth::GroundTruth;
use crate::one_shot::score_across;
use crate::plot::{Scatter, Series};
use crate::ranking::RankingReport;
use crate::store::{guard_settings, ScoreCache};
use crate::SearchError;

/// What the cached scores depend on (`rank-config.json`); a resume must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankConfig {
    #[serde(flatten)]
    pub scoring: ScoringSettings,
    pub ground_truth: PathBuf,
    pub archs: String,
    /// Seed of the stratified sample; none when every architecture is ranked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_seed: Option<u64>,
}

/// `report.json`: the ranking quality by each score.
#[derive(Debug, Clone, Serialize)]
pub struct RankReport {
    pub architectures: usize,
    pub config: RankConfig,
    pub flops_baseline: RankingReport,
    pub held_out_images: usize,
    pub one_shot_loss: RankingReport,
    pub one_shot_top1: RankingReport,
    pub wall_s: f64,
}

/// Which architectures a ranking scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchSample {
    /// Every canonical architecture of the space.
    All,
    /// One per stratum of this many equal strata of the ground-truth order
    /// ([`select_architectures`]).
    Stratified(usize),
}

impl ArchSample {
    /// The sample size, `None` for all.
    pub fn size(self) -> Option<usize> {
        match self {
            ArchSample::All => None,
            ArchSample::Stratified(n) => Some(n),
        }
    }
}

impl std::str::FromStr for ArchSample {
    type Err = SearchError;
    /// `all` or a positive count.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(ArchSample::All),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => Err(SearchError::Sample(s.to_string())),
                Ok(n) => Ok(ArchSample::Stratified(n)),
            },
        }
    }
}

/// The architectures to score: all canonical forms, or one per stratum of `n` equal strata of
/// the ground-truth order (a seeded pick inside each), in lexicographic order.
pub fn select_architectures(
    space: &SearchSpace,
    gt: &GroundTruth,
    sample: Option<usize>,
    seed: u64,
) -> Result<Vec<Vec<usize>>, SearchError> {
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

/// A ranking ready to score: the supernet loaded, the architectures picked, the settings
/// guarded, the cached scores read.
pub struct RankRun {
    pub supernet: Supernet,
    pub train: TrainConfig,
    pub state: TrainState,
    pub space: SearchSpace,
    pub checkpoint: PathBuf,
    pub ground_truth: GroundTruth,
    pub archs: Vec<Vec<usize>>,
    pub config: RankConfig,
    pub out: PathBuf,
    cache: ScoreCache,
}

impl RankRun {
    /// Loads the run at `supernet` and the ground truth; ranks every canonical architecture, or
    /// a stratified `sample` of that many (seeded by `seed`); results in `out` (default: the
    /// run folder's `rank/`).
    pub fn open(
        supernet: &Path,
        ground_truth: &Path,
        sample: Option<usize>,
        seed: u64,
        scoring: &ScoringOptions,
        out: Option<&Path>,
    ) -> Result<Self, SearchError> {
        let checkpoint = trainer::resolve_checkpoint(supernet);
        let (supernet, train, state) = load_run(&checkpoint)?;
        let space = supernet.space().clone();
        let gt = GroundTruth::load(ground_truth, &space)?;
        let archs = select_architectures(&space, &gt, sample, seed)?;
        let out =
            out.map_or_else(|| checkpoint.parent().unwrap_or(Path::new(".")).join("rank"), Path::to_path_buf);
        let config = RankConfig {
            scoring: scoring.settings(&checkpoint, &train, &state, &space)?,
            ground_truth: ground_truth.to_path_buf(),
            archs: sample.map_or("all".into(), |n| n.to_string()),
            sample_seed: sample.map(|_| seed),
        };
        std::fs::create_dir_all(&out).map_err(|source| SearchError::Io { path: out.clone(), source })?;
        guard_settings(&out.join("rank-config.json"), &config, &["checkpoint", "data"])?;
        let cache = ScoreCache::open(&out.join("scores.jsonl"))?;
        Ok(RankRun { supernet, train, state, space, checkpoint, ground_truth: gt, archs, config, out, cache })
    }

    /// The architectures without a cached score.
    pub fn todo(&self) -> Vec<Vec<usize>> {
        self.archs.iter().filter(|a| self.cache.get(a).is_none()).cloned().collect()
    }

    /// Scores the architectures left on `batches`; `on_scored` sees each as it is cached.
    pub fn score(
        &mut self,
        batches: &ScoringBatches,
        on_scored: &mut dyn FnMut(&[usize], &OneShotScore),
    ) -> Result<(), SearchError> {
        self.score_in(&Solo, batches, on_scored)
    }

    /// [`RankRun::score`] as one process of the job `world`: every rank calls it, each
    /// architecture is scored by one rank, every rank ends with every score, and only the
    /// leader appends them to `scores.jsonl` (each round's as it ends, so a killed job resumes).
    pub fn score_in(
        &mut self,
        world: &dyn World,
        batches: &ScoringBatches,
        on_scored: &mut dyn FnMut(&[usize], &OneShotScore),
    ) -> Result<(), SearchError> {
        let mut scorer = PrefixScorer::new(&self.supernet, batches);
        self.cache.persist(world.is_leader());
        let (todo, cache) = (self.todo(), &mut self.cache);
        score_across(world, &mut scorer, &todo, &mut |arch, score| {
            cache.insert(arch, score)?;
            on_scored(arch, &score);
            Ok(())
        })
    }

    /// Ranking statistics of every score against the ground truth; writes `scores.csv`,
    /// `scatter.svg` and `report.json`. Every architecture must be scored.
    /// The report as text: which run and settings, then tau, rho, r and top-k precision by
    /// each score.
    pub fn describe(&self, report: &RankReport) -> String {
        let s = &self.config.scoring;
        let mut text = format!(
            "{} architectures of {}, supernet {} ({} steps, {}), {} held-out images, BN recalibration {} x {}:\n",
            report.architectures,
            self.space.name,
            self.checkpoint.display(),
            self.state.step,
            self.state.sampler,
            s.eval_limit,
            s.bn_recal_batches,
            s.bn_recal_batch_size
        );
        let scores = [
            ("one-shot top-1", &report.one_shot_top1),
            ("one-shot loss", &report.one_shot_loss),
            ("FLOPs (baseline)", &report.flops_baseline),
        ];
        for (name, r) in scores {
            text.push_str(&format!("{name:<22} {r}\n"));
        }
        text.push_str(&format!("results in {} ({:.0} s)", self.out.display(), report.wall_s));
        text
    }

    pub fn report(&self, wall_s: f64) -> Result<RankReport, SearchError> {
        let mut rows = Vec::new();
        for a in &self.archs {
            let e = self.ground_truth.require(&self.space, a)?;
            let score = self
                .cache
                .get(a)
                .ok_or_else(|| SearchError::Pipeline(format!("{} is not scored yet", format_choices(a))))?;
            rows.push((a, score, e.mean_acc, e.flops, e.params));
        }
        let truth: Vec<f64> = rows.iter().map(|r| r.2).collect();
        let one_shot: Vec<f64> = rows.iter().map(|r| 100.0 * r.1.top1()).collect();
        let neg_loss: Vec<f64> = rows.iter().map(|r| -r.1.loss).collect();
        let flops: Vec<f64> = rows.iter().map(|r| r.3 as f64).collect();
        let report = RankReport {
            architectures: rows.len(),
            config: self.config.clone(),
            flops_baseline: RankingReport::new(&flops, &truth),
            held_out_images: self.config.scoring.eval_limit,
            one_shot_loss: RankingReport::new(&neg_loss, &truth),
            one_shot_top1: RankingReport::new(&one_shot, &truth),
            wall_s,
        };
        let mut csv = String::from("choices,one_shot_top1,one_shot_loss,stand_alone_acc,flops,params\n");
        for (a, s, acc, f, p) in &rows {
            csv.push_str(&format!(
                "{},{:.4},{:.6},{acc:.4},{f},{p}\n",
                format_choices(a),
                100.0 * s.top1(),
                s.loss
            ));
        }
        self.write("scores.csv", csv.as_bytes())?;
        let points = truth.iter().copied().zip(one_shot.iter().copied()).collect();
        self.write("scatter.svg", self.scatter(&report, points).to_svg().as_bytes())?;
        self.write(
            "report.json",
            serde_json::to_string_pretty(&report).expect("report serialises").as_bytes(),
        )?;
        Ok(report)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), SearchError> {
        let path = self.out.join(name);
        write_atomically(&path, bytes).map_err(|source| SearchError::Io { path, source })
    }

    fn scatter(&self, report: &RankReport, points: Vec<(f64, f64)>) -> Scatter {
        let tau = |r: &RankingReport| r.kendall_tau.map_or("n/a".into(), |t| format!("{t:.4}"));
        Scatter {
            title: format!(
                "{} supernet ({}, step {}): Kendall tau {} over {} architectures",
                self.space.name,
                self.state.sampler,
                self.state.step,
                tau(&report.one_shot_top1),
                report.architectures
            ),
            x_label: "stand-alone accuracy (%)".into(),
            y_label: format!("one-shot top-1 (%) on {} held-out images", self.config.scoring.eval_limit),
            series: vec![Series {
                name: format!("architectures (FLOPs baseline tau {})", tau(&report.flops_baseline)),
                color: "steelblue".into(),
                radius: 2.0,
                line: false,
                points,
            }],
            markers: Vec::new(),
        }
    }
}
