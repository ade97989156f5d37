//! The activations of the MBConv family, shared by the ops (which fuse them) and the model specs
//! (which name them).

use std::fmt;
use std::str::FromStr;

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
            Activation::Swish => x / (one + (-x).exp()),
            Activation::Sigmoid => one / (one + (-x).exp()),
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
                let s = one / (one + (-x).exp());
                s * (one + x * (one - s))
            }
            Activation::Sigmoid => {
                let s = one / (one + (-x).exp());
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

/// Serialised by its display name (`"relu6"`), for JSON reports.
impl serde::Serialize for Activation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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
