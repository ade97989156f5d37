//! The search problem over a trained supernet: one-shot accuracy (and loss) after BN
//! recalibration on fixed batches, multiply-adds and parameters from the cost model.
//!
//! Each batch of new architectures is scored in lexicographic order so that
//! [`PrefixScorer`] shares their common prefixes; scores go through a [`ScoreStore`] (the CLI's
//! `scores.jsonl`), so nothing is scored twice, even across an interrupted and resumed search.

use fairnas_model::block_string::format_blocks;
use fairnas_model::cost::cost_report;
use fairnas_model::search_space::{SearchSpace, SpaceError};
use fairnas_supernet::scoring::{OneShotScore, PrefixScorer};

use crate::latency::LatencyTable;
use crate::objective::Problem;
use crate::SearchError;

/// Where one-shot scores are kept between evaluations (and runs).
pub trait ScoreStore {
    fn get(&self, choices: &[usize]) -> Option<OneShotScore>;
    fn put(&mut self, choices: &[usize], score: OneShotScore) -> Result<(), SearchError>;
}

/// Metrics, in order: `acc` (one-shot top-1, %), `loss` (one-shot cross-entropy), `madds`,
/// `params`, and `latency` (ms, from a lookup table) when the problem has a table.
pub const ONE_SHOT_METRICS: [&str; 4] = ["acc", "loss", "madds", "params"];

/// Called after each architecture scored (progress display).
pub type ScoredHook<'a> = Box<dyn FnMut(&[usize], &OneShotScore) + 'a>;

pub struct OneShotProblem<'a> {
    pub space: SearchSpace,
    pub scorer: PrefixScorer<'a>,
    pub store: &'a mut dyn ScoreStore,
    pub on_scored: ScoredHook<'a>,
    /// Adds the `latency` metric.
    pub latency: Option<&'a LatencyTable>,
}

/// Multiply-adds and parameters of a sub-network.
pub fn cost_of(space: &SearchSpace, choices: &[usize]) -> Result<(u64, u64), SpaceError> {
    let r = cost_report(&space.subnet(choices)?);
    Ok((r.madds, r.params))
}

/// The largest multiply-adds and parameter counts in the space (each layer's costliest
/// candidate: a layer's cost does not depend on the other layers' choices, widths being fixed
/// per layer). Reference points for hypervolumes.
pub fn max_cost(space: &SearchSpace) -> Result<(u64, u64), SpaceError> {
    let mut choices = vec![0; space.layers.len()];
    let (mut madds, mut params) = cost_of(space, &choices)?;
    let (mut best_m, mut best_p) = (choices.clone(), choices.clone());
    for l in 0..choices.len() {
        for c in 0..space.layers[l].len() {
            choices = best_m.clone();
            choices[l] = c;
            let (m, _) = cost_of(space, &choices)?;
            if m > madds {
                madds = m;
                best_m = choices.clone();
            }
            choices = best_p.clone();
            choices[l] = c;
            let (_, p) = cost_of(space, &choices)?;
            if p > params {
                params = p;
                best_p = choices.clone();
            }
        }
    }
    Ok((madds, params))
}

/// A sub-network's block strings (what `fairnas info --arch` reads for FairNAS-style specs).
pub fn block_strings(space: &SearchSpace, choices: &[usize]) -> Result<String, SpaceError> {
    let spec = space.subnet(choices)?;
    Ok(format_blocks(&spec.blocks, spec.default_activation))
}

impl Problem for OneShotProblem<'_> {
    fn choice_counts(&self) -> Vec<usize> {
        self.space.choice_counts()
    }

    fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ONE_SHOT_METRICS.iter().map(|m| m.to_string()).collect();
        if self.latency.is_some() {
            names.push("latency".into());
        }
        names
    }

    fn evaluate(&mut self, genomes: &[Vec<usize>]) -> Result<Vec<Vec<f64>>, SearchError> {
        let mut order: Vec<usize> = (0..genomes.len()).collect();
        order.sort_by(|&a, &b| genomes[a].cmp(&genomes[b]));
        let mut rows = vec![Vec::new(); genomes.len()];
        for i in order {
            let g = &genomes[i];
            let score = match self.store.get(g) {
                Some(s) => s,
                None => {
                    let s = self
                        .scorer
                        .score(g)
                        .map_err(|source| SearchError::Scoring { choices: g.clone(), source })?;
                    self.store.put(g, s)?;
                    (self.on_scored)(g, &s);
                    s
                }
            };
            let (madds, params) = cost_of(&self.space, g)?;
            rows[i] = vec![100.0 * score.top1(), score.loss, madds as f64, params as f64];
            if let Some(table) = self.latency {
                rows[i].push(table.predict(g));
            }
        }
        Ok(rows)
    }

    fn canonical(&self, genome: &[usize]) -> Vec<usize> {
        self.space.canonical(genome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_costs_of_nas_bench_macro() {
        let space = SearchSpace::nas_bench_macro();
        let (m, p) = max_cost(&space).unwrap();
        assert_eq!((m, p), cost_of(&space, &[2; 8]).unwrap(), "e6 k5 everywhere is the costliest");
    }
}
