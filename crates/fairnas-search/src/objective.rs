//! What a search optimises: a problem yields named metrics per architecture (accuracy,
//! multiply-adds, params, latency, ...); [`Goals`] say which are objectives (and in which
//! direction) and which are bounded by constraints.

use serde::{Deserialize, Serialize};

use crate::pareto::Fitness;
use crate::SearchError;

/// A search problem over choice vectors.
pub trait Problem {
    /// Candidates per searchable layer.
    fn choice_counts(&self) -> Vec<usize>;
    /// Names of the metrics [`Problem::evaluate`] returns, in order.
    fn metric_names(&self) -> Vec<String>;
    /// Metrics of each genome (one row per genome, in `metric_names` order).
    fn evaluate(&mut self, genomes: &[Vec<usize>]) -> Result<Vec<Vec<f64>>, SearchError>;
    /// The representative of `genome`'s equivalence class (e.g. NAS-Bench-Macro's identity
    /// moves): the search only ever evaluates canonical genomes.
    fn canonical(&self, genome: &[usize]) -> Vec<usize> {
        genome.to_vec()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Minimize,
    Maximize,
}

/// Objectives and constraints over a problem's metrics (indices into its metric list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goals {
    pub objectives: Vec<(usize, Direction)>,
    /// `(metric, max)`: the metric must not exceed `max`.
    pub constraints: Vec<(usize, f64)>,
}

impl Goals {
    /// Builds goals from metric names: `objectives` like `["acc", "madds"]` (accuracy-like
    /// names are maximised, costs minimised) and `(name, max)` constraints.
    pub fn named(
        metrics: &[String],
        objectives: &[(&str, Direction)],
        constraints: &[(&str, f64)],
    ) -> Result<Self, SearchError> {
        let index = |name: &str| {
            metrics.iter().position(|m| m == name).ok_or_else(|| SearchError::UnknownMetric {
                name: name.to_string(),
                available: metrics.to_vec(),
            })
        };
        Ok(Goals {
            objectives: objectives
                .iter()
                .map(|&(n, d)| Ok((index(n)?, d)))
                .collect::<Result<_, SearchError>>()?,
            constraints: constraints
                .iter()
                .map(|&(n, max)| Ok((index(n)?, max)))
                .collect::<Result<_, SearchError>>()?,
        })
    }

    /// Minimisation-form objective values and the total relative constraint violation
    /// (sum of `(value - max) / max` over broken constraints).
    pub fn fitness(&self, metrics: &[f64]) -> Fitness {
        let values = self
            .objectives
            .iter()
            .map(|&(m, d)| match d {
                Direction::Minimize => metrics[m],
                Direction::Maximize => -metrics[m],
            })
            .collect();
        let violation = self
            .constraints
            .iter()
            .map(|&(m, max)| ((metrics[m] - max) / max.abs().max(f64::MIN_POSITIVE)).max(0.0))
            .sum();
        Fitness { values, violation }
    }

    /// Objective `k`'s minimisation-form value back in natural units.
    pub fn natural_value(&self, k: usize, value: f64) -> f64 {
        match self.objectives[k].1 {
            Direction::Maximize => -value,
            Direction::Minimize => value,
        }
    }

    /// Natural-unit objective values (one per objective) in minimisation form.
    pub fn fitness_of_objectives(&self, natural: &[f64]) -> Vec<f64> {
        (0..self.objectives.len()).map(|k| self.natural_value(k, natural[k])).collect()
    }
}
