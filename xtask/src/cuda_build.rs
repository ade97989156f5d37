//! `cargo xtask cuda-build`: the `cuda` build of `fairnas` from a machine with no GPU and no CUDA
//! install, and a small bundle that carries it (with the GPU check) to a machine that has one.
//!
//! Why each step (see docs/CUDA.md for what was established):
//! - nvcc comes from NVIDIA's PyPI wheels, pinned to the 13.0 line that the GPU machines' driver
//!   accepts (newer nvcc emits PTX that driver refuses), installed with `pip --target` into a
//!   cache folder, never into the system Python.
//! - candle links the CUDA libraries dynamically, so they must resolve at link time; no wheel
//!   ships the driver's `libcuda`, and the others are hundreds of MB. We generate stub shared
//!   libraries that export the functions cudarc declares, with the real sonames (and, for the
//!   toolkit libraries, the real version node, which equals the soname): the binary then binds to
//!   the real libraries at run time on the GPU machine.
//! - The bundle is a `tar.xz` of the stripped binary and the GPU check scripts, far under the
//!   64 MiB the device tool carries.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::run;

/// The 13.0 toolkit line (docs/CUDA.md): nvcc, its NVVM and headers, the runtime and CCCL headers.
const NVCC_WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
];

/// (cudarc `sys` module, real soname, whether the real library versions its symbols by soname).
const STUB_LIBRARIES: [(&str, &str, bool); 5] = [
    ("driver", "libcuda.so.1", false),
    ("cublas", "libcublas.so.13", true),
    ("cublaslt", "libcublasLt.so.13", true),
    ("curand", "libcurand.so.10", true),
    ("nvrtc", "libnvrtc.so.13", true),
];

/// Compute capability the kernels are built for: Hopper (H100/H200), the GPUs lent here.
const COMPUTE_CAP: &str = "90";

#[derive(clap::Args)]
pub struct CudaBuildArgs {
    /// Cache folder for the toolkit wheels and the link stubs.
    #[arg(long, default_value = "target/cuda-toolchain")]
    pub toolchain: PathBuf,
    /// Cargo target folder of the CUDA build (kept apart from the CPU build's).
    #[arg(long, default_value = "target/cuda")]
    pub target_dir: PathBuf,
    /// Where the bundle goes (git-ignored).
    #[arg(long, default_value = "dist/cuda")]
    pub out: PathBuf,
    /// Parallel nvcc jobs for candle's kernels.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Run clippy (-D warnings) on the cuda feature set instead of building the bundle (CI lints
    /// the CPU feature set only).
    #[arg(long)]
    pub clippy: bool,
    /// Real photos the bundle carries (the first N of the shared ImageNet sample, with the shared
    /// EfficientNet-Lite0 checkpoint) for the GPU check's real-checkpoint logits check; 0 leaves
    /// them out. Without the shared folder the bundle goes without them, saying so.
    #[arg(long, default_value_t = 32)]
    pub real_photos: usize,
}

/// Where the shared real data lies, relative to the shared folder.
const SHARED_PHOTOS: &str = "data/imagenet-sample";
const SHARED_LITE0: &str = "data/weights/efficientnet-lite0-57934424.pth";

/// Copies the first `count` shared photos (sorted by name) and the Lite0 checkpoint into
/// `dest` (`photos/`, `efficientnet-lite0.pth`), where gpu-check.sh looks for them. False, after
/// saying why, when there is nothing to copy.
fn stage_real_data(shared: Option<&Path>, count: usize, dest: &Path) -> Result<bool> {
    if count == 0 {
        return Ok(false);
    }
    let Some(shared) = shared else {
        eprintln!("no shared folder (set FAIRNAS_SHARED): the bundle carries no real photos");
        return Ok(false);
    };
    let mut photos: Vec<PathBuf> = fs::read_dir(shared.join(SHARED_PHOTOS))
        .with_context(|| format!("cannot read {}", shared.join(SHARED_PHOTOS).display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    photos.retain(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpeg")));
    photos.sort();
    if photos.len() < count {
        bail!("--real-photos {count}: the shared sample has only {} photos", photos.len());
    }
    fs::create_dir_all(dest.join("photos"))?;
    for p in &photos[..count] {
        let name = p.file_name().context("photo path has a file name")?;
        fs::copy(p, dest.join("photos").join(name))
            .with_context(|| format!("cannot copy {}", p.display()))?;
    }
    let lite0 = shared.join(SHARED_LITE0);
    fs::copy(&lite0, dest.join("efficientnet-lite0.pth"))
        .with_context(|| format!("cannot copy {}", lite0.display()))?;
    eprintln!(
        "real data: {count} photos from {} and {}",
        shared.join(SHARED_PHOTOS).display(),
        lite0.display()
    );
    Ok(true)
}

/// The toolkit paths every CUDA step needs.
pub struct Toolkit {
    /// `.../site/nvidia/cu13`: bin/nvcc, include/, lib/.
    pub root: PathBuf,
    /// The folder `CUDA_HOME` points at: `lib64/` holds the stubs.
    pub link_home: PathBuf,
}

impl Toolkit {
    pub fn nvcc(&self) -> PathBuf {
        self.root.join("bin/nvcc")
    }

    /// The environment of a cargo build with `--features cuda`.
    pub fn apply(&self, cmd: &mut Command, jobs: usize) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.root.join("bin")];
        paths.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(paths).expect("PATH entries are valid"))
            .env("NVCC", self.nvcc())
            .env("CUDA_HOME", &self.link_home)
            .env("CUDA_COMPUTE_CAP", COMPUTE_CAP)
            .env("CUDAFORGE_THREADS", jobs.to_string())
            .env("CUDARC_CUDA_VERSION", "13000");
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) })
}

/// Installs the pinned wheels once (a marker file records the pins that were installed).
pub fn install_toolkit(cache: &Path) -> Result<PathBuf> {
    let site = cache.join("site");
    let marker = cache.join("wheels.txt");
    let pins = NVCC_WHEELS.join("\n");
    let root = site.join("nvidia/cu13");
    if fs::read_to_string(&marker).ok().as_deref() == Some(pins.as_str()) && root.join("bin/nvcc").exists() {
        eprintln!("toolkit: {} (cached)", root.display());
        return Ok(root);
    }
    if site.exists() {
        fs::remove_dir_all(&site).with_context(|| format!("cannot clear {}", site.display()))?;
    }
    fs::create_dir_all(cache)?;
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check", "--target"])
        .arg(&site)
        .args(NVCC_WHEELS))?;
    if !root.join("bin/nvcc").exists() {
        bail!("the wheels installed, but {} is missing", root.join("bin/nvcc").display());
    }
    fs::write(&marker, pins)?;
    Ok(root)
}

/// The function names cudarc declares for one library: the `fn name(` lines inside its
/// `extern "C"` blocks.
fn declared_functions(cudarc: &Path, module: &str) -> Result<Vec<String>> {
    let path = cudarc.join("src").join(module).join("sys/mod.rs");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let names = extern_function_names(&text);
    if names.is_empty() {
        bail!("no functions found in {}: has cudarc's binding layout changed?", path.display());
    }
    Ok(names)
}

/// Names of the `fn name(` declarations in bindgen output (sorted, deduplicated).
fn extern_function_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("fn ")?;
            let name = &rest[..rest.find('(')?];
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// cudarc's source in cargo's registry, at the version Cargo.lock pins.
fn cudarc_source() -> Result<PathBuf> {
    let lock = fs::read_to_string("Cargo.lock").context("cannot read Cargo.lock")?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"cudarc\""))
        .and_then(|p| {
            p.lines().find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string))
        })
        .context("Cargo.lock has no cudarc: is the cuda feature wired to candle-core/cuda?")?;
    run(Command::new("cargo").args(["fetch", "--quiet"]))?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    for registry in fs::read_dir(home.join("registry/src"))? {
        let candidate = registry?.path().join(format!("cudarc-{version}"));
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    bail!("cudarc {version} is not in {}/registry/src after cargo fetch", home.display())
}

/// Stub libraries for the linker (never for running: a stub aborts if called).
pub fn make_link_stubs(cache: &Path, toolkit_root: &Path) -> Result<PathBuf> {
    let home = cache.join("link-home");
    let lib = home.join("lib64");
    fs::create_dir_all(&lib)?;
    let cudarc = cudarc_source()?;
    let work = cache.join("stub-src");
    fs::create_dir_all(&work)?;
    for (module, soname, versioned) in STUB_LIBRARIES {
        let names = declared_functions(&cudarc, module)?;
        let mut c = String::from(
            "/* Generated by cargo xtask cuda-build: link-time stub, never loaded. */\n#include <stdlib.h>\n",
        );
        for name in &names {
            writeln!(c, "void {name}(void) {{ abort(); }}")?;
        }
        let stem = soname.split(".so").next().unwrap_or(soname);
        let source = work.join(format!("{stem}.c"));
        fs::write(&source, c)?;
        let mut cc = Command::new("cc");
        cc.args(["-shared", "-fPIC", "-O0", "-o"]).arg(lib.join(soname)).arg(&source);
        cc.arg(format!("-Wl,-soname,{soname}"));
        if versioned {
            let script = work.join(format!("{stem}.map"));
            fs::write(&script, format!("{soname} {{ global: *; }};\n"))?;
            cc.arg(format!("-Wl,--version-script={}", script.display()));
        }
        run(&mut cc)?;
        // The linker looks for the unversioned name (`-lcublas` -> libcublas.so).
        let link = lib.join(format!("{stem}.so"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(soname, &link)?;
        eprintln!("stub {soname}: {} functions", names.len());
    }
    // The runtime library ships in the wheels: link against the real one.
    let cudart = lib.join("libcudart.so");
    let _ = fs::remove_file(&cudart);
    std::os::unix::fs::symlink(toolkit_root.join("lib/libcudart.so.13"), &cudart)?;
    let include = home.join("include");
    let _ = fs::remove_file(&include);
    std::os::unix::fs::symlink(toolkit_root.join("include"), &include)?;
    Ok(home)
}

/// Sets up the toolkit (wheels + stubs) and returns it; shared by the build and by `cuda-check`.
pub fn toolkit(args: &CudaBuildArgs) -> Result<Toolkit> {
    let cache = absolute(&args.toolchain)?;
    let root = install_toolkit(&cache)?;
    let link_home = make_link_stubs(&cache, &root)?;
    Ok(Toolkit { root, link_home })
}

/// Files the bundle carries besides the binary (the GPU check and its PyTorch peer).
const BUNDLE_SCRIPTS: [&str; 3] = [
    "benches/gpu/gpu-check.sh",
    "benches/peers/torch_gpu.py",
    "crates/fairnas-model/tests/fixtures/generate_parity.py",
];

pub fn cuda_build(args: CudaBuildArgs) -> Result<()> {
    let start = Instant::now();
    let kit = toolkit(&args)?;
    let target_dir = absolute(&args.target_dir)?;
    if args.clippy {
        let mut clippy = Command::new("cargo");
        clippy
            .args([
                "clippy",
                "--release",
                "-p",
                "fairnas-cli",
                "-p",
                "fairnas-ops",
                "--features",
                "fairnas-cli/cuda",
            ])
            .args(["--all-targets", "--target-dir"])
            .arg(&target_dir)
            .args(["--", "-D", "warnings"]);
        kit.apply(&mut clippy, args.jobs);
        return run(&mut clippy);
    }
    let mut cargo = Command::new("cargo");
    cargo
        .args([
            "build",
            "--release",
            "-p",
            "fairnas-cli",
            "--bin",
            "fairnas",
            "--features",
            "cuda",
            "--target-dir",
        ])
        .arg(&target_dir);
    kit.apply(&mut cargo, args.jobs);
    run(&mut cargo)?;
    let built = target_dir.join("release/fairnas");
    let out = absolute(&args.out)?;
    let stage = out.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(stage.join("fairnas-cuda"))?;
    let binary = stage.join("fairnas-cuda/fairnas");
    fs::copy(&built, &binary)?;
    run(Command::new("strip").arg(&binary))?;
    for script in BUNDLE_SCRIPTS {
        let name = Path::new(script).file_name().context("script path has a file name")?;
        fs::copy(script, stage.join("fairnas-cuda").join(name))
            .with_context(|| format!("cannot copy {script}"))?;
    }
    let shared = fairnas_data::shared_data::locate(&std::env::current_dir()?);
    stage_real_data(shared.as_deref(), args.real_photos, &stage.join("fairnas-cuda/real-data"))?;
    let needed = Command::new("readelf").arg("-d").arg(&binary).output()?;
    let needed: Vec<String> = String::from_utf8_lossy(&needed.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_string))
        .collect();
    eprintln!("the binary needs: {}", needed.join(", "));
    let bundle = out.join("fairnas-cuda.tar.xz");
    let partial = out.join("fairnas-cuda.tar.xz.tmp");
    run(Command::new("tar").arg("-C").arg(&stage).args(["-cJf"]).arg(&partial).arg("fairnas-cuda"))?;
    fs::rename(&partial, &bundle)?;
    fs::remove_dir_all(&stage)?;
    let size = fs::metadata(&bundle)?.len();
    const LIMIT: u64 = 64 << 20;
    eprintln!(
        "bundle {} : {:.1} MiB (limit 64 MiB), built in {:.0} s",
        bundle.display(),
        size as f64 / (1u64 << 20) as f64,
        start.elapsed().as_secs_f64()
    );
    if size >= LIMIT {
        bail!("the bundle is {size} bytes, over the device tool's 64 MiB");
    }
    eprintln!(
        "on the GPU machine: tar -xJf dist/cuda/fairnas-cuda.tar.xz -C /tmp && /tmp/fairnas-cuda/gpu-check.sh \"$OUT\""
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_extern_declarations_of_bindgen_output() {
        let text = r#"
pub unsafe fn cuInit(Flags: ::core::ffi::c_uint) -> CUresult {
    #[cfg(not(feature = "dynamic-loading"))]
    {
        extern "C" {
            fn cuInit(Flags: ::core::ffi::c_uint) -> CUresult;
        }
        cuInit(Flags)
    }
}
extern "C" {
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult;
    fn cuInit(Flags: ::core::ffi::c_uint) -> CUresult;
}
pub type CUcallback = ::core::option::Option<unsafe extern "C" fn(userData: *mut c_void)>;
"#;
        assert_eq!(extern_function_names(text), vec!["cuInit".to_string(), "cuMemAlloc_v2".to_string()]);
    }

    #[test]
    fn the_bundle_carries_the_first_shared_photos_and_the_lite0_checkpoint() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let Some(shared) = fairnas_data::shared_data::for_test(&root) else { return };
        let dest = std::env::temp_dir().join(format!("fairnas-real-data-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dest);
        assert!(stage_real_data(Some(&shared), 3, &dest).unwrap());
        let mut names: Vec<String> = fs::read_dir(dest.join("photos"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["n01440764_tench.JPEG", "n01443537_goldfish.JPEG", "n01484850_great_white_shark.JPEG"]
        );
        let lite0 = fs::metadata(dest.join("efficientnet-lite0.pth")).unwrap().len();
        assert_eq!(lite0, fs::metadata(shared.join(SHARED_LITE0)).unwrap().len());
        // Nothing asked for, or nothing there: no folder, and the build goes on.
        let none = dest.join("none");
        assert!(!stage_real_data(Some(&shared), 0, &none).unwrap());
        assert!(!stage_real_data(None, 3, &none).unwrap());
        assert!(!none.exists());
        let err = stage_real_data(Some(&shared), 1_000_000, &none).unwrap_err().to_string();
        assert!(err.contains("the shared sample has only 1000 photos"), "{err}");
        fs::remove_dir_all(&dest).unwrap();
    }
}
