//! With the `cuda` feature, compiles `src/cuda/kernels.cu` to PTX with nvcc (from `NVCC`, else
//! `PATH`; `cargo xtask cuda-build` provides a pinned one). Without the feature it does nothing,
//! so CPU builds never need CUDA.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-changed=src/cuda/kernels.cu");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let out =
        std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    // sm_90: the Hopper GPUs this project is checked on; the driver JIT-compiles the PTX.
    let status = std::process::Command::new(&nvcc)
        .args(["-ptx", "-arch=sm_90", "-O3", "-std=c++17", "src/cuda/kernels.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {nvcc} ({e}): build the cuda feature with `cargo xtask cuda-build`")
        });
    assert!(status.success(), "{nvcc} failed to compile src/cuda/kernels.cu");
}
