//! Sorting the official flat ImageNet validation folder into `<out>/<wnid>/<file>` class folders
//! (what the original's 2.7 MB `preprocess_val_dataset.sh` did with 50,000 `mv` lines), done
//! with hard links (a copy where linking is impossible), idempotently, and with a report of
//! every missing, extra or conflicting file and of classes whose image count is off.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::dataset::DatasetError;

/// What a preparation did and found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PrepareReport {
    pub linked: usize,
    pub copied: usize,
    /// Already in place from an earlier run (same file or same size and content).
    pub already_present: usize,
    /// Listed in the ground truth but absent from the validation folder.
    pub missing: Vec<String>,
    /// In the validation folder but not in the ground truth.
    pub extra_in_source: Vec<String>,
    /// In an output class folder but not expected there.
    pub extra_in_output: Vec<PathBuf>,
    /// Output files that exist with different content (left untouched).
    pub conflicts: Vec<PathBuf>,
    /// Classes whose output folder does not hold exactly the expected images:
    /// (wnid, expected, found).
    pub count_mismatches: Vec<(String, usize, usize)>,
}

impl PrepareReport {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.conflicts.is_empty() && self.count_mismatches.is_empty()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io { path: path.to_path_buf(), source }
}

fn layout(path: &Path, message: String) -> DatasetError {
    DatasetError::Layout { path: path.to_path_buf(), message }
}

/// `synset_words.txt`: one `<wnid> <names>` line per class, in class-index order.
pub fn read_synsets(path: &Path) -> Result<Vec<String>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let wnids: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    if let Some(bad) = wnids.iter().find(|w| !crate::classes::looks_like_wnid(w)) {
        return Err(layout(path, format!("'{bad}' is not a wnid (expected '<wnid> <names>' lines)")));
    }
    Ok(wnids)
}

/// `val.txt`: `<file> <class index>` per line.
pub fn read_ground_truth(path: &Path, classes: usize) -> Result<Vec<(String, usize)>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = line
            .trim()
            .rsplit_once(char::is_whitespace)
            .and_then(|(f, i)| Some((f.trim().to_string(), i.parse::<usize>().ok()?)))
            .filter(|(f, i)| *i < classes && !f.contains('/') && !f.starts_with('.'));
        out.push(parsed.ok_or_else(|| {
            layout(path, format!("line {}: expected '<file> <index < {classes}>', got {line:?}", n + 1))
        })?);
    }
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            (x.dev(), x.ino()) == (y.dev(), y.ino())
                || (x.len() == y.len() && std::fs::read(a).ok() == std::fs::read(b).ok())
        }
        _ => false,
    }
}

/// Links every listed image of `val_dir` into `out/<wnid>/`, then checks the result.
pub fn prepare(
    val_dir: &Path,
    ground_truth: &Path,
    synsets: &Path,
    out: &Path,
) -> Result<PrepareReport, DatasetError> {
    let wnids = read_synsets(synsets)?;
    let entries = read_ground_truth(ground_truth, wnids.len())?;
    let mut report = PrepareReport::default();
    let mut expected: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (file, class) in &entries {
        expected.entry(wnids[*class].as_str()).or_default().insert(file.as_str());
    }
    for wnid in &wnids {
        std::fs::create_dir_all(out.join(wnid)).map_err(io(&out.join(wnid)))?;
    }
    for (file, class) in &entries {
        let source = val_dir.join(file);
        if !source.is_file() {
            report.missing.push(file.clone());
            continue;
        }
        // Hard-link the real file: a Hugging Face cache holds symlinks to blobs, and linking the
        // symlink itself would leave a dangling relative link in the output.
        let source = std::fs::canonicalize(&source).map_err(io(&source))?;
        let target = out.join(&wnids[*class]).join(file);
        if target.exists() {
            if same_file(&source, &target) {
                report.already_present += 1;
            } else {
                report.conflicts.push(target);
            }
            continue;
        }
        match std::fs::hard_link(&source, &target) {
            Ok(()) => report.linked += 1,
            Err(_) => {
                let temp = target.with_extension("partial");
                std::fs::copy(&source, &temp).map_err(io(&source))?;
                std::fs::rename(&temp, &target).map_err(io(&target))?;
                report.copied += 1;
            }
        }
    }
    let listed: HashSet<&str> = entries.iter().map(|(f, _)| f.as_str()).collect();
    if let Ok(dir) = std::fs::read_dir(val_dir) {
        let mut extra: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !listed.contains(n.as_str()) && !n.starts_with('.'))
            .collect();
        extra.sort();
        report.extra_in_source = extra;
    }
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for wnid in &wnids {
        let want = expected.get(wnid.as_str());
        let dir = out.join(wnid);
        let mut found = 0;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if want.is_some_and(|w| w.contains(name.as_str())) {
                found += 1;
            } else {
                report.extra_in_output.push(entry.path());
            }
        }
        counts.insert(wnid, (want.map_or(0, |w| w.len()), found));
    }
    report.count_mismatches =
        counts.into_iter().filter(|(_, (e, f))| e != f).map(|(w, (e, f))| (w.to_string(), e, f)).collect();
    report.extra_in_output.sort();
    Ok(report)
}
