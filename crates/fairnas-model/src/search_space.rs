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
//!
//! **A space is a value.** [`SearchSpace`] serialises to its whole description (fixed parts and
//! every candidate block), so a checkpoint that stores it rebuilds any space, a user's own
//! included; a bare name (`"fairnas"`, `"nas-bench-macro"`) also reads back as that space.
//!
//! **Choice vectors as text** ([`format_choices`], [`parse_choice_list`]): one digit per layer
//! while every choice is below 10 (`"12012012"`), else comma-separated (`"12,0,3"`); both
//! forms parse.
//!
//! ```
//! use fairnas_model::search_space::SearchSpace;
//! let space = SearchSpace::nas_bench_macro();
//! let choices = space.parse_choices("12012012")?;
//! assert_eq!(space.format_choices(&choices), "12012012");
//! let spec = space.subnet(&choices)?;
//! assert_eq!(spec.blocks.len(), 8);
//! // The description round-trips through JSON, and a name reads back as the space.
//! let json = serde_json::to_string(&space).unwrap();
//! assert_eq!(serde_json::from_str::<SearchSpace>(&json).unwrap(), space);
//! assert_eq!(serde_json::from_str::<SearchSpace>("\"nas-bench-macro\"").unwrap(), space);
//! # Ok::<(), fairnas_model::search_space::SpaceError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use fairnas_ops::Activation;
use serde::{Deserialize, Serialize};

use crate::spec::{ArchSpec, BlockKind, BlockSpec, HeadSpec, Padding, SpecError, StemSpec};
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
    type Err = SpaceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let given = text.chars().count();
        if given != FAIRNAS_NUM_LAYERS {
            return Err(SpaceError::DigitCount { text: text.into(), given, layers: FAIRNAS_NUM_LAYERS });
        }
        let mut digits = [0u8; FAIRNAS_NUM_LAYERS];
        for ((layer, digit), d) in text.chars().enumerate().zip(&mut digits) {
            match digit.to_digit(10) {
                Some(c) if (c as usize) < FAIRNAS_CHOICES.len() => *d = c as u8,
                _ => return Err(SpaceError::Digit { text: text.into(), digit, layer }),
            }
        }
        Ok(Choices(digits))
    }
}

/// A weight-sharing search space: a fixed network (stem, fixed leading blocks, head, classifier)
/// around searchable layers, each a list of candidate blocks. A sub-network picks one candidate
/// per layer; its spec is an ordinary [`ArchSpec`], so everything that runs, costs or converts
/// an architecture works on sub-networks unchanged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchSpace {
    pub name: String,
    /// Stem, head, classifier, input size, BN eps; `blocks` holds the fixed blocks that come
    /// before the searchable layers (FairNAS's depthwise-separable block; none for NAS-Bench-Macro).
    pub base: ArchSpec,
    /// Per searchable layer, its candidates (each already carries the layer's stride and width).
    pub layers: Vec<Vec<BlockSpec>>,
}

/// Why a space, a choice vector or a sub-network is not usable; names the space and layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpaceError {
    #[error("unknown search space '{0}' (fairnas or nas-bench-macro)")]
    Unknown(String),
    #[error("'{token}' in '{text}' is not a choice number")]
    NotAChoice { text: String, token: String },
    #[error("{space}: {given} choices given for {layers} layers")]
    Length { space: String, given: usize, layers: usize },
    #[error("{space}: layer {layer} has choices 0..{last}, got {choice}")]
    Choice { space: String, layer: usize, last: usize, choice: usize },
    #[error("{space}: layer {layer} has no candidates")]
    EmptyLayer { space: String, layer: usize },
    #[error("{space}: more than {limit} sub-networks; sample architectures instead of listing them")]
    TooLarge { space: String, limit: usize },
    #[error("{space}: {reason}")]
    Invalid { space: String, reason: SpecError },
    #[error("choice vector '{text}' has {given} digits, the FairNAS space has {layers} layers")]
    DigitCount { text: String, given: usize, layers: usize },
    #[error(
        "choice vector '{text}': digit '{digit}' at layer {layer} is not a choice 0-5 \
         (0=k3e3 1=k3e6 2=k5e3 3=k5e6 4=k7e3 5=k7e6)"
    )]
    Digit { text: String, digit: char, layer: usize },
}

/// A choice vector as text: one digit per layer when every choice is below 10, else the
/// choices separated by commas. [`parse_choice_list`] reads both forms.
pub fn format_choices(choices: &[usize]) -> String {
    if choices.iter().all(|&c| c < 10) {
        choices.iter().map(|c| c.to_string()).collect()
    } else {
        choices.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// Reads a choice vector: digits (`"12012012"`) or comma-separated numbers (`"12,0,3"`).
pub fn parse_choice_list(text: &str) -> Result<Vec<usize>, SpaceError> {
    let text = text.trim();
    let bad = |token: &str| SpaceError::NotAChoice { text: text.to_string(), token: token.to_string() };
    if text.contains(',') {
        return text.split(',').map(|t| t.trim().parse::<usize>().map_err(|_| bad(t.trim()))).collect();
    }
    text.chars().map(|c| c.to_digit(10).map(|d| d as usize).ok_or_else(|| bad(&c.to_string()))).collect()
}

/// The serialised form: the whole description, or (read only) a bare name.
#[derive(Deserialize)]
#[serde(untagged)]
enum SpaceText {
    Name(String),
    Description { name: String, base: ArchSpec, layers: Vec<Vec<BlockSpec>> },
}

impl<'de> Deserialize<'de> for SearchSpace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match SpaceText::deserialize(d)? {
            SpaceText::Name(name) => SearchSpace::named(&name).map_err(serde::de::Error::custom),
            SpaceText::Description { name, base, layers } => {
                let space = SearchSpace { name, base, layers };
                space.validate().map_err(serde::de::Error::custom)?;
                Ok(space)
            }
        }
    }
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

    /// NAS-Bench-Macro (docs/FAIRNAS.md section 7): 32x32 CIFAR-10 input, stem conv 3x3/1 to 32, 8
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

    /// One of the two shipped spaces by name (`fairnas`, `nas-bench-macro`), as config files
    /// and the command line name them.
    pub fn named(name: &str) -> Result<Self, SpaceError> {
        match name {
            "fairnas" => Ok(Self::fairnas(FairnasVariant::PLAIN)),
            "nas-bench-macro" => Ok(Self::nas_bench_macro()),
            other => Err(SpaceError::Unknown(other.to_string())),
        }
    }

    /// Checks that every layer has candidates and every sub-network of the first candidates
    /// is a valid architecture (a description read from a file is checked before use).
    pub fn validate(&self) -> Result<(), SpaceError> {
        if let Some(layer) = self.layers.iter().position(Vec::is_empty) {
            return Err(SpaceError::EmptyLayer { space: self.name.clone(), layer });
        }
        let mut spec = self.base.clone();
        spec.blocks.extend(self.layers.iter().flatten().copied());
        spec.validate().map_err(|reason| SpaceError::Invalid { space: self.name.clone(), reason })
    }

    /// The text form of a choice vector ([`format_choices`]).
    pub fn format_choices(&self, choices: &[usize]) -> String {
        format_choices(choices)
    }

    /// Number of candidates of every searchable layer.
    pub fn choice_counts(&self) -> Vec<usize> {
        self.layers.iter().map(Vec::len).collect()
    }

    /// Parses a choice vector of this space: one digit per layer (`"4041500552122115153"`,
    /// `"12012012"`) or comma-separated numbers ([`parse_choice_list`]).
    pub fn parse_choices(&self, text: &str) -> Result<Vec<usize>, SpaceError> {
        let choices = parse_choice_list(text)?;
        self.check(&choices)?;
        Ok(choices)
    }

    /// Checks that `choices` names one valid candidate per layer.
    pub fn check(&self, choices: &[usize]) -> Result<(), SpaceError> {
        if choices.len() != self.layers.len() {
            return Err(SpaceError::Length {
                space: self.name.clone(),
                given: choices.len(),
                layers: self.layers.len(),
            });
        }
        for (layer, (&choice, candidates)) in choices.iter().zip(&self.layers).enumerate() {
            if choice >= candidates.len() {
                let last = candidates.len().saturating_sub(1);
                return Err(SpaceError::Choice { space: self.name.clone(), layer, last, choice });
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
    /// the same function: NAS-Bench-Macro's 6561 keys are 3969 architectures (docs/FAIRNAS.md
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
    pub fn canonical_architectures(&self, limit: usize) -> Result<Vec<Vec<usize>>, SpaceError> {
        let counts = self.choice_counts();
        let total = counts.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)).filter(|&t| t <= limit);
        let Some(total) = total else {
            return Err(SpaceError::TooLarge { space: self.name.clone(), limit });
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
    pub fn subnet(&self, choices: &[usize]) -> Result<ArchSpec, SpaceError> {
        self.check(choices)?;
        let mut spec = self.base.clone();
        spec.name = format!("{}-{}", self.name, format_choices(choices));
        spec.blocks.extend(choices.iter().zip(&self.layers).map(|(&c, candidates)| candidates[c]));
        spec.validate().map_err(|reason| SpaceError::Invalid { space: self.name.clone(), reason })?;
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
    fn choice_vectors_beyond_ten_candidates_use_commas() {
        assert_eq!(format_choices(&[1, 2, 0]), "120");
        assert_eq!(format_choices(&[12, 0, 3]), "12,0,3");
        assert_eq!(parse_choice_list("12,0,3").unwrap(), vec![12, 0, 3]);
        assert_eq!(parse_choice_list("120").unwrap(), vec![1, 2, 0]);
        let e = parse_choice_list("1,x,3").unwrap_err();
        assert_eq!(e, SpaceError::NotAChoice { text: "1,x,3".into(), token: "x".into() });
        // A space with 12 candidates in a layer: its vectors round-trip through text.
        let macro_space = SearchSpace::nas_bench_macro();
        let mut space = macro_space.clone();
        space.layers[0] = (0..12).map(|_| macro_space.layers[0][1]).collect();
        let choices = space.parse_choices("11,0,1,2,0,1,2,0").unwrap();
        assert_eq!(space.format_choices(&choices), "11,0,1,2,0,1,2,0");
        assert!(matches!(space.parse_choices("12,0,1,2,0,1,2,0"), Err(SpaceError::Choice { layer: 0, .. })));
    }

    #[test]
    fn descriptions_are_checked_when_read() {
        let mut space = SearchSpace::nas_bench_macro();
        space.layers[3].clear();
        let json = serde_json::to_string(&space).unwrap();
        let e = serde_json::from_str::<SearchSpace>(&json).unwrap_err().to_string();
        assert!(e.contains("layer 3 has no candidates"), "{e}");
        assert!(serde_json::from_str::<SearchSpace>("\"darts\"").unwrap_err().to_string().contains("darts"));
    }

    #[test]
    fn rejects_bad_vectors_naming_the_problem() {
        let message = |text: &str| text.parse::<Choices>().unwrap_err().to_string();
        assert!(message("123").contains("3 digits"));
        let e = message("4041500552122115163");
        assert!(e.contains("'6' at layer 17"), "{e}");
        assert!(message("40415005521221151x3").contains("'x'"));
    }
}
