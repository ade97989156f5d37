//! Search spaces: the generic description ([`SearchSpace`]: fixed parts + per-layer candidate
//! lists) with the two that ship (FairNAS, NAS-Bench-Macro), and the FairNAS choice vector.
//!
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

use fairnas_ops::Activation;

use crate::spec::{ArchSpec, BlockKind, BlockSpec, HeadSpec, Padding, StemSpec};
use crate::zoo::{fairnas_spec, FairnasVariant};

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

/// A weight-sharing search space: a fixed network (stem, fixed leading blocks, head, classifier)
/// around searchable layers, each a list of candidate blocks. A sub-network picks one candidate
/// per layer; its spec is an ordinary [`ArchSpec`], so everything that runs, costs or converts
/// an architecture works on sub-networks unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    pub name: String,
    /// Stem, head, classifier, input size, BN eps; `blocks` holds the fixed blocks that come
    /// before the searchable layers (FairNAS's depthwise-separable block; none for NAS-Bench-Macro).
    pub base: ArchSpec,
    /// Per searchable layer, its candidates (each already carries the layer's stride and width).
    pub layers: Vec<Vec<BlockSpec>>,
}

/// NAS-Bench-Macro's layers: 3 stages of [2, 3, 3] layers, the first of each with stride 2 and
/// twice the channels (32 -> 64 -> 128 -> 256).
const MACRO_LAYERS: [(usize, usize); 8] =
    [(64, 2), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1)];

impl SearchSpace {
    /// The FairNAS space: 19 layers x 6 (kernel, expansion) choices in digit order, on the
    /// plain, SE or transfer family of [`crate::zoo::fairnas_spec`].
    pub fn fairnas(variant: FairnasVariant) -> Self {
        let mut base = fairnas_spec("fairnas-supernet", &Choices([0; FAIRNAS_NUM_LAYERS]), variant);
        let template = base.blocks[1];
        base.blocks.truncate(1);
        let layers = FAIRNAS_LAYERS
            .iter()
            .map(|&(out_channels, stride)| {
                FAIRNAS_CHOICES
                    .iter()
                    .map(|&(kernel, expansion)| BlockSpec {
                        kernel,
                        expansion,
                        out_channels,
                        stride,
                        ..template
                    })
                    .collect()
            })
            .collect();
        SearchSpace { name: "fairnas".into(), base, layers }
    }

    /// NAS-Bench-Macro (FAIRNAS.md section 7): 32x32 CIFAR-10 input, stem conv 3x3/1 to 32, 8
    /// layers with choices 0 = skip (1x1 conv + BN where shape changes), 1 = MBConv e3 k3,
    /// 2 = MBConv e6 k5, ReLU throughout, no SE; head 1x1 to 1280, Linear(1280, 10).
    pub fn nas_bench_macro() -> Self {
        let block = |kind, kernel, expansion, out_channels, stride| BlockSpec {
            kind,
            kernel,
            stride,
            expansion,
            out_channels,
            se: None,
            activation: Activation::Relu,
            padding: Padding::Symmetric,
            skip: true,
        };
        let layers = MACRO_LAYERS
            .iter()
            .map(|&(c, s)| {
                vec![
                    block(BlockKind::Skip, 1, 1, c, s),
                    block(BlockKind::InvertedResidual, 3, 3, c, s),
                    block(BlockKind::InvertedResidual, 5, 6, c, s),
                ]
            })
            .collect();
        let base = ArchSpec {
            name: "nas-bench-macro".into(),
            in_channels: 3,
            input_size: 32,
            stem: StemSpec { channels: 32, kernel: 3, stride: 1, activation: Activation::Relu },
            blocks: Vec::new(),
            head: HeadSpec { channels: 1280, activation: Activation::Relu },
            dropout: 0.0,
            classes: 10,
            bn_eps: 1e-5,
            stem_padding: Padding::Symmetric,
            default_activation: Activation::Relu,
        };
        SearchSpace { name: "nas-bench-macro".into(), base, layers }
    }

    /// A space with exactly one candidate per layer: every block of `spec` becomes a layer, so
    /// the supernet trainer trains the stand-alone network `spec` with the all-zero path, and
    /// the sub-network's weights come out under `spec`'s canonical block names.
    pub fn single(spec: &ArchSpec) -> Self {
        let mut base = spec.clone();
        let layers = std::mem::take(&mut base.blocks).into_iter().map(|b| vec![b]).collect();
        SearchSpace { name: spec.name.clone(), base, layers }
    }

    /// Looks a space up by its CLI name.
    pub fn named(name: &str) -> Result<Self, String> {
        match name {
            "fairnas" => Ok(Self::fairnas(FairnasVariant::PLAIN)),
            "nas-bench-macro" => Ok(Self::nas_bench_macro()),
            other => Err(format!("unknown search space '{other}' (fairnas or nas-bench-macro)")),
        }
    }

    /// Number of candidates of every searchable layer.
    pub fn choice_counts(&self) -> Vec<usize> {
        self.layers.iter().map(Vec::len).collect()
    }

    /// Parses one digit per layer (`"4041500552122115153"`, `"12012012"`).
    pub fn parse_choices(&self, digits: &str) -> Result<Vec<usize>, String> {
        let choices: Vec<usize> = digits
            .chars()
            .map(|c| {
                c.to_digit(10)
                    .map(|d| d as usize)
                    .ok_or_else(|| format!("'{c}' in '{digits}' is not a digit"))
            })
            .collect::<Result<_, _>>()?;
        self.check(&choices)?;
        Ok(choices)
    }

    /// Checks that `choices` names one valid candidate per layer.
    pub fn check(&self, choices: &[usize]) -> Result<(), String> {
        if choices.len() != self.layers.len() {
            return Err(format!(
                "{}: {} choices given for {} layers",
                self.name,
                choices.len(),
                self.layers.len()
            ));
        }
        for (l, (&c, candidates)) in choices.iter().zip(&self.layers).enumerate() {
            if c >= candidates.len() {
                return Err(format!(
                    "{}: layer {l} has choices 0..{}, got {c}",
                    self.name,
                    candidates.len() - 1
                ));
            }
        }
        Ok(())
    }

    /// Input channels of every searchable layer.
    pub fn layer_input_channels(&self) -> Vec<usize> {
        let mut channels = self.base.blocks.last().map_or(self.base.stem.channels, |b| b.out_channels);
        self.layers
            .iter()
            .map(|candidates| {
                let input = channels;
                channels = candidates.first().map_or(channels, |c| c.out_channels);
                input
            })
            .collect()
    }

    /// The canonical form of a sub-network. A pure identity (a skip that neither strides nor
    /// projects) commutes with every shape-preserving layer next to it, so sub-networks that
    /// differ only in where their identities sit inside a run of shape-preserving layers are
    /// the same function: NAS-Bench-Macro's 6561 keys are 3969 architectures (FAIRNAS.md
    /// section 7). The canonical form moves those identities to the end of their run; ranking
    /// and search score one form per architecture, so duplicates neither tie nor count twice.
    pub fn canonical(&self, choices: &[usize]) -> Vec<usize> {
        let inputs = self.layer_input_channels();
        let preserves_shape =
            |l: usize| self.layers[l].iter().all(|b| b.stride == 1 && b.out_channels == inputs[l]);
        let is_identity = |l: usize, c: usize| {
            let b = &self.layers[l][c];
            b.kind == BlockKind::Skip && !b.skip_projects(inputs[l])
        };
        let mut out = choices.to_vec();
        let mut start = 0;
        while start < out.len() {
            if !preserves_shape(start) {
                start += 1;
                continue;
            }
            let mut end = start;
            while end < out.len() && preserves_shape(end) {
                end += 1;
            }
            // Stable: non-identities keep their order, identities follow.
            let mut kept: Vec<usize> = (start..end).collect();
            kept.sort_by_key(|&l| is_identity(l, out[l]));
            let kept: Vec<usize> = kept.into_iter().map(|l| out[l]).collect();
            out[start..end].copy_from_slice(&kept);
            start = end;
        }
        out
    }

    /// Every distinct architecture of the space as its canonical form, in lexicographic order.
    /// Refuses spaces with more than `limit` sub-networks (FairNAS's 6^19 cannot be listed).
    pub fn canonical_architectures(&self, limit: usize) -> Result<Vec<Vec<usize>>, String> {
        let counts = self.choice_counts();
        let total = counts.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)).filter(|&t| t <= limit);
        let Some(total) = total else {
            return Err(format!(
                "{}: more than {limit} sub-networks; sample architectures instead of listing them",
                self.name
            ));
        };
        let mut seen = std::collections::BTreeSet::new();
        for index in 0..total {
            let mut rest = index;
            let mut choices = vec![0; counts.len()];
            for l in (0..counts.len()).rev() {
                choices[l] = rest % counts[l];
                rest /= counts[l];
            }
            seen.insert(self.canonical(&choices));
        }
        Ok(seen.into_iter().collect())
    }

    /// The spec of one sub-network.
    pub fn subnet(&self, choices: &[usize]) -> Result<ArchSpec, String> {
        self.check(choices)?;
        let mut spec = self.base.clone();
        spec.name = format!("{}-{}", self.name, choices.iter().map(|c| c.to_string()).collect::<String>());
        spec.blocks.extend(choices.iter().zip(&self.layers).map(|(&c, candidates)| candidates[c]));
        spec.validate()?;
        Ok(spec)
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
    fn nas_bench_macro_has_3969_architectures() {
        let space = SearchSpace::nas_bench_macro();
        let all = space.canonical_architectures(10_000).unwrap();
        assert_eq!(all.len(), 3969);
        // Stage 2 is layers 2-4: its strided first layer stays, identities behind layer 3
        // move behind layer 4; stage 1's second layer has nothing to swap with.
        assert_eq!(space.canonical(&[1, 0, 2, 0, 1, 0, 0, 2]), vec![1, 0, 2, 1, 0, 0, 2, 0]);
        assert_eq!(space.canonical(&[0, 0, 0, 0, 0, 0, 0, 0]), vec![0; 8]);
        assert!(all.iter().all(|a| &space.canonical(a) == a));
        assert!(SearchSpace::fairnas(FairnasVariant::PLAIN).canonical_architectures(1 << 20).is_err());
    }

    #[test]
    fn rejects_bad_vectors_naming_the_problem() {
        assert!("123".parse::<Choices>().unwrap_err().contains("3 digits"));
        let e = "4041500552122115163".parse::<Choices>().unwrap_err();
        assert!(e.contains("'6' at layer 17"), "{e}");
        assert!("40415005521221151x3".parse::<Choices>().unwrap_err().contains("'x'"));
    }
}
