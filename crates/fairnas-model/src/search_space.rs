//! The FairNAS search space: 19 searchable inverted-residual layers, 6 choices each.
//!
//! Fixed parts (shared by every architecture): stem conv 3x3/2 to 32 channels, a depthwise
//! separable block to 16 channels, and the 1x1 head to 1280 channels. The searchable layers have
//! fixed output channels and strides ([`FAIRNAS_LAYERS`]); each chooses a (kernel, expansion).
//!
//! **Choice order** (one digit per layer, layer 0 first): digit `d` means
//! `kernel = 3 + 2 * (d / 2)` and `expansion = if d % 2 == 0 { 3 } else { 6 }`:
//!
//! | digit | 0 | 1 | 2 | 3 | 4 | 5 |
//! |---|---|---|---|---|---|---|
//! | (k, e) | (3, 3) | (3, 6) | (5, 3) | (5, 6) | (7, 3) | (7, 6) |
//!
//! so digits grow with cost, and FairNAS-A is `4041500552122115153`.

use std::fmt;
use std::str::FromStr;

/// (output channels, stride) of the 19 searchable layers.
pub const FAIRNAS_LAYERS: [(usize, usize); 19] = [
    (32, 2),
    (32, 1),
    (40, 2),
    (40, 1),
    (40, 1),
    (40, 1),
    (80, 2),
    (80, 1),
    (80, 1),
    (80, 1),
    (96, 1),
    (96, 1),
    (96, 1),
    (96, 1),
    (192, 2),
    (192, 1),
    (192, 1),
    (192, 1),
    (320, 1),
];

/// (kernel, expansion) of each choice digit.
pub const FAIRNAS_CHOICES: [(usize, usize); 6] = [(3, 3), (3, 6), (5, 3), (5, 6), (7, 3), (7, 6)];

pub const FAIRNAS_NUM_LAYERS: usize = FAIRNAS_LAYERS.len();

/// An architecture of the FairNAS space as one choice digit per searchable layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Choices(pub [u8; FAIRNAS_NUM_LAYERS]);

impl Choices {
    /// The choice digit of a (kernel, expansion) pair, if it is in the space.
    pub fn digit_of(kernel: usize, expansion: usize) -> Option<u8> {
        FAIRNAS_CHOICES.iter().position(|&c| c == (kernel, expansion)).map(|d| d as u8)
    }

    /// Builds the choice vector from per-layer kernels and expansions.
    pub fn from_kernels_and_expansions(kernels: &[usize; 19], expansions: &[usize; 19]) -> Option<Self> {
        let mut digits = [0u8; FAIRNAS_NUM_LAYERS];
        for i in 0..FAIRNAS_NUM_LAYERS {
            digits[i] = Self::digit_of(kernels[i], expansions[i])?;
        }
        Some(Choices(digits))
    }

    /// (kernel, expansion) of layer `i`.
    pub fn layer(&self, i: usize) -> (usize, usize) {
        FAIRNAS_CHOICES[self.0[i] as usize]
    }
}

impl fmt::Display for Choices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in self.0 {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Choices {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.chars().count() != FAIRNAS_NUM_LAYERS {
            return Err(format!(
                "choice vector '{s}' has {} digits, the FairNAS space has {FAIRNAS_NUM_LAYERS} layers",
                s.chars().count()
            ));
        }
        let mut digits = [0u8; FAIRNAS_NUM_LAYERS];
        for (i, ch) in s.chars().enumerate() {
            match ch.to_digit(10) {
                Some(d) if (d as usize) < FAIRNAS_CHOICES.len() => digits[i] = d as u8,
                _ => {
                    return Err(format!(
                        "choice vector '{s}': digit '{ch}' at layer {i} is not a choice 0-5 \
                         (0=k3e3 1=k3e6 2=k5e3 3=k5e6 4=k7e3 5=k7e6)"
                    ))
                }
            }
        }
        Ok(Choices(digits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_round_trip_and_follow_the_documented_order() {
        for (d, &(k, e)) in FAIRNAS_CHOICES.iter().enumerate() {
            assert_eq!(k, 3 + 2 * (d / 2));
            assert_eq!(e, if d % 2 == 0 { 3 } else { 6 });
            assert_eq!(Choices::digit_of(k, e), Some(d as u8));
        }
        let c: Choices = "4041500552122115153".parse().unwrap();
        assert_eq!(c.to_string(), "4041500552122115153");
        assert_eq!(c.layer(0), (7, 3));
        assert_eq!(c.layer(18), (5, 6));
    }

    #[test]
    fn rejects_bad_vectors_naming_the_problem() {
        assert!("123".parse::<Choices>().unwrap_err().contains("3 digits"));
        let e = "4041500552122115163".parse::<Choices>().unwrap_err();
        assert!(e.contains("'6' at layer 17"), "{e}");
        assert!("40415005521221151x3".parse::<Choices>().unwrap_err().contains("'x'"));
    }
}
