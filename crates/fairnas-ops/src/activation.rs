//! The activations of the MBConv family, shared by the ops (which fuse them) and the model specs
//! (which name them).

use std::fmt;
use std::str::FromStr;

/// Runs `$body` with `$f` bound to the activation's function for one concrete variant, so that
/// the loops in `$body` see a branch-free function and vectorise (a `match` per element inside
/// the loop keeps every element scalar: LLVM does not unswitch it reliably).
macro_rules! with_activation {
    ($activation:expr, $t:ty, $f:ident => $body:expr) => {
        match $activation {
            $crate::Activation::Identity => {
                let $f = |z: $t| z;
                $body
            }
            $crate::Activation::Relu => {
                let $f = |z: $t| $crate::Activation::Relu.apply(z);
                $body
            }
            $crate::Activation::Relu6 => {
                let $f = |z: $t| $crate::Activation::Relu6.apply(z);
                $body
            }
            $crate::Activation::Swish => {
                let $f = |z: $t| $crate::Activation::Swish.apply(z);
                $body
            }
            $crate::Activation::Sigmoid => {
                let $f = |z: $t| $crate::Activation::Sigmoid.apply(z);
                $body
            }
        }
    };
}
pub(crate) use with_activation;

/// A pointwise activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`, MobileNetV2's choice and the plain FairNAS models'.
    Relu6,
    /// `x * sigmoid(x)` (a.k.a. SiLU), used by the SE FairNAS variants.
    Swish,
    Sigmoid,
}

impl Activation {
    /// The activation of one value, in any float precision (the kernels' scalar epilogues).
    /// NaN propagates, as in PyTorch, so a diverging network is never masked.
    #[inline(always)]
    pub fn apply<F: num_traits::Float>(self, x: F) -> F {
        let (zero, one, six) = (F::zero(), F::one(), F::from(6.0).unwrap_or_else(F::one));
        match self {
            Activation::Identity => x,
            Activation::Relu if x.is_nan() => x,
            Activation::Relu => x.max(zero),
            Activation::Relu6 if x.is_nan() => x,
            Activation::Relu6 => x.max(zero).min(six),
            Activation::Swish => x / (one + exp(-x)),
            Activation::Sigmoid => one / (one + exp(-x)),
        }
    }

    /// The derivative `f'(x)` of one value (the fused backward kernels), in any float precision.
    /// At the kinks it takes PyTorch's one-sided choice: ReLU'(0) = 0, ReLU6'(0) = ReLU6'(6) = 0.
    #[inline(always)]
    pub fn derivative_at<F: num_traits::Float>(self, x: F) -> F {
        let (zero, one, six) = (F::zero(), F::one(), F::from(6.0).unwrap_or_else(F::one));
        let step = |on: bool| if on { one } else { zero };
        match self {
            Activation::Identity => one,
            Activation::Relu => step(x > zero),
            Activation::Relu6 => step(x > zero && x < six),
            Activation::Swish => {
                let s = one / (one + exp(-x));
                s * (one + x * (one - s))
            }
            Activation::Sigmoid => {
                let s = one / (one + exp(-x));
                s * (one - s)
            }
        }
    }

    /// The short name used in block strings (`nre`, `nr6`, `nsw` without the `n`) and on the CLI.
    pub fn short_name(self) -> &'static str {
        match self {
            Activation::Identity => "id",
            Activation::Relu => "re",
            Activation::Relu6 => "r6",
            Activation::Swish => "sw",
            Activation::Sigmoid => "sg",
        }
    }

    /// Applies the activation to a candle tensor with candle's own element-wise ops.
    pub fn forward(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Identity => Ok(x.clone()),
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
            Activation::Swish => x.silu(),
            Activation::Sigmoid => candle_nn_free_sigmoid(x),
        }
    }
}

/// `e^x` for the activations: [`exp_f32`] in f32 (the kernels' loops vectorise through it;
/// the standard library's `expf` is a call per element), `Float::exp` otherwise.
#[inline(always)]
fn exp<F: num_traits::Float>(x: F) -> F {
    if std::mem::size_of::<F>() == 4 {
        // F is f32 here (the only 4-byte Float): both conversions are the identity.
        if let Some(v) = x.to_f32() {
            return F::from(exp_f32(v)).unwrap_or_else(F::nan);
        }
    }
    x.exp()
}

/// The constants of [`exp_f32`], shared with the AVX-512 tile kernel's lane-wise copy of it
/// (`pointwise_tile::exp`), which must give the same bits.
pub(crate) mod exp_f32_constants {
    /// The input range kept (see [`super::exp_f32`]).
    pub const CLAMP: (f32, f32) = (-87.0, 88.0);
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (|v| < 2^22), without
    /// the SSE4.1 rounding instruction the baseline build lacks.
    pub const ROUND: f32 = 12_582_912.0;
    /// Cephes' polynomial for `(e^r - 1 - r) / r^2`, highest degree first (Horner).
    pub const POLY: [f32; 6] =
        [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
}

/// `e^x` in f32 with only arithmetic, comparisons and bit casts, so that a loop over it
/// vectorises: `x = n ln 2 + r` (Cody-Waite, |r| <= ln 2 / 2), Cephes' degree-6 polynomial for
/// `e^r`, and `2^n` built in the exponent bits. Relative error below 2e-7 (tested against f64)
/// for `x` in [-87, 88]; outside, `x` is clamped there first (`e^-87` ~ 1.6e-38 stands in for
/// smaller values, `e^88` ~ 1.7e38 for larger ones: both limits of the activations are kept).
/// NaN gives NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    use exp_f32_constants::*;
    let x = x.clamp(CLAMP.0, CLAMP.1);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = POLY[0];
    for &c in &POLY[1..] {
        p = p * r + c;
    }
    let er = p * (r * r) + r + 1.0;
    // n is in [-126, 127] after the clamp: a normal power of two.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    er * two_n
}

impl Activation {
    /// The derivative `f'(x)` element-wise, as a tensor (for hand-written backward passes).
    pub fn derivative(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let dtype = x.dtype();
        match self {
            Activation::Identity => x.ones_like(),
            Activation::Relu => x.gt(0.0)?.to_dtype(dtype),
            Activation::Relu6 => x.gt(0.0)?.to_dtype(dtype)? * x.lt(6.0)?.to_dtype(dtype)?,
            Activation::Swish => {
                let s = candle_nn_free_sigmoid(x)?;
                // d/dx x*s(x) = s * (1 + x * (1 - s))
                let one_minus = s.affine(-1.0, 1.0)?;
                s.mul(&((x * one_minus)? + 1.0)?)
            }
            Activation::Sigmoid => {
                let s = candle_nn_free_sigmoid(x)?;
                s.mul(&s.affine(-1.0, 1.0)?)
            }
        }
    }
}

/// `1 / (1 + exp(-x))` from candle-core primitives (the fused sigmoid lives in candle-nn, which
/// this crate does not depend on outside tests).
fn candle_nn_free_sigmoid(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Swish => "swish",
            Activation::Sigmoid => "sigmoid",
        })
    }
}

impl FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "id" | "identity" => Activation::Identity,
            "re" | "relu" => Activation::Relu,
            "r6" | "relu6" => Activation::Relu6,
            "sw" | "swish" | "silu" => Activation::Swish,
            "sg" | "sigmoid" => Activation::Sigmoid,
            other => {
                return Err(format!(
                    "unknown activation '{other}' (expected re/relu, r6/relu6, sw/swish, sg/sigmoid, id)"
                ))
            }
        })
    }
}

/// Serialised by its display name (`"relu6"`), for JSON reports and search-space descriptions.
impl serde::Serialize for Activation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read back from any name [`FromStr`] accepts, so descriptions round-trip.
impl<'de> serde::Deserialize<'de> for Activation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_values() {
        assert_eq!(Activation::Relu6.apply(7.5), 6.0);
        assert_eq!(Activation::Relu6.apply(-1.0), 0.0);
        assert_eq!(Activation::Relu.apply(-3.0), 0.0);
        assert!((Activation::Swish.apply(1.0) - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-15);
        assert!((Activation::Sigmoid.apply(0.0f32) - 0.5).abs() < 1e-7);
        for a in [Activation::Relu, Activation::Relu6, Activation::Swish, Activation::Sigmoid] {
            assert!(a.apply(f32::NAN).is_nan(), "{a} must propagate NaN");
        }
    }

    /// exp_f32 against f64's exp on a dense grid over its range, at the clamp limits, and on
    /// NaN; the activations built on it against their f64 values.
    #[test]
    fn exp_f32_is_within_2e_7_relative() {
        let mut worst = 0f64;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.0 + 175.0 * i as f64 / steps as f64;
            let x32 = x as f32;
            let want = (x32 as f64).exp();
            let err = ((exp_f32(x32) as f64) - want).abs() / want;
            worst = worst.max(err);
        }
        assert!(worst < 2e-7, "max relative error {worst:e}");
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e4) > 0.0 && exp_f32(-1e4) < 1e-37);
        assert!(exp_f32(1e4).is_finite() && exp_f32(1e4) > 1e38);
        for x in [-100f32, -20.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0, 100.0] {
            let xf = x as f64;
            let swish = xf / (1.0 + (-xf).exp());
            let sigmoid = 1.0 / (1.0 + (-xf).exp());
            let got = (Activation::Swish.apply(x) as f64, Activation::Sigmoid.apply(x) as f64);
            // Beyond the clamp (x = -100) the tiny values differ absolutely, by < 1e-35.
            assert!((got.0 - swish).abs() <= 3e-7 * swish.abs() + 1e-35, "swish({x}): {} vs {swish}", got.0);
            assert!(
                (got.1 - sigmoid).abs() <= 3e-7 * sigmoid + 1e-35,
                "sigmoid({x}): {} vs {sigmoid}",
                got.1
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for a in [
            Activation::Identity,
            Activation::Relu,
            Activation::Relu6,
            Activation::Swish,
            Activation::Sigmoid,
        ] {
            assert_eq!(a.short_name().parse::<Activation>().unwrap(), a);
            assert_eq!(a.to_string().parse::<Activation>().unwrap(), a);
        }
        assert!("gelu".parse::<Activation>().unwrap_err().contains("gelu"));
    }

    #[test]
    fn tensor_forward_matches_scalar() {
        let xs = [-7.0f32, -1.0, -0.1, 0.0, 0.3, 2.0, 6.5];
        let t = candle_core::Tensor::new(&xs, &candle_core::Device::Cpu).unwrap();
        for a in [
            Activation::Identity,
            Activation::Relu,
            Activation::Relu6,
            Activation::Swish,
            Activation::Sigmoid,
        ] {
            let got = a.forward(&t).unwrap().to_vec1::<f32>().unwrap();
            for (g, x) in got.iter().zip(xs) {
                let want = a.apply(x);
                assert!((g - want).abs() <= 1e-6 * want.abs().max(1.0), "{a}: {g} vs {want}");
            }
        }
    }
}
