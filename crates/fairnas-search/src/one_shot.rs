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
use fairnas_supernet::world::{block, World};

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
    /// The job whose ranks share the scoring ([`score_across`]); [`fairnas_supernet::Solo`] for one process.
    pub world: &'a dyn World,
}

/// Receives each score [`score_across`] gathers (to cache it).
pub type Gathered<'a> = dyn FnMut(&[usize], OneShotScore) -> Result<(), SearchError> + 'a;

/// Scores per rank between two gathers in a job of several processes: the most a killed job
/// loses, and how often the ranks meet.
const PER_ROUND: usize = 8;

/// Scores `archs` across the ranks of `world`, each by exactly one rank: rank `r` takes the
/// contiguous block `r` (so its architectures keep their common prefixes: pass them in
/// lexicographic order), `PER_ROUND` at a time; after each round every rank has every score of
/// the round and hands them to `scored`, in `archs` order within each rank's part. A job of
/// one process scores one architecture per round, in order.
pub fn score_across(
    world: &dyn World,
    scorer: &mut PrefixScorer,
    archs: &[Vec<usize>],
    scored: &mut Gathered,
) -> Result<(), SearchError> {
    let (size, per_round) = (world.size(), if world.size() == 1 { 1 } else { PER_ROUND });
    let blocks: Vec<_> = (0..size).map(|r| block(archs.len(), r, size)).collect();
    let longest = blocks.iter().map(|b| b.len()).max().unwrap_or(0);
    for round in (0..longest).step_by(per_round) {
        let mut local = vec![f64::NAN; 3 * per_round];
        let mine = &blocks[world.rank()];
        for (j, i) in (mine.start + round..mine.end.min(mine.start + round + per_round)).enumerate() {
            let score = scorer
                .score(&archs[i])
                .map_err(|source| SearchError::Scoring { choices: archs[i].clone(), source })?;
            local[3 * j..3 * j + 3].copy_from_slice(&[score.correct as f64, score.images as f64, score.loss]);
        }
        let all = world.gather_f64(&local);
        for (r, b) in blocks.iter().enumerate() {
            for (j, i) in (b.start + round..b.end.min(b.start + round + per_round)).enumerate() {
                let v = &all[3 * (r * per_round + j)..3 * (r * per_round + j) + 3];
                let score = OneShotScore { correct: v[0] as usize, images: v[1] as usize, loss: v[2] };
                scored(&archs[i], score)?;
            }
        }
    }
    Ok(())
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
        let mut new: Vec<Vec<usize>> =
            genomes.iter().filter(|g| self.store.get(g).is_none()).cloned().collect();
        new.sort();
        new.dedup();
        let (store, on_scored) = (&mut *self.store, &mut self.on_scored);
        score_across(self.world, &mut self.scorer, &new, &mut |g, s| {
            store.put(g, s)?;
            on_scored(g, &s);
            Ok(())
        })?;
        let mut rows = Vec::with_capacity(genomes.len());
        for g in genomes {
            let score =
                self.store.get(g).ok_or_else(|| SearchError::Pipeline(format!("{g:?} was not scored")))?;
            let (madds, params) = cost_of(&self.space, g)?;
            let mut row = vec![100.0 * score.top1(), score.loss, madds as f64, params as f64];
            if let Some(table) = self.latency {
                row.push(table.predict(g));
            }
            rows.push(row);
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
