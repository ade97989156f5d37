//! A search judged by a benchmark's stand-alone ground truth: are the architectures it found
//! good, and did it beat a random search given the same number of supernet evaluations?
//!
//! One-shot accuracies on a small proxy say little by themselves (a supernet trained for
//! minutes on a few hundred images scores its sub-networks at 20-40% top-1). A benchmark that
//! trained every architecture stand-alone (NAS-Bench-Macro: all 3^8 sub-networks on CIFAR-10,
//! 3 runs each; docs/FAIRNAS.md section 7) answers the question that matters: where do the
//! found architectures stand among all of them. The project ships that ground truth in
//! `data/nas-bench-macro/ground-truth.json`.
//!
//! Fronts are judged on (stand-alone accuracy, multiply-adds) whatever the search optimised,
//! against the true front of every canonical architecture ([`ground_truth_comparison`]).

use std::path::Path;

use fairnas_model::search_space::{format_choices, SearchSpace};
use serde::{Deserialize, Serialize};

use crate::ground_truth::GroundTruth;
use crate::objective::Direction;
use crate::run::{ground_truth_comparison, FrontMember, GroundTruthComparison};
use crate::SearchError;

/// An architecture placed by the benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub choices: String,
    /// Stand-alone top-1 (mean of the benchmark's runs), percent.
    pub acc: f64,
    pub madds: u64,
    /// Share of the canonical architectures with a lower stand-alone accuracy, percent.
    pub percentile: f64,
}

/// One front judged by the benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedFront {
    /// Supernet evaluations the search spent.
    pub evaluations: usize,
    pub members: Vec<Placed>,
    pub comparison: GroundTruthComparison,
}

/// A pipeline run judged by the benchmark (`judgement.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// Canonical architectures of the space (identity layers moved last: 3969 here).
    pub architectures: usize,
    /// The best stand-alone accuracy among them, percent.
    pub best_acc: f64,
    /// The exported models, most accurate by one-shot score first.
    pub models: Vec<Placed>,
    pub search: JudgedFront,
    /// Random search with the same evaluation budget, from the same supernet.
    pub random: Option<JudgedFront>,
    /// The true (accuracy, multiply-adds) front over every canonical architecture.
    pub true_front: Vec<Placed>,
}

impl std::fmt::Display for Judgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.search.comparison;
        write!(
            f,
            "judged by the benchmark ({} architectures): the found front's hypervolume is {:.3} of the true front's",
            self.architectures, s.hypervolume_ratio
        )?;
        if let Some(r) = &self.random {
            write!(f, ", random search's {:.3}", r.comparison.hypervolume_ratio)?;
        }
        for m in &self.models {
            write!(
                f,
                "\n  {}: stand-alone {:.2}% (best in the benchmark {:.2}%), better than {:.1}% of all",
                m.choices, m.acc, self.best_acc, m.percentile
            )?;
        }
        Ok(())
    }
}

/// Places architectures in a benchmark: stand-alone accuracy and percentile among the
/// canonical architectures.
pub struct Benchmark<'a> {
    pub space: &'a SearchSpace,
    pub truth: GroundTruth,
    /// Stand-alone accuracies of the canonical architectures, ascending.
    sorted: Vec<f64>,
    canonical: Vec<Vec<usize>>,
}

impl<'a> Benchmark<'a> {
    /// Reads the ground truth at `path` for `space`.
    pub fn load(path: &Path, space: &'a SearchSpace) -> Result<Self, SearchError> {
        let truth = GroundTruth::load(path, space)?;
        let canonical = space.canonical_architectures(1_000_000)?;
        let mut sorted = Vec::with_capacity(canonical.len());
        for c in &canonical {
            sorted.push(truth.require(space, c)?.mean_acc);
        }
        sorted.sort_by(f64::total_cmp);
        Ok(Benchmark { space, truth, sorted, canonical })
    }

    /// `choices` placed among the canonical architectures.
    pub fn place(&self, choices: &[usize]) -> Result<Placed, SearchError> {
        let e = self.truth.require(self.space, choices)?;
        let below = self.sorted.partition_point(|&a| a < e.mean_acc);
        Ok(Placed {
            choices: format_choices(choices),
            acc: e.mean_acc,
            madds: e.flops,
            percentile: 100.0 * below as f64 / self.sorted.len().max(1) as f64,
        })
    }

    /// `front` (as `front.json` holds it) judged on stand-alone accuracy and multiply-adds.
    pub fn judge_front(&self, front: &[FrontMember], evaluations: usize) -> Result<JudgedFront, SearchError> {
        let genomes: Vec<Vec<usize>> =
            front.iter().map(|m| self.space.parse_choices(&m.choices)).collect::<Result<_, _>>()?;
        let objectives =
            [("acc".to_string(), Direction::Maximize), ("madds".to_string(), Direction::Minimize)];
        let comparison = ground_truth_comparison(&self.truth, self.space, &objectives, &genomes)?;
        let members = genomes.iter().map(|g| self.place(g)).collect::<Result<_, _>>()?;
        Ok(JudgedFront { evaluations, members, comparison })
    }

    /// The true front over (accuracy, multiply-adds), cheapest first.
    pub fn true_front(&self) -> Result<Vec<Placed>, SearchError> {
        let mut all: Vec<Placed> = self.canonical.iter().map(|c| self.place(c)).collect::<Result<_, _>>()?;
        all.sort_by(|a, b| a.madds.cmp(&b.madds).then(b.acc.total_cmp(&a.acc)));
        let mut front: Vec<Placed> = Vec::new();
        for p in all {
            if front.last().is_none_or(|last| p.acc > last.acc) {
                front.push(p);
            }
        }
        Ok(front)
    }

    /// The best stand-alone accuracy of the canonical architectures.
    pub fn best_acc(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(f64::NAN)
    }

    pub fn architectures(&self) -> usize {
        self.sorted.len()
    }
}
