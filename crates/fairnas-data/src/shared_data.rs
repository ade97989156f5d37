//! Locating the project's shared reference data (real ImageNet photos, the Lite0 checkpoint,
//! CIFAR-10, NAS-Bench-Macro) that tests and chores use: `$FAIRNAS_SHARED`, else the `shared`
//! folder beside the checkout.

use std::path::{Path, PathBuf};

/// The shared folder for a checkout at `repo_root`, if it is present.
pub fn locate(repo_root: &Path) -> Option<PathBuf> {
    let dir =
        std::env::var_os("FAIRNAS_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_root.join("../shared"));
    dir.join("data").is_dir().then_some(dir)
}

/// For tests: the shared folder, or None after saying the test is skipped. Under CI (`CI` set)
/// a missing folder panics instead, so CI can never pass by skipping.
pub fn for_test(repo_root: &Path) -> Option<PathBuf> {
    let found = locate(repo_root);
    if found.is_none() {
        let looked = std::env::var("FAIRNAS_SHARED")
            .unwrap_or_else(|_| repo_root.join("../shared").display().to_string());
        assert!(std::env::var_os("CI").is_none(), "shared data not found at {looked} in CI");
        eprintln!("SKIPPED: shared data not found at {looked} (set FAIRNAS_SHARED)");
    }
    found
}
