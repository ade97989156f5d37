//! Turning the model-selection options every command shares (`--model`, `--se-ratio`,
//! `--transfer`, `--arch`, `--choices`) into one [`ArchSpec`]. The CLI only forwards the flags;
//! all rules about which combinations mean what live here.

use crate::block_string::{parse_blocks, BlockStringError};
use crate::search_space::{Choices, SearchSpace, SpaceError};
use crate::spec::{ArchSpec, SpecError};
use crate::zoo::{custom_spec, efficientnet_lite0, fairnas_spec, FairnasModel, FairnasVariant};

/// Help text listing the named models (used by `fairnas --help`).
pub const MODEL_HELP: &str = "\
Named models (--model):
  fairnas-a, fairnas-b, fairnas-c          plain FairNAS (ReLU6, ImageNet, 1000 classes)
  fairnas-{a,b,c}-se[-1.0|-0.5]            SE variants (Swish + squeeze-excite; --se-ratio, default 1.0)
  fairnas-{a,b,c}-se-{1.0,0.5}-transfer    CIFAR-10 transfer models (10 classes; or add --transfer)
  efficientnet-lite0                       EfficientNet-Lite0 (TF SAME padding, BN eps 1e-3)
Any FairNAS-space architecture: --choices <19 digits 0-5> (0=k3e3 1=k3e6 2=k5e3 3=k5e6 4=k7e3 5=k7e6),
optionally with --se-ratio and --transfer. Any block list: --arch \"ds_r1_k3_s1_c16 ir_r2_k5_s2_e6_c40 ...\"";

/// The shared model-selection options. With the `clap` feature they are also a
/// `clap::Args` group (`--model`, `--se-ratio`, `--transfer`, `--arch`, `--choices`, `--space`)
/// a binary can flatten into its commands.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ModelSelection {
    /// Named model (see `fairnas --help` for the list).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME"))]
    pub model: Option<String>,
    /// Squeeze-excite ratio of the SE variants (1.0 or 0.5 for the released models).
    #[cfg_attr(feature = "clap", arg(long, value_name = "R"))]
    pub se_ratio: Option<f64>,
    /// CIFAR-10 transfer head (10 classes, Dropout 0.1).
    #[cfg_attr(feature = "clap", arg(long))]
    pub transfer: bool,
    /// Any architecture as block strings, e.g. "ds_r1_k3_s1_c16 ir_r2_k5_s2_e6_c40".
    #[cfg_attr(feature = "clap", arg(long, value_name = "BLOCKS"))]
    pub arch: Option<String>,
    /// A sub-network as choice digits: 19 digits 0-5 in the FairNAS space, or 8 digits 0-2
    /// in nas-bench-macro.
    #[cfg_attr(feature = "clap", arg(long, value_name = "DIGITS"))]
    pub choices: Option<String>,
    /// The search space `choices` index: fairnas (default) or nas-bench-macro (the
    /// benchmark's sub-networks, e.g. those `fairnas export` writes).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SPACE"))]
    pub space: Option<String>,
}

/// A model selection that names no model, or a contradictory one. The messages use the
/// selection's field names (`se_ratio`, `choices`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectionError {
    #[error("se_ratio {0} must be a number in (0, 16]")]
    SeRatio(f64),
    #[error("no model given: name a model, choices or an arch")]
    NoModel,
    #[error("model, choices and arch are alternatives: give exactly one")]
    Alternatives,
    #[error("a space applies to choices only")]
    SpaceWithoutChoices,
    #[error("se_ratio and transfer apply to the fairnas space, not {0}")]
    NoVariants(String),
    #[error("se_ratio does not apply to an arch: write se<ratio> in the block strings")]
    SeRatioOnArch,
    #[error("efficientnet-lite0 has no SE or transfer variant")]
    Lite0Variant,
    #[error("unknown model '{0}'\n{MODEL_HELP}")]
    UnknownModel(String),
    #[error("model '{name}' has SE ratio {ratio} but se_ratio {given} was given")]
    RatioConflict { name: String, ratio: f64, given: f64 },
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error(transparent)]
    Blocks(#[from] BlockStringError),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// Every named model, by canonical name.
pub fn all_named_models() -> Vec<String> {
    let mut names = Vec::new();
    for m in FairnasModel::ALL {
        names.push(format!("fairnas-{}", m.letter()));
    }
    for transfer in ["", "-transfer"] {
        for ratio in ["1.0", "0.5"] {
            for m in FairnasModel::ALL {
                names.push(format!("fairnas-{}-se-{ratio}{transfer}", m.letter()));
            }
        }
    }
    names.push("efficientnet-lite0".into());
    names
}

fn variant_suffix(variant: FairnasVariant) -> String {
    let mut s = String::new();
    if let Some(r) = variant.se_ratio {
        s.push_str(&format!("-se-{r:?}"));
    }
    if variant.transfer {
        s.push_str("-transfer");
    }
    s
}

impl ModelSelection {
    pub fn named(name: &str) -> Self {
        ModelSelection { model: Some(name.to_string()), ..Default::default() }
    }

    /// Resolves the options to a spec, or explains which combination is invalid.
    pub fn resolve(&self) -> Result<ArchSpec, SelectionError> {
        if let Some(r) = self.se_ratio {
            if !(r > 0.0 && r <= 16.0) {
                return Err(SelectionError::SeRatio(r));
            }
        }
        let given = [self.model.is_some(), self.arch.is_some(), self.choices.is_some()];
        match given.iter().filter(|g| **g).count() {
            0 => return Err(SelectionError::NoModel),
            1 => {}
            _ => return Err(SelectionError::Alternatives),
        }
        if self.space.is_some() && self.choices.is_none() {
            return Err(SelectionError::SpaceWithoutChoices);
        }
        let other_space = self.space.as_deref().filter(|s| *s != "fairnas");
        let spec = if let (Some(digits), Some(space)) = (&self.choices, other_space) {
            let space = SearchSpace::named(space)?;
            // A CIFAR-10 space needs no transfer head: --transfer is then a no-op.
            if self.se_ratio.is_some() || (self.transfer && space.base.classes != 10) {
                return Err(SelectionError::NoVariants(space.name));
            }
            space.parse_choices(digits).and_then(|c| space.subnet(&c))?
        } else if let Some(digits) = &self.choices {
            let choices: Choices = digits.parse()?;
            let variant = FairnasVariant { se_ratio: self.se_ratio, transfer: self.transfer };
            fairnas_spec(&format!("choices-{choices}{}", variant_suffix(variant)), &choices, variant)
        } else if let Some(text) = &self.arch {
            if self.se_ratio.is_some() {
                return Err(SelectionError::SeRatioOnArch);
            }
            let mut spec = custom_spec(parse_blocks(text, fairnas_ops::Activation::Relu6)?, self.transfer);
            spec.name = if self.transfer { "custom-transfer".into() } else { "custom".into() };
            spec
        } else {
            self.resolve_named(self.model.as_deref().unwrap_or_default())?
        };
        spec.validate()?;
        Ok(spec)
    }

    fn resolve_named(&self, name: &str) -> Result<ArchSpec, SelectionError> {
        let unknown = || SelectionError::UnknownModel(name.to_string());
        let lower = name.to_ascii_lowercase().replace('_', "-");
        if lower == "efficientnet-lite0" {
            if self.se_ratio.is_some() || self.transfer {
                return Err(SelectionError::Lite0Variant);
            }
            return Ok(efficientnet_lite0());
        }
        let rest = lower.strip_prefix("fairnas-").ok_or_else(unknown)?;
        let (letter, mut rest) = rest.split_at(rest.len().min(1));
        let model = match letter {
            "a" => FairnasModel::A,
            "b" => FairnasModel::B,
            "c" => FairnasModel::C,
            _ => return Err(unknown()),
        };
        let mut transfer = self.transfer;
        if let Some(r) = rest.strip_suffix("-transfer") {
            transfer = true;
            rest = r;
        }
        let se_ratio = if rest.is_empty() {
            self.se_ratio
        } else if rest == "-se" {
            Some(self.se_ratio.unwrap_or(1.0))
        } else if let Some(r) = rest.strip_prefix("-se-") {
            let ratio: f64 = r.parse().map_err(|_| unknown())?;
            if let Some(given) = self.se_ratio.filter(|&given| given != ratio) {
                return Err(SelectionError::RatioConflict { name: name.to_string(), ratio, given });
            }
            Some(ratio)
        } else {
            return Err(unknown());
        };
        let variant = FairnasVariant { se_ratio, transfer };
        let canonical = format!("fairnas-{}{}", model.letter(), variant_suffix(variant));
        Ok(fairnas_spec(&canonical, &model.choices(), variant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(model: &str, se: Option<f64>, transfer: bool) -> Result<ArchSpec, String> {
        let selection =
            ModelSelection { model: Some(model.into()), se_ratio: se, transfer, ..Default::default() };
        selection.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn names_and_flags_agree() {
        assert_eq!(sel("fairnas-a-se", Some(0.5), false).unwrap().name, "fairnas-a-se-0.5");
        assert_eq!(sel("fairnas-a", Some(0.5), false).unwrap().name, "fairnas-a-se-0.5");
        assert_eq!(sel("fairnas-b-se", None, true).unwrap().name, "fairnas-b-se-1.0-transfer");
        assert_eq!(sel("FairNAS_C", None, false).unwrap().name, "fairnas-c");
        let t = sel("fairnas-b-se-0.5-transfer", None, false).unwrap();
        assert_eq!((t.classes, t.dropout), (10, 0.1));
        for name in all_named_models() {
            assert_eq!(sel(&name, None, false).unwrap().name, name);
        }
        assert_eq!(all_named_models().len(), 16);
    }

    #[test]
    fn contradictions_and_unknowns_are_errors() {
        assert!(sel("fairnas-a-se-0.5", Some(1.0), false).unwrap_err().contains("se_ratio 1"));
        assert!(sel("fairnas-d", None, false).unwrap_err().contains("unknown model 'fairnas-d'"));
        assert!(sel("efficientnet-lite0", None, true).is_err());
        assert!(sel("fairnas-a", Some(-1.0), false).is_err());
        let both = ModelSelection {
            model: Some("fairnas-a".into()),
            choices: Some("0".repeat(19)),
            ..Default::default()
        };
        assert!(both.resolve().unwrap_err().to_string().contains("exactly one"));
        assert!(ModelSelection::default().resolve().is_err());
    }

    #[test]
    fn choices_and_arch_build_specs() {
        let a = ModelSelection { choices: Some("4041500552122115153".into()), ..Default::default() }
            .resolve()
            .unwrap();
        assert_eq!(a.blocks, sel("fairnas-a", None, false).unwrap().blocks);
        let a_se = ModelSelection {
            choices: Some("4041500552122115153".into()),
            se_ratio: Some(1.0),
            ..Default::default()
        };
        assert_eq!(a_se.resolve().unwrap().blocks, sel("fairnas-a-se-1.0", None, false).unwrap().blocks);
        let arch =
            ModelSelection { arch: Some("ds_r1_k3_s1_c16 ir_r2_k5_s2_e6_c40".into()), ..Default::default() };
        assert_eq!(arch.resolve().unwrap().blocks.len(), 3);
        let bad =
            ModelSelection { arch: Some("ds_r1_k3_s1_c16 ir_r2_k4_s2_e6_c40".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().contains("'k4'"));
    }
}
