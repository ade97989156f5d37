//! The named models: FairNAS-A/B/C (plain, SE, CIFAR-10 transfer) and EfficientNet-Lite0, all
//! built by one family builder from a choice vector (FairNAS) or block strings (Lite0).

use fairnas_ops::Activation;

use crate::block_string::parse_blocks;
use crate::search_space::{Choices, FAIRNAS_LAYERS};
use crate::spec::{ArchSpec, BlockKind, BlockSpec, HeadSpec, Padding, SeBase, SqueezeExciteSpec, StemSpec};

/// Per-layer kernels of FairNAS-A, -B, -C (docs/FAIRNAS.md section 1).
const KERNELS: [[usize; 19]; 3] = [
    [7, 3, 7, 3, 7, 3, 3, 7, 7, 5, 3, 5, 5, 3, 3, 7, 3, 7, 5],
    [5, 3, 5, 3, 3, 5, 7, 3, 3, 5, 3, 3, 7, 3, 7, 5, 7, 3, 5],
    [5, 3, 7, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 7, 7, 3, 3, 5],
];
/// Per-layer expansions of FairNAS-A, -B, -C.
const EXPANSIONS: [[usize; 19]; 3] = [
    [3, 3, 3, 6, 6, 3, 3, 6, 6, 3, 6, 3, 3, 6, 6, 6, 6, 6, 6],
    [3, 3, 3, 3, 6, 3, 3, 3, 6, 3, 3, 6, 3, 3, 6, 6, 6, 6, 6],
    [3, 3, 3, 3, 3, 3, 3, 3, 3, 6, 3, 3, 3, 3, 6, 6, 6, 6, 6],
];

/// The three published FairNAS architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FairnasModel {
    A,
    B,
    C,
}

impl FairnasModel {
    pub const ALL: [FairnasModel; 3] = [FairnasModel::A, FairnasModel::B, FairnasModel::C];

    pub fn letter(self) -> char {
        match self {
            FairnasModel::A => 'a',
            FairnasModel::B => 'b',
            FairnasModel::C => 'c',
        }
    }

    pub fn choices(self) -> Choices {
        let i = self as usize;
        Choices::from_kernels_and_expansions(&KERNELS[i], &EXPANSIONS[i])
            .expect("published FairNAS layers are all in the search space")
    }
}

/// Which member of the FairNAS family to build around a choice vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FairnasVariant {
    /// `Some(r)`: the SE family (ReLU outside the searchable layers, Swish inside, SE with
    /// bottleneck r x input channels, no dropout); `None`: the plain ReLU6 family.
    pub se_ratio: Option<f64>,
    /// CIFAR-10 transfer head: Dropout(0.1) + Linear(1280, 10).
    pub transfer: bool,
}

impl FairnasVariant {
    pub const PLAIN: FairnasVariant = FairnasVariant { se_ratio: None, transfer: false };
}

/// Any architecture of the FairNAS space, in the plain, SE or transfer flavour.
pub fn fairnas_spec(name: &str, choices: &Choices, variant: FairnasVariant) -> ArchSpec {
    let outer = if variant.se_ratio.is_some() { Activation::Relu } else { Activation::Relu6 };
    let inner = if variant.se_ratio.is_some() { Activation::Swish } else { Activation::Relu6 };
    let se = variant.se_ratio.map(|ratio| SqueezeExciteSpec { ratio, base: SeBase::InputChannels });
    let first = BlockSpec {
        kind: BlockKind::DepthwiseSeparable,
        kernel: 3,
        stride: 1,
        expansion: 1,
        out_channels: 16,
        se: None,
        activation: outer,
        padding: Padding::Symmetric,
        skip: true,
    };
    let searchable = FAIRNAS_LAYERS.iter().enumerate().map(|(i, &(out_channels, stride))| {
        let (kernel, expansion) = choices.layer(i);
        BlockSpec {
            kind: BlockKind::InvertedResidual,
            kernel,
            stride,
            expansion,
            out_channels,
            se,
            activation: inner,
            padding: Padding::Symmetric,
            skip: true,
        }
    });
    let (classes, dropout) = match (variant.transfer, variant.se_ratio) {
        (true, _) => (10, 0.1),
        (false, Some(_)) => (1000, 0.0),
        (false, None) => (1000, 0.2),
    };
    ArchSpec {
        name: name.to_string(),
        in_channels: 3,
        input_size: 224,
        stem: StemSpec { channels: 32, kernel: 3, stride: 2, activation: outer },
        blocks: std::iter::once(first).chain(searchable).collect(),
        head: HeadSpec { channels: 1280, activation: outer },
        dropout,
        classes,
        bn_eps: 1e-5,
        stem_padding: Padding::Symmetric,
        default_activation: inner,
    }
}

/// EfficientNet-Lite0 (docs/FAIRNAS.md section 3): ReLU6, no SE, TF SAME padding, BN eps 1e-3.
pub fn efficientnet_lite0() -> ArchSpec {
    const BLOCKS: &str = "ds_r1_k3_s1_c16_same ir_r2_k3_s2_e6_c24_same ir_r2_k5_s2_e6_c40_same \
                          ir_r3_k3_s2_e6_c80_same ir_r3_k5_s1_e6_c112_same \
                          ir_r4_k5_s2_e6_c192_same ir_r1_k3_s1_e6_c320_same";
    ArchSpec {
        name: "efficientnet-lite0".into(),
        in_channels: 3,
        input_size: 224,
        stem: StemSpec { channels: 32, kernel: 3, stride: 2, activation: Activation::Relu6 },
        blocks: parse_blocks(BLOCKS, Activation::Relu6).expect("Lite0 block strings are valid"),
        head: HeadSpec { channels: 1280, activation: Activation::Relu6 },
        dropout: 0.2,
        classes: 1000,
        bn_eps: 1e-3,
        stem_padding: Padding::TfSame,
        default_activation: Activation::Relu6,
    }
}

/// An arbitrary block list on the FairNAS stem and head (plain ReLU6 family defaults).
pub fn custom_spec(blocks: Vec<BlockSpec>, transfer: bool) -> ArchSpec {
    let mut spec =
        fairnas_spec("custom", &FairnasModel::A.choices(), FairnasVariant { se_ratio: None, transfer });
    spec.blocks = blocks;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_choice_vectors() {
        assert_eq!(FairnasModel::A.choices().to_string(), "4041500552122115153");
        assert_eq!(FairnasModel::B.choices().to_string(), "2020124012014053513");
        assert_eq!(FairnasModel::C.choices().to_string(), "2040000001000055113");
    }

    #[test]
    fn lite0_has_sixteen_blocks() {
        let s = efficientnet_lite0();
        assert_eq!(s.blocks.len(), 16);
        assert_eq!(s.blocks.iter().filter(|b| b.stride == 2).count(), 4);
        s.validate().unwrap();
    }
}
