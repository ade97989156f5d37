//! Helpers shared by the end-to-end tests: run the built `fairnas` binary, check its exit.
#![allow(dead_code)] // each test target uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fairnas<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairnas")).args(args).output().expect("run fairnas")
}

/// Stdout of a run that must succeed (its stderr in the failure message).
pub fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = fairnas(args);
    assert!(out.status.success(), "fairnas {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Stderr of a run that must fail.
pub fn failure<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = fairnas(args);
    assert!(!out.status.success(), "fairnas {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh folder under the system temp dir, unique per test process and `tag`.
pub fn scratch(tag: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fairnas-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A real, barely trained NAS-Bench-Macro supernet: `steps` strictly fair steps on the mini
/// CIFAR-10 data, in `dir/supernet`.
pub fn tiny_supernet(dir: &Path, steps: usize) -> String {
    let data = repo().join("data/cifar10-mini").display().to_string();
    let out = dir.join("supernet").display().to_string();
    let steps = steps.to_string();
    ok(&[
        "--threads",
        "2",
        "train-supernet",
        "--space",
        "nas-bench-macro",
        "--sampler",
        "strict",
        "--data",
        &data,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps",
        &steps,
        "--out",
        &out,
        "--json",
    ]);
    out
}
