//! Source checkpoint layouts and their mapping onto the canonical weight names of
//! [`crate::network`]. Every known layout has its table here, as one `match` over the dotted
//! name's segments, so the whole correspondence can be read (and checked against docs/FAIRNAS.md
//! section 3) in one place.

use std::collections::{HashMap, HashSet};

use crate::network::Network;
use crate::spec::ArchSpec;

use super::container::TorchTensor;

/// The weight-naming conventions a checkpoint may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceLayout {
    /// The released plain FairNAS-A/B/C (`stem.0`, `separable_conv`, `mb_module.<i>.conv1`...).
    Fairnas,
    /// The released SE and CIFAR-10 transfer models (timm names, stage-grouped `blocks.<s>.<j>`).
    FairnasSe,
    /// efficientnet_pytorch (`_conv_stem`, `_blocks.<i>._expand_conv`...), e.g. Lite0.
    EfficientnetPytorch,
    /// This project's own names (checkpoints written by fairnas-rs or converted earlier).
    Canonical,
}

impl SourceLayout {
    pub const ALL: [SourceLayout; 4] = [
        SourceLayout::Fairnas,
        SourceLayout::FairnasSe,
        SourceLayout::EfficientnetPytorch,
        SourceLayout::Canonical,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SourceLayout::Fairnas => "fairnas",
            SourceLayout::FairnasSe => "fairnas-se",
            SourceLayout::EfficientnetPytorch => "efficientnet-pytorch",
            SourceLayout::Canonical => "canonical",
        }
    }

    /// Recognises a layout from the names of a state dict (after `module.` stripping).
    pub fn detect<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<SourceLayout> {
        names.find_map(|name| match name {
            "stem.0.weight" => Some(SourceLayout::Fairnas),
            "conv_stem.weight" => Some(SourceLayout::FairnasSe),
            "_conv_stem.weight" => Some(SourceLayout::EfficientnetPytorch),
            "stem.conv.weight" => Some(SourceLayout::Canonical),
            _ => None,
        })
    }

    /// The canonical name of a source tensor, or None when the layout has no such tensor.
    pub fn canonical_name(self, name: &str) -> Option<String> {
        let segments: Vec<&str> = name.split('.').collect();
        match self {
            SourceLayout::Fairnas => fairnas_plain(&segments),
            SourceLayout::FairnasSe => fairnas_se(&segments),
            SourceLayout::EfficientnetPytorch => efficientnet_pytorch(&segments),
            SourceLayout::Canonical => Some(name.to_string()),
        }
    }
}

impl std::fmt::Display for SourceLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SourceLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SourceLayout::ALL.into_iter().find(|l| l.name() == s).ok_or_else(|| {
            format!(
                "unknown layout '{s}' (expected auto or one of: {})",
                SourceLayout::ALL.map(|l| l.name()).join(", ")
            )
        })
    }
}

/// The four tensors of a BatchNorm (num_batches_tracked is dropped before mapping).
fn is_bn_tensor(t: &str) -> bool {
    matches!(t, "weight" | "bias" | "running_mean" | "running_var")
}

fn conv(prefix: &str, t: &str) -> Option<String> {
    (t == "weight").then(|| format!("{prefix}.conv.weight"))
}

fn bn(prefix: &str, t: &str) -> Option<String> {
    is_bn_tensor(t).then(|| format!("{prefix}.bn.{t}"))
}

fn linear(prefix: &str, t: &str) -> Option<String> {
    matches!(t, "weight" | "bias").then(|| format!("{prefix}.{t}"))
}

/// Plain FairNAS-A/B/C: `stem = Sequential(conv, BN, ReLU6)`, `separable_conv = Sequential(dw,
/// BN, ReLU6, pw, BN)`, `mb_module.<i>` with conv1/bn1 (expand), conv2/bn2 (depthwise),
/// conv3/bn3 (project), `conv_before_pooling = Sequential(conv, BN, ReLU6)`, `classifier =
/// Sequential(Dropout, Linear)`.
fn fairnas_plain(s: &[&str]) -> Option<String> {
    match *s {
        ["stem", "0", t] => conv("stem", t),
        ["stem", "1", t] => bn("stem", t),
        ["separable_conv", "0", t] => conv("blocks.0.dw", t),
        ["separable_conv", "1", t] => bn("blocks.0.dw", t),
        ["separable_conv", "3", t] => conv("blocks.0.project", t),
        ["separable_conv", "4", t] => bn("blocks.0.project", t),
        ["mb_module", i, part, t] => {
            let block = format!("blocks.{}", index(i)? + 1);
            match part {
                "conv1" => conv(&format!("{block}.expand"), t),
                "bn1" => bn(&format!("{block}.expand"), t),
                "conv2" => conv(&format!("{block}.dw"), t),
                "bn2" => bn(&format!("{block}.dw"), t),
                "conv3" => conv(&format!("{block}.project"), t),
                "bn3" => bn(&format!("{block}.project"), t),
                _ => None,
            }
        }
        ["conv_before_pooling", "0", t] => conv("head", t),
        ["conv_before_pooling", "1", t] => bn("head", t),
        ["classifier", "1", t] => linear("classifier", t),
        _ => None,
    }
}

/// First searchable layer of each timm stage of the FairNAS-SE models (stage 0 is the fixed
/// depthwise-separable block): stages hold 1, 1, 4, 8 and 5 of the 19 layers.
const SE_STAGE_START: [usize; 6] = [0, 0, 1, 2, 6, 14];
const SE_STAGE_LEN: [usize; 6] = [1, 1, 1, 4, 8, 5];

/// FairNAS-SE and transfer (timm naming): `conv_stem`, `bn1`, `blocks.0.0` = the separable
/// block (`conv_dw`, `bn1`, `conv_pw`, `bn2`), `blocks.<s>.<j>` = searchable layer
/// SE_STAGE_START[s] + j (`conv_pw`/`bn1` expand, `conv_dw`/`bn2` depthwise,
/// `se.conv_reduce`/`se.conv_expand`, `conv_pwl`/`bn3` project), `conv_head`, `bn2`, and
/// `classifier` (ImageNet) or `classifier.1` (transfer: Sequential(Dropout, Linear)).
fn fairnas_se(s: &[&str]) -> Option<String> {
    match *s {
        ["conv_stem", t] => conv("stem", t),
        ["bn1", t] => bn("stem", t),
        ["blocks", "0", "0", part, t] => match part {
            "conv_dw" => conv("blocks.0.dw", t),
            "bn1" => bn("blocks.0.dw", t),
            "conv_pw" => conv("blocks.0.project", t),
            "bn2" => bn("blocks.0.project", t),
            _ => None,
        },
        ["blocks", stage, j, ref rest @ ..] => {
            let (stage, j) = (index(stage)?, index(j)?);
            if stage == 0 || stage >= SE_STAGE_START.len() || j >= SE_STAGE_LEN[stage] {
                return None;
            }
            let block = format!("blocks.{}", SE_STAGE_START[stage] + j + 1);
            match *rest {
                ["conv_pw", t] => conv(&format!("{block}.expand"), t),
                ["bn1", t] => bn(&format!("{block}.expand"), t),
                ["conv_dw", t] => conv(&format!("{block}.dw"), t),
                ["bn2", t] => bn(&format!("{block}.dw"), t),
                ["se", "conv_reduce", t] => linear(&format!("{block}.se.reduce"), t),
                ["se", "conv_expand", t] => linear(&format!("{block}.se.expand"), t),
                ["conv_pwl", t] => conv(&format!("{block}.project"), t),
                ["bn3", t] => bn(&format!("{block}.project"), t),
                _ => None,
            }
        }
        ["conv_head", t] => conv("head", t),
        ["bn2", t] => bn("head", t),
        ["classifier", t] | ["classifier", "1", t] => linear("classifier", t),
        _ => None,
    }
}

/// efficientnet_pytorch: `_conv_stem`/`_bn0`, `_blocks.<i>` with `_expand_conv`/`_bn0`,
/// `_depthwise_conv`/`_bn1`, `_se_reduce`/`_se_expand`, `_project_conv`/`_bn2`, then
/// `_conv_head`/`_bn1` and `_fc`. Blocks are numbered as in this project.
fn efficientnet_pytorch(s: &[&str]) -> Option<String> {
    match *s {
        ["_conv_stem", t] => conv("stem", t),
        ["_bn0", t] => bn("stem", t),
        ["_blocks", i, part, t] => {
            let block = format!("blocks.{}", index(i)?);
            match part {
                "_expand_conv" => conv(&format!("{block}.expand"), t),
                "_bn0" => bn(&format!("{block}.expand"), t),
                "_depthwise_conv" => conv(&format!("{block}.dw"), t),
                "_bn1" => bn(&format!("{block}.dw"), t),
                "_se_reduce" => linear(&format!("{block}.se.reduce"), t),
                "_se_expand" => linear(&format!("{block}.se.expand"), t),
                "_project_conv" => conv(&format!("{block}.project"), t),
                "_bn2" => bn(&format!("{block}.project"), t),
                _ => None,
            }
        }
        ["_conv_head", t] => conv("head", t),
        ["_bn1", t] => bn("head", t),
        ["_fc", t] => linear("classifier", t),
        _ => None,
    }
}

/// A decimal index without sign or leading zeros (`"07"` is not block 7).
fn index(s: &str) -> Option<usize> {
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// One thing wrong with a state dict, for the all-at-once report.
#[derive(Debug, Clone, PartialEq)]
pub enum ConversionProblem {
    /// The model needs this canonical tensor and no source tensor maps to it.
    Missing {
        canonical: String,
        shape: Vec<usize>,
    },
    /// A source tensor the layout or the model does not have.
    Unexpected {
        source: String,
        canonical: Option<String>,
    },
    WrongShape {
        source: String,
        canonical: String,
        shape: Vec<usize>,
        expected: Vec<usize>,
    },
    /// Two source tensors map to one canonical name.
    Duplicate {
        source: String,
        canonical: String,
    },
    NotFloat {
        source: String,
        dtype: super::TorchDtype,
    },
}

impl std::fmt::Display for ConversionProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConversionProblem::Missing { canonical, shape } => {
                write!(f, "missing tensor {canonical} {shape:?}")
            }
            ConversionProblem::Unexpected { source, canonical: None } => {
                write!(f, "unexpected tensor {source} (not part of the layout)")
            }
            ConversionProblem::Unexpected { source, canonical: Some(c) } => {
                write!(f, "unexpected tensor {source} (maps to {c}, which the model does not have)")
            }
            ConversionProblem::WrongShape { source, canonical, shape, expected } => {
                write!(
                    f,
                    "tensor {source} (-> {canonical}) has shape {shape:?}, the model expects {expected:?}"
                )
            }
            ConversionProblem::Duplicate { source, canonical } => {
                write!(f, "tensor {source} maps to {canonical}, which another tensor already provides")
            }
            ConversionProblem::NotFloat { source, dtype } => {
                write!(f, "tensor {source} has dtype {dtype}; weights must be floating point")
            }
        }
    }
}

/// A state dict that does not fit the model, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) mapping the {layout} layout onto model {model}:\n  {}", problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
pub struct ConversionError {
    pub layout: SourceLayout,
    pub model: String,
    pub problems: Vec<ConversionProblem>,
}

/// Weights renamed to the canonical names and checked against a spec.
#[derive(Debug)]
pub struct ConvertedWeights {
    pub layout: SourceLayout,
    /// Canonical name and tensor, in manifest (sorted) order.
    pub tensors: Vec<(String, TorchTensor)>,
    /// How many `num_batches_tracked` counters were dropped.
    pub dropped_counters: usize,
}

/// Maps a state dict onto `spec`'s canonical names. Strips a `module.` prefix (DataParallel),
/// drops `num_batches_tracked`, detects the layout unless one is given, and reports every
/// missing, unexpected, duplicated or mis-shaped tensor at once.
pub fn convert_state_dict(
    state_dict: Vec<(String, TorchTensor)>,
    spec: &ArchSpec,
    layout: Option<SourceLayout>,
) -> Result<ConvertedWeights, Box<dyn std::error::Error + Send + Sync>> {
    let mut dropped_counters = 0;
    let entries: Vec<(String, TorchTensor)> = state_dict
        .into_iter()
        .map(|(name, t)| (name.strip_prefix("module.").map(str::to_string).unwrap_or(name), t))
        .filter(|(name, _)| {
            let counter = name.ends_with("num_batches_tracked");
            dropped_counters += counter as usize;
            !counter
        })
        .collect();
    let layout = match layout {
        Some(l) => l,
        None => SourceLayout::detect(entries.iter().map(|(n, _)| n.as_str())).ok_or_else(|| {
            let first: Vec<&str> = entries.iter().take(5).map(|(n, _)| n.as_str()).collect();
            format!(
                "cannot recognise the checkpoint layout from its names (first: {}); pass --layout {}",
                first.join(", "),
                SourceLayout::ALL.map(|l| l.name()).join("|")
            )
        })?,
    };
    let manifest: HashMap<String, Vec<usize>> = Network::tensor_manifest(spec)?.into_iter().collect();
    let mut problems = Vec::new();
    let mut converted: HashMap<String, TorchTensor> = HashMap::new();
    for (source, tensor) in entries {
        let canonical = layout.canonical_name(&source);
        let Some(expected) = canonical.as_ref().and_then(|c| manifest.get(c)) else {
            problems.push(ConversionProblem::Unexpected { source, canonical });
            continue;
        };
        let canonical = canonical.expect("checked above");
        if !tensor.dtype.is_float() {
            problems.push(ConversionProblem::NotFloat { source, dtype: tensor.dtype });
        } else if &tensor.shape != expected {
            problems.push(ConversionProblem::WrongShape {
                source,
                canonical,
                shape: tensor.shape,
                expected: expected.clone(),
            });
        } else {
            match converted.entry(canonical) {
                std::collections::hash_map::Entry::Occupied(slot) => {
                    problems.push(ConversionProblem::Duplicate { source, canonical: slot.key().clone() })
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(tensor);
                }
            }
        }
    }
    let mut names: Vec<&String> = manifest.keys().collect();
    names.sort();
    let reported: HashSet<String> = problems
        .iter()
        .filter_map(|p| match p {
            ConversionProblem::WrongShape { canonical, .. } => Some(canonical.clone()),
            _ => None,
        })
        .collect();
    for name in names {
        if !converted.contains_key(name) && !reported.contains(name) {
            problems
                .push(ConversionProblem::Missing { canonical: name.clone(), shape: manifest[name].clone() });
        }
    }
    if !problems.is_empty() {
        return Err(Box::new(ConversionError { layout, model: spec.name.clone(), problems }));
    }
    let mut tensors: Vec<(String, TorchTensor)> = converted.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(ConvertedWeights { layout, tensors, dropped_counters })
}

impl ConvertedWeights {
    /// The weights as candle tensors of `dtype`, keyed by canonical name.
    pub fn to_candle(
        &self,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> candle_core::Result<HashMap<String, candle_core::Tensor>> {
        self.tensors
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.to_candle(device)?.to_dtype(dtype)?)))
            .collect()
    }

    /// Writes a safetensors file atomically (a temporary file beside it, then a rename), so a
    /// crash never leaves a half-written file under the final name.
    pub fn write_safetensors(
        &self,
        path: &std::path::Path,
        metadata: HashMap<String, String>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let views = self.tensors.iter().map(|(name, t)| (name.clone(), t));
        let bytes = safetensors::serialize(views, Some(metadata))?;
        crate::persist::write_atomically(path, &bytes)?;
        Ok(())
    }
}
