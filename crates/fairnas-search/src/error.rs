//! What can go wrong in a search, named by the file, metric or architecture concerned.

use std::path::PathBuf;

use fairnas_model::search_space::{format_choices, SpaceError};

use crate::ground_truth::GroundTruthError;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error("unknown metric '{name}' (available: {})", available.join(", "))]
    UnknownMetric { name: String, available: Vec<String> },
    /// A problem's metrics do not have the shape it declared.
    #[error("the problem returned {rows} metric rows for {architectures} architectures")]
    MetricRows { rows: usize, architectures: usize },
    #[error("architecture {}: non-finite metric in {metrics:?}", format_choices(.choices))]
    NonFinite { choices: Vec<usize>, metrics: Vec<f64> },
    #[error("scoring {}: {source}", format_choices(.choices))]
    Scoring { choices: Vec<usize>, source: candle_core::Error },
    #[error("empty population")]
    EmptyPopulation,
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    GroundTruth(#[from] GroundTruthError),
    #[error("{} line {line}: {source}", path.display())]
    Line { path: PathBuf, line: usize, source: serde_json::Error },
    /// A result folder holds results made with other settings.
    #[error("{} holds results made with other settings: {}", folder.display(), differences.join(", "))]
    OtherSettings { folder: PathBuf, differences: Vec<String> },
    #[error(transparent)]
    Train(#[from] fairnas_supernet::TrainError),
    #[error("unknown objective '{0}' (acc, loss, madds, params, latency)")]
    UnknownObjective(String),
    #[error("no objective: name at least one of acc, loss, madds, params")]
    NoObjective,
    #[error("{0} needs a latency table")]
    NeedsLatencyTable(String),
    #[error("a {metric} limit must be positive, got {limit}")]
    Limit { metric: String, limit: f64 },
    #[error("'{0}' is not a search algorithm (nsga2, random or evolution)")]
    UnknownAlgorithm(String),
    #[error("a population needs at least 2 members, got {0}")]
    Population(usize),
    /// A fresh search where one already is.
    #[error("{} holds a search already", .0.display())]
    SearchExists(PathBuf),
    #[error("{}: a latency table of the {table} space, not {space}", path.display())]
    LatencySpace { path: PathBuf, table: String, space: String },
    #[error("the ground-truth comparison compares acc, madds and params only: {0}")]
    GroundTruthObjectives(Box<SearchError>),
    #[error(transparent)]
    Onnx(#[from] fairnas_model::onnx::OnnxError),
    #[error("exporting a sub-network: {source}")]
    Export { source: candle_core::Error },
    #[error("'{0}' is not an architecture sample: 'all' or a positive number")]
    Sample(String),
    #[error("'{0}' is not a count like 400M, 5.5M or 300k")]
    Count(String),
    /// A pipeline stage found what an earlier one should have written missing or unreadable.
    #[error("{0}")]
    Pipeline(String),
    /// A user-defined problem's own failure.
    #[error("{0}")]
    Problem(String),
}
