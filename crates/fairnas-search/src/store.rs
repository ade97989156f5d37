//! Result folders that resume: the per-architecture score cache (`scores.jsonl`, appended as
//! scores come, a torn last line dropped on reopening) and the guard that refuses to mix
//! results made with other settings in one folder.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use fairnas_model::persist::write_atomically;
use fairnas_model::search_space::format_choices;
use fairnas_supernet::scoring::OneShotScore;
use serde::{Deserialize, Serialize};

use crate::one_shot::ScoreStore;
use crate::SearchError;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SearchError + '_ {
    move |source| SearchError::Io { path: path.to_path_buf(), source }
}

/// Writes `settings` to `path`, or checks that the ones already there match (top-level
/// fields named in `free` may differ: they do not change results, e.g. where the data lives).
pub fn guard_settings<T: Serialize>(path: &Path, settings: &T, free: &[&str]) -> Result<(), SearchError> {
    let now = serde_json::to_value(settings).expect("settings serialise");
    let Ok(text) = std::fs::read_to_string(path) else {
        let text = serde_json::to_string_pretty(&now).expect("settings serialise");
        return write_atomically(path, text.as_bytes()).map_err(io_error(path));
    };
    let before: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| SearchError::Json { path: path.to_path_buf(), source })?;
    let mut differences = Vec::new();
    flat_differences("", &before, &now, free, &mut differences);
    match differences.is_empty() {
        true => Ok(()),
        false => Err(SearchError::OtherSettings {
            folder: path.parent().unwrap_or(path).to_path_buf(),
            differences,
        }),
    }
}

fn flat_differences(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    free: &[&str],
    out: &mut Vec<String>,
) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, v) in y {
                if free.contains(&k.as_str()) {
                    continue;
                }
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flat_differences(&name, x.get(k).unwrap_or(&serde_json::Value::Null), v, free, out);
            }
        }
        _ if a != b => out.push(format!("{prefix} (cached {a}, now {b})")),
        _ => {}
    }
}

/// One line of scores.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ScoreLine {
    choices: String,
    #[serde(flatten)]
    score: OneShotScore,
}

/// Per-architecture one-shot scores, persisted as they come.
pub struct ScoreCache {
    path: PathBuf,
    scores: HashMap<String, OneShotScore>,
    file: Option<std::fs::File>,
    persist: bool,
}

impl ScoreCache {
    /// Reads `path` if it exists. A torn last line (a kill mid-write) is dropped and the file
    /// rewritten without it (atomically), so appends start on a clean line.
    pub fn open(path: &Path) -> Result<Self, SearchError> {
        let mut scores = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str::<ScoreLine>(line) {
                    Ok(l) => {
                        scores.insert(l.choices, l.score);
                    }
                    Err(_) if i + 1 == lines.len() => {
                        tracing::warn!("{}: dropping a torn last line", path.display());
                        let kept: String = lines[..i].iter().map(|l| format!("{l}\n")).collect();
                        write_atomically(path, kept.as_bytes()).map_err(io_error(path))?;
                    }
                    Err(source) => {
                        return Err(SearchError::Line { path: path.to_path_buf(), line: i + 1, source })
                    }
                }
            }
        }
        Ok(ScoreCache { path: path.to_path_buf(), scores, file: None, persist: true })
    }

    /// Whether inserted scores are appended to the file (default) or only kept in memory (the
    /// ranks of a job other than the leader, which writes them).
    pub fn persist(&mut self, persist: bool) {
        self.persist = persist;
    }

    pub fn get(&self, choices: &[usize]) -> Option<OneShotScore> {
        self.scores.get(&format_choices(choices)).copied()
    }

    /// Records a score, appending it to the file at once.
    pub fn insert(&mut self, choices: &[usize], score: OneShotScore) -> Result<(), SearchError> {
        if !self.persist {
            self.scores.insert(format_choices(choices), score);
            return Ok(());
        }
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(io_error(&self.path))?;
            self.file = Some(file);
        }
        let line = ScoreLine { choices: format_choices(choices), score };
        let file = self.file.as_mut().expect("opened above");
        writeln!(file, "{}", serde_json::to_string(&line).expect("scores serialise"))
            .and_then(|_| file.flush())
            .map_err(io_error(&self.path))?;
        self.scores.insert(line.choices, score);
        Ok(())
    }
}

impl ScoreStore for ScoreCache {
    fn get(&self, choices: &[usize]) -> Option<OneShotScore> {
        ScoreCache::get(self, choices)
    }

    fn put(&mut self, choices: &[usize], score: OneShotScore) -> Result<(), SearchError> {
        self.insert(choices, score)
    }
}
