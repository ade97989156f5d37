//! `cargo xtask prepare-val` and `fetch-imagenet-val` on small real splits (the repository's two
//! ImageNet photos under official validation names), fetch against a Hugging Face cache laid out
//! by the test (HF_HUB_OFFLINE=1, no network).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fairnas-xtask-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn xtask(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args).env_remove("HF_HUB_CACHE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// synset_words.txt for the 1000 classes and a 3-line ground truth: espresso (967), nail (677),
/// and a third file that will be missing.
fn metadata(dir: &Path) -> (PathBuf, PathBuf) {
    let synsets = dir.join("synset_words.txt");
    let lines: Vec<String> =
        fairnas_data::classes::imagenet_wnids().iter().map(|w| format!("{w} name")).collect();
    std::fs::write(&synsets, lines.join("\n")).unwrap();
    let gt = dir.join("val.txt");
    std::fs::write(
        &gt,
        "ILSVRC2012_val_00000001.JPEG 967\nILSVRC2012_val_00000002.JPEG 677\nILSVRC2012_val_00000003.JPEG 677\n",
    )
    .unwrap();
    (synsets, gt)
}

fn photos() -> [(PathBuf, &'static str); 2] {
    [
        (repo().join("data/images/n07920052_espresso.JPEG"), "ILSVRC2012_val_00000001.JPEG"),
        (repo().join("data/images/n03804744_nail.JPEG"), "ILSVRC2012_val_00000002.JPEG"),
    ]
}

#[test]
fn prepare_val_links_reports_and_is_idempotent() {
    let dir = scratch("prepare");
    let (synsets, gt) = metadata(&dir);
    let val = dir.join("val");
    std::fs::create_dir_all(&val).unwrap();
    for (photo, name) in photos() {
        std::fs::copy(photo, val.join(name)).unwrap();
    }
    std::fs::write(val.join("README"), "stray").unwrap();
    let out = dir.join("sorted");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "prepare-val".to_string(),
            "--val-dir".into(),
            val.display().to_string(),
            "--ground-truth".into(),
            gt.display().to_string(),
            "--synsets".into(),
            synsets.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        xtask(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };
    // One listed image is missing: reported, and a failure unless --allow-missing.
    let first = run(&["--json"]);
    assert!(!first.status.success());
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["linked"], 2);
    assert_eq!(report["missing"], serde_json::json!(["ILSVRC2012_val_00000003.JPEG"]));
    assert_eq!(report["extra_in_source"], serde_json::json!(["README"]));
    assert_eq!(
        report["count_mismatches"],
        serde_json::json!([{"wnid": "n03804744", "expected": 2, "found": 1}])
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("--allow-missing"));
    // Hard links into the wnid folders.
    use std::os::unix::fs::MetadataExt;
    let linked = out.join("n07920052/ILSVRC2012_val_00000001.JPEG");
    assert_eq!(
        std::fs::metadata(&linked).unwrap().ino(),
        std::fs::metadata(val.join("ILSVRC2012_val_00000001.JPEG")).unwrap().ino()
    );
    // Again: nothing new to do, and --allow-missing accepts the partial split.
    let second = run(&["--json", "--allow-missing"]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!((report["linked"].as_u64(), report["already_present"].as_u64()), (Some(0), Some(2)));
    // A foreign file in a class folder and a conflicting one are reported.
    std::fs::write(out.join("n03804744/intruder.JPEG"), "x").unwrap();
    std::fs::remove_file(&linked).unwrap();
    std::fs::write(&linked, "different").unwrap();
    let third = run(&["--allow-missing"]);
    assert!(!third.status.success());
    let text = String::from_utf8_lossy(&third.stdout);
    assert!(text.contains("unexpected file in the output") && text.contains("intruder.JPEG"), "{text}");
    assert!(text.contains("conflict:") && text.contains("ILSVRC2012_val_00000001.JPEG"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn fetch_imagenet_val_from_a_laid_out_hub_cache() {
    let dir = scratch("fetch");
    let (synsets, gt) = metadata(&dir);
    // HF cache layout: hub/datasets--<owner>--<name>/{refs/main, snapshots/<commit>/...}; the
    // hub client stores blobs and symlinks snapshot files to them, as done here.
    let home = dir.join("hf-home");
    let repo_dir = home.join("hub/datasets--fairnas-test--imagenet-val");
    let snapshot = repo_dir.join("snapshots/c0ffee");
    std::fs::create_dir_all(snapshot.join("val")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), "c0ffee").unwrap();
    let mut sums = String::new();
    for (photo, name) in photos() {
        let hash = sha256(&photo);
        std::fs::copy(&photo, repo_dir.join("blobs").join(&hash)).unwrap();
        std::os::unix::fs::symlink(format!("../../../blobs/{hash}"), snapshot.join("val").join(name))
            .unwrap();
        sums.push_str(&format!("{hash}  val/{name}\n"));
    }
    std::fs::write(snapshot.join("SHA256SUMS"), &sums).unwrap();
    let out = dir.join("sorted");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "fetch-imagenet-val",
            "--repo",
            "fairnas-test/imagenet-val",
            "--ground-truth",
            gt.to_str().unwrap(),
            "--synsets",
            synsets.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        xtask(&args, &[("HF_HOME", &home), ("HF_HUB_OFFLINE", Path::new("1"))])
    };
    // The third image is in neither the cache nor (offline) the hub.
    let missing = run(&[]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        err.contains("1 of 3 files are not available")
            && err.contains("HF_HUB_OFFLINE")
            && err.contains("val/ILSVRC2012_val_00000003.JPEG"),
        "{err}"
    );
    let ok = run(&["--allow-missing", "--json"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["linked"].as_u64().unwrap() + report["copied"].as_u64().unwrap(), 2);
    // The output holds the real bytes (not a dangling relative symlink).
    let placed = out.join("n07920052/ILSVRC2012_val_00000001.JPEG");
    assert_eq!(std::fs::read(&placed).unwrap(), std::fs::read(&photos()[0].0).unwrap());
    assert!(!std::fs::symlink_metadata(&placed).unwrap().file_type().is_symlink());
    // A corrupted cached file fails its checksum, named.
    let blob = repo_dir.join("blobs").join(sha256(&photos()[1].0));
    std::fs::write(&blob, "corrupt").unwrap();
    let bad = run(&["--allow-missing"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("val/ILSVRC2012_val_00000002.JPEG: sha256"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
