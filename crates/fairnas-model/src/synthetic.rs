//! Deterministic synthetic weights, reproducible bit for bit in any language.
//!
//! Golden-output fixtures, CLI tests and benchmarks need full-size weights without committing
//! megabytes of random numbers. Every tensor is instead a pure function of (seed, canonical name,
//! shape), defined with integer hashing and exactly-rounded f64 arithmetic so that the PyTorch
//! fixture generator (`fixtures/generate_parity.py`) reproduces the same f32 values:
//!
//! - `key = fnv1a64(name) XOR seed * 0x9E3779B97F4A7C15` (wrapping);
//! - element `i`: `x = splitmix64_mix(key + (i + 1) * 0x9E3779B97F4A7C15)`, `u = (x >> 40) / 2^24`
//!   (a 24-bit uniform in [0, 1));
//! - value by name: `*.running_var` and `*.bn.weight` -> `0.5 + u`; `*.running_mean` and any
//!   `*.bias` -> `(u - 0.5) * 0.04`; any other weight -> `(2u - 1) * sqrt(5 / fan_in)`
//!   (`fan_in = numel / shape[0]`); computed in f64, rounded once to f32.
//!
//! The constants were chosen so that, without data-calibrated BN statistics, activations neither
//! explode nor vanish through 20 blocks: logits stay O(1), depend on the input (the two fixture
//! photos get different logits), and PyTorch's own f32-vs-f64 error stays below 4e-6 relative,
//! so a 1e-4 parity tolerance measures our kernels and not the conditioning of the weights.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};

use crate::network::Network;
use crate::spec::ArchSpec;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The values of one synthetic tensor.
pub fn synthetic_values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let key = fnv1a64(name.as_bytes()) ^ seed.wrapping_mul(GOLDEN);
    let uniform = (0..numel).map(move |i| {
        let x = splitmix64_mix(key.wrapping_add((i as u64 + 1).wrapping_mul(GOLDEN)));
        (x >> 40) as f64 / 16_777_216.0
    });
    let map: Box<dyn Fn(f64) -> f64> = if name.ends_with(".running_var") || name.ends_with(".bn.weight") {
        Box::new(|u| 0.5 + u)
    } else if name.ends_with(".running_mean") || name.ends_with(".bias") {
        Box::new(|u| (u - 0.5) * 0.04)
    } else {
        let fan_in = (numel / shape.first().copied().unwrap_or(1).max(1)).max(1);
        let bound = (5.0 / fan_in as f64).sqrt();
        Box::new(move |u| (2.0 * u - 1.0) * bound)
    };
    uniform.map(|u| map(u) as f32).collect()
}

/// Every tensor the network for `spec` loads, filled with synthetic values, by canonical name.
pub fn synthetic_weights(spec: &ArchSpec, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
    Network::tensor_manifest(spec)?
        .into_iter()
        .map(|(name, shape)| {
            let t = Tensor::from_vec(synthetic_values(&name, &shape, seed), shape, device)?;
            Ok((name, t))
        })
        .collect()
}

/// The network for `spec` with synthetic weights (generated on the CPU in f32, then converted to
/// `dtype` on `device`): what benchmarks and device checks run when no checkpoint is given.
pub fn synthetic_network(
    spec: &ArchSpec,
    seed: u64,
    dtype: candle_core::DType,
    device: &Device,
) -> Result<Network> {
    let weights = synthetic_weights(spec, seed, &Device::Cpu)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?.to_device(device)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Network::load(spec, candle_nn::VarBuilder::from_tensors(weights, dtype, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_pinned() {
        // Pinned hash: generate_parity.py asserts the same value for the same name.
        assert_eq!(fnv1a64(b"stem.conv.weight"), 0xe244_e2a6_a97c_f0ba, "fnv pinned");
        let v = synthetic_values("stem.bn.running_var", &[3], 0);
        assert!(v.iter().all(|x| (0.5..1.5).contains(x)));
        let w = synthetic_values("stem.conv.weight", &[32, 3, 3, 3], 7);
        let bound = (5.0f64 / 27.0).sqrt() as f32;
        assert!(w.iter().all(|x| x.abs() <= bound));
        assert_ne!(w, synthetic_values("stem.conv.weight", &[32, 3, 3, 3], 8));
        assert_eq!(w, synthetic_values("stem.conv.weight", &[32, 3, 3, 3], 7));
    }
}
