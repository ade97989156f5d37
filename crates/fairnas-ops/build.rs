//! With the `cuda` feature, compiles `src/cuda/kernels.cu` to PTX with nvcc (from `NVCC`, else
//! `PATH`; `cargo xtask cuda-build` provides a pinned one). With `cuda-emulator`, compiles the
//! same kernels for the host (src/cuda/emulator.cpp, any C++17 compiler). Without either it does
//! nothing, so CPU builds never need CUDA or C++.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-changed=src/cuda/kernels.cu");
    println!("cargo:rerun-if-changed=src/cuda/emulator.cpp");
    #[cfg(feature = "cuda-emulator")]
    emulator();
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

/// The host build of the kernels: optimised whatever the profile (the tests run whole tiled
/// launches through it), with the compiler's warnings as errors so kernels.cu stays clean C++.
#[cfg(feature = "cuda-emulator")]
fn emulator() {
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(true)
        .warnings_into_errors(true)
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-sign-compare")
        .file("src/cuda/emulator.cpp")
        .compile("fairnas_cuda_emulator");
}
