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

#[cfg(test)]
mod tests {
    use super::*;
    use fairnas_model::spec::BlockSpec;

    /// A 4-layer, 3-candidate space (81 architectures) with a synthetic ground truth whose
    /// accuracies tie on purpose, written where `Benchmark::load` reads it.
    fn bench_fixture() -> (SearchSpace, std::path::PathBuf) {
        let macro_space = SearchSpace::nas_bench_macro();
        let mut space = macro_space.clone();
        space.name = "judge-4".into();
        space.layers = [(24, 2), (24, 1), (48, 2), (48, 1)]
            .iter()
            .map(|&(out_channels, stride)| {
                macro_space.layers[0].iter().map(|&b| BlockSpec { out_channels, stride, ..b }).collect()
            })
            .collect();
        space.validate().unwrap();
        let mut entries = serde_json::Map::new();
        for index in 0..81usize {
            let c: Vec<usize> = (0..4).map(|l| (index / 3usize.pow(3 - l as u32)) % 3).collect();
            let acc = 50.0 + (c[0] * 7 + c[1] * 3 + c[2] * 5 + c[3]) as f64 % 11.0 * 4.0;
            let flops = 1000 + c.iter().map(|&x| x as u64 * 250).sum::<u64>() + c[0] as u64 * 10;
            let value = serde_json::json!({"mean_acc": acc, "params": 1, "flops": flops});
            entries.insert(format_choices(&c), value);
        }
        let path = std::env::temp_dir().join(format!("fairnas-judge-{}.json", std::process::id()));
        std::fs::write(&path, serde_json::Value::Object(entries).to_string()).unwrap();
        (space, path)
    }

    #[test]
    fn percentiles_and_the_true_front_match_brute_force() {
        let (space, path) = bench_fixture();
        let bench = Benchmark::load(&path, &space).unwrap();
        let canonical = space.canonical_architectures(1000).unwrap();
        assert_eq!(bench.architectures(), canonical.len());
        let truth: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let acc = |c: &[usize]| truth[format_choices(c)]["mean_acc"].as_f64().unwrap();
        let flops = |c: &[usize]| truth[format_choices(c)]["flops"].as_u64().unwrap();
        for c in &canonical {
            let below = canonical.iter().filter(|o| acc(o) < acc(c)).count();
            let p = bench.place(c).unwrap();
            assert_eq!(p.percentile, 100.0 * below as f64 / canonical.len() as f64, "{c:?}");
            assert_eq!((p.acc, p.madds), (acc(c), flops(c)));
        }
        // Non-dominated by brute force: nothing at most as costly and at least as accurate,
        // better in one of the two. Equal (acc, madds) pairs count once.
        let mut front: Vec<(u64, u64)> = canonical
            .iter()
            .filter(|c| {
                !canonical.iter().any(|o| {
                    flops(o) <= flops(c) && acc(o) >= acc(c) && (flops(o) < flops(c) || acc(o) > acc(c))
                })
            })
            .map(|c| (flops(c), acc(c).to_bits()))
            .collect();
        front.sort();
        front.dedup();
        let got: Vec<(u64, u64)> =
            bench.true_front().unwrap().iter().map(|p| (p.madds, p.acc.to_bits())).collect();
        assert_eq!(got, front);
        assert_eq!(bench.best_acc(), canonical.iter().map(|c| acc(c)).fold(f64::MIN, f64::max));
        std::fs::remove_file(path).unwrap();
    }
}
