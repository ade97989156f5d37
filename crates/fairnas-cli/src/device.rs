//! `--device` for the commands that run a network: `cpu`, or `cuda` / `cuda:N` in a build with
//! the `cuda` feature (`cargo xtask cuda-build`). A CPU build refuses cuda with that advice and
//! never touches any CUDA library.

use anyhow::{bail, Result};
use candle_core::Device;

/// The device a `--device` value names.
pub fn parse_device(name: &str) -> Result<Device> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("--device {other}: expected cpu, cuda or cuda:N"),
        },
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    use anyhow::Context;
    Device::new_cuda(ordinal).with_context(|| format!("--device cuda:{ordinal}: cannot open the GPU"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    bail!(
        "--device cuda:{ordinal}: this build has no CUDA support (build it with `cargo xtask cuda-build`, \
         which enables the `cuda` feature)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_bad_ones_named() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let err = parse_device("gpu").unwrap_err().to_string();
        assert!(err.contains("--device gpu"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_cuda_with_advice() {
        let err = parse_device("cuda").unwrap_err().to_string();
        assert!(err.contains("cargo xtask cuda-build"), "{err}");
    }
}
