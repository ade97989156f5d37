//! `cargo xtask prepare-val` and `cargo xtask fetch-imagenet-val`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use fairnas_data::imagenet_val::{prepare, read_ground_truth, read_synsets, PrepareReport};
use fairnas_model::persist::sha256_file;
use fairnas_model::weights::hub_offline;

#[derive(Args)]
pub struct PrepareValArgs {
    /// The official flat validation folder (ILSVRC2012_val_00000001.JPEG ...).
    #[arg(long, value_name = "DIR")]
    pub val_dir: PathBuf,
    #[command(flatten)]
    pub split: SplitArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

/// The split's description and where it goes.
#[derive(Args)]
pub struct SplitArgs {
    /// Ground truth: `<file> <class index>` per line (e.g. shared/data/imagenet-meta/val.txt).
    #[arg(long, value_name = "val.txt")]
    pub ground_truth: PathBuf,
    /// `synset_words.txt`: `<wnid> <names>` per class, in index order.
    #[arg(long, value_name = "FILE")]
    pub synsets: PathBuf,
    /// Output root; images land in `<out>/<wnid>/` as hard links (copies across filesystems).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Succeed even when listed images are missing (a partial split).
    #[arg(long)]
    pub allow_missing: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FetchValArgs {
    /// Hugging Face dataset repository holding the flat validation images.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: String,
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Folder of the images inside the repository.
    #[arg(long, default_value = "val", value_name = "PATH")]
    pub path_in_repo: String,
    #[command(flatten)]
    pub split: SplitArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

fn print_report(report: &PrepareReport, out: &Path, args: &ReportArgs) -> Result<()> {
    let list = |v: &[String]| v.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
    if args.json {
        let j = serde_json::json!({
            "out": out.display().to_string(),
            "linked": report.linked,
            "copied": report.copied,
            "already_present": report.already_present,
            "missing": report.missing,
            "extra_in_source": report.extra_in_source,
            "extra_in_output": report.extra_in_output.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "conflicts": report.conflicts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "count_mismatches": report.count_mismatches.iter().map(|(w, e, f)| serde_json::json!({"wnid": w, "expected": e, "found": f})).collect::<Vec<_>>(),
            "complete": report.is_complete(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "{}: {} linked, {} copied, {} already present",
            out.display(),
            report.linked,
            report.copied,
            report.already_present
        );
        if !report.missing.is_empty() {
            println!("missing {} listed image(s): {}", report.missing.len(), list(&report.missing));
        }
        if !report.extra_in_source.is_empty() {
            println!(
                "{} unlisted file(s) in the source: {}",
                report.extra_in_source.len(),
                list(&report.extra_in_source)
            );
        }
        for p in &report.extra_in_output {
            println!("unexpected file in the output: {}", p.display());
        }
        for p in &report.conflicts {
            println!("conflict: {} exists with different content (left as is)", p.display());
        }
        let mismatches = report.count_mismatches.len();
        for (wnid, expected, found) in report.count_mismatches.iter().take(20) {
            println!("class {wnid}: {found} image(s), expected {expected}");
        }
        if mismatches > 20 {
            println!("... and {} more classes with the wrong count", mismatches - 20);
        }
    }
    let only_missing = report.conflicts.is_empty()
        && report.count_mismatches.iter().all(|(_, e, f)| f <= e)
        && report.extra_in_output.is_empty();
    if !(report.is_complete() || args.allow_missing && only_missing) {
        bail!(
            "validation split incomplete: {} missing, {} conflicts, {} classes with the wrong count{}",
            report.missing.len(),
            report.conflicts.len(),
            report.count_mismatches.len(),
            if args.allow_missing { "" } else { " (--allow-missing accepts a partial split)" }
        );
    }
    Ok(())
}

pub fn prepare_val(args: PrepareValArgs) -> Result<()> {
    let split = &args.split;
    let report = prepare(&args.val_dir, &split.ground_truth, &split.synsets, &split.out)?;
    print_report(&report, &split.out, &args.report)
}

/// Fetches one repository file: from the cache, else (unless offline) downloaded.
struct Fetcher {
    cache: hf_hub::CacheRepo,
    api: Option<hf_hub::api::sync::ApiRepo>,
    uri: String,
}

impl Fetcher {
    fn new(args: &FetchValArgs) -> Result<Self> {
        let repo =
            hf_hub::Repo::with_revision(args.repo.clone(), hf_hub::RepoType::Dataset, args.revision.clone());
        let cache = hf_hub::Cache::from_env().repo(repo.clone());
        let api = if hub_offline() {
            None
        } else {
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_token(std::env::var("HF_TOKEN").ok())
                .with_progress(false)
                .build()
                .context("cannot set up the Hugging Face client")?;
            Some(api.repo(repo))
        };
        Ok(Fetcher { cache, api, uri: format!("hf://datasets/{}@{}", args.repo, args.revision) })
    }

    /// Some(path), or None when the file does not exist in the repository/cache.
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        if let Some(path) = self.cache.get(file) {
            return Ok(Some(path));
        }
        match &self.api {
            None => Ok(None),
            Some(api) => {
                api.get(file).map(Some).with_context(|| format!("{}/{file}: download failed", self.uri))
            }
        }
    }
}

pub fn fetch_imagenet_val(args: FetchValArgs) -> Result<()> {
    let split = &args.split;
    let wnids = read_synsets(&split.synsets)?;
    let entries = read_ground_truth(&split.ground_truth, wnids.len())?;
    let fetcher = Fetcher::new(&args)?;
    let prefix = args.path_in_repo.trim_matches('/');
    let in_repo = |file: &str| if prefix.is_empty() { file.to_string() } else { format!("{prefix}/{file}") };
    // Checksums, when the repository publishes them (`SHA256SUMS`: `<hex>  <path>` lines).
    let sums: std::collections::HashMap<String, String> = match fetcher.get("SHA256SUMS")? {
        Some(path) => std::fs::read_to_string(&path)?
            .lines()
            .filter_map(|l| {
                l.split_once(char::is_whitespace)
                    .map(|(h, p)| (p.trim().trim_start_matches('*').to_string(), h.to_lowercase()))
            })
            .collect(),
        None => {
            eprintln!("warning: {} has no SHA256SUMS; checking sizes only", fetcher.uri);
            Default::default()
        }
    };
    let progress = indicatif::ProgressBar::new(entries.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files  {per_sec}  eta {eta}")
            .expect("valid template"),
    );
    let mut folder: Option<PathBuf> = None;
    let mut absent = Vec::new();
    for (file, _) in &entries {
        let name = in_repo(file);
        match fetcher.get(&name)? {
            None => absent.push(name),
            Some(path) => {
                let size = std::fs::metadata(&path)
                    .with_context(|| format!("cannot stat {}", path.display()))?
                    .len();
                if size == 0 {
                    bail!("{}/{name} is empty", fetcher.uri);
                }
                if let Some(want) = sums.get(&name) {
                    let got = sha256_file(&path)?;
                    if &got != want {
                        bail!("{}/{name}: sha256 {got} does not match SHA256SUMS ({want}); delete it from the cache ({}) and fetch again", fetcher.uri, path.display());
                    }
                }
                folder.get_or_insert_with(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if !absent.is_empty() && !args.report.allow_missing {
        bail!(
            "{} of {} files are not available from {}{} (first: {}); --allow-missing prepares the rest",
            absent.len(),
            entries.len(),
            fetcher.uri,
            if hub_offline() { " with HF_HUB_OFFLINE set (cache only)" } else { "" },
            absent[0]
        );
    }
    let Some(folder) = folder else { bail!("no file of the split is available from {}", fetcher.uri) };
    let report = prepare(&folder, &split.ground_truth, &split.synsets, &split.out)?;
    print_report(&report, &split.out, &args.report)
}
