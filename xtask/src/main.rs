//! Project chores: `cargo xtask <command>`.
//!
//! - `fixtures`: regenerate the golden test fixtures with PyTorch/Pillow in a private venv
//!   (never needed by CI or the tests, which use the committed fixtures).
//!
//! - `convert`: a PyTorch checkpoint (.pth/.pth.tar, legacy or zip) to safetensors with the
//!   project's canonical names (the same code as `fairnas convert`).
//!
//! - `prepare-val`: the official flat ImageNet validation folder sorted into `<wnid>/` folders.
//! - `fetch-imagenet-val`: a validation split from a Hugging Face dataset repository (cache
//!   first, resumable per file, checksums checked), then prepared.
//!
//! - `cuda-build`: the `cuda` build of `fairnas` on a machine without CUDA or a GPU (nvcc from
//!   pinned wheels, link stubs), bundled with the GPU check for the device machine.

// The doc comments on the task structs are clap's help text (`<out>/<wnid>/`), not rustdoc.
#![allow(rustdoc::invalid_html_tags)]

mod cuda_build;
mod imagenet_val;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "fairnas-rs project chores")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the parity (logits) and resize fixtures with PyTorch and Pillow.
    Fixtures {
        /// Python virtual environment to use; created with the needed packages when missing.
        #[arg(long, default_value = "target/fixtures-venv")]
        venv: PathBuf,
        /// Folder of real ImageNet photos (the shared sample).
        #[arg(long, default_value = "../shared/data/imagenet-sample")]
        images: PathBuf,
    },
    /// Convert a PyTorch checkpoint to safetensors with canonical names, checked against the
    /// model: `fairnas convert` (built in release), with the same flags.
    Convert {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Sort the official flat validation folder into <out>/<wnid>/ (hard links, idempotent, checked).
    PrepareVal(imagenet_val::PrepareValArgs),
    /// Download a validation split through the Hugging Face hub, then prepare it.
    FetchImagenetVal(imagenet_val::FetchValArgs),
    /// Build `fairnas --features cuda` here (no GPU needed) and bundle it with the GPU check.
    CudaBuild(cuda_build::CudaBuildArgs),
}

const FIXTURE_SCRIPTS: [&str; 4] = [
    "crates/fairnas-model/tests/fixtures/generate_parity.py",
    "crates/fairnas-data/tests/fixtures/generate_resize.py",
    "crates/fairnas-data/tests/fixtures/generate_decode.py",
    "crates/fairnas-model/tests/fixtures/checkpoints/generate_checkpoints.py",
];

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "torch",
            "numpy",
            "pillow",
            "safetensors",
        ]))?;
    }
    Ok(python)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Fixtures { venv, images } => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            std::env::set_current_dir(&root)?;
            if !images.is_dir() {
                bail!("image folder {} not found (pass --images)", images.display());
            }
            let python = ensure_venv(&venv)?;
            for script in FIXTURE_SCRIPTS {
                run(Command::new(&python).arg(script).arg("--images").arg(&images))?;
            }
            eprintln!("fixtures regenerated; review `git diff --stat` before committing");
        }
        Task::Convert { args } => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            run(Command::new(env!("CARGO"))
                .current_dir(root)
                .args(["run", "--release", "-q", "-p", "fairnas-cli", "--", "convert"])
                .args(&args))?
        }
        Task::PrepareVal(args) => imagenet_val::prepare_val(args)?,
        Task::FetchImagenetVal(args) => imagenet_val::fetch_imagenet_val(args)?,
        Task::CudaBuild(args) => {
            std::env::set_current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))?;
            cuda_build::cuda_build(args)?
        }
    }
    Ok(())
}
