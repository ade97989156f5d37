//! Architecture specs: what a network is, independent of weights and of any framework.
//!
//! One spec type covers the whole MBConv family (FairNAS A/B/C, their SE and CIFAR-10 transfer
//! variants, EfficientNet-Lite0, any searched architecture): a conv stem, a list of blocks, a 1x1
//! conv head, global pooling and a linear classifier. Blocks are written as timm-style block
//! strings (see [`crate::block_string`]).

use fairnas_ops::Activation;
use serde::{Deserialize, Serialize};

/// How spatial zero padding is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Padding {
    /// PyTorch `padding = k // 2` on every side.
    Symmetric,
    /// TensorFlow "SAME" (asymmetric on stride-2 layers), as in EfficientNet-Lite checkpoints.
    TfSame,
}

/// The two block kinds of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlockKind {
    /// Depthwise separable: depthwise k x k, BN, act, \[SE\], pointwise 1x1, BN (no act).
    DepthwiseSeparable,
    /// Inverted residual (MBConv): 1x1 expand, BN, act; depthwise, BN, act; \[SE\]; 1x1 project, BN.
    InvertedResidual,
    /// The identity choice of a search space: nothing when shape is kept; where stride or
    /// channels change, a 1x1 conv with that stride + BN, no activation (NAS-Bench-Macro's rule).
    Skip,
}

/// What the squeeze-excite ratio multiplies to give the bottleneck width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeBase {
    /// The block's input channels (FairNAS-SE and EfficientNet do this).
    InputChannels,
    /// The block's expanded (hidden) channels.
    HiddenChannels,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SqueezeExciteSpec {
    pub ratio: f64,
    pub base: SeBase,
}

/// One block of the network. Input channels are implied by the previous block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlockSpec {
    pub kind: BlockKind,
    pub kernel: usize,
    pub stride: usize,
    /// Expansion ratio of the inverted residual (1 for depthwise separable blocks).
    pub expansion: usize,
    pub out_channels: usize,
    pub se: Option<SqueezeExciteSpec>,
    pub activation: Activation,
    pub padding: Padding,
    /// Whether the residual connection is allowed (it is used only when stride is 1 and
    /// in == out channels). `noskip` in a block string clears it.
    pub skip: bool,
}

impl BlockSpec {
    pub fn hidden_channels(&self, in_channels: usize) -> usize {
        in_channels * self.expansion
    }

    pub fn has_expand_conv(&self) -> bool {
        self.kind == BlockKind::InvertedResidual
    }

    /// Width of the SE bottleneck for a given input width, or None without SE.
    pub fn se_channels(&self, in_channels: usize) -> Option<usize> {
        self.se.map(|se| {
            let base = match se.base {
                SeBase::InputChannels => in_channels,
                SeBase::HiddenChannels => self.hidden_channels(in_channels),
            };
            ((base as f64 * se.ratio).round() as usize).max(1)
        })
    }

    pub fn has_residual(&self, in_channels: usize) -> bool {
        self.kind != BlockKind::Skip && self.skip && self.stride == 1 && in_channels == self.out_channels
    }

    /// For a [`BlockKind::Skip`] block: whether it needs its 1x1 projection.
    pub fn skip_projects(&self, in_channels: usize) -> bool {
        self.kind == BlockKind::Skip && (self.stride != 1 || in_channels != self.out_channels)
    }
}

/// The first convolution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StemSpec {
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub activation: Activation,
}

/// The 1x1 conv before pooling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadSpec {
    pub channels: usize,
    pub activation: Activation,
}

/// A whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    pub name: String,
    pub in_channels: usize,
    /// Square input resolution the cost model assumes (224 for the ImageNet family).
    pub input_size: usize,
    pub stem: StemSpec,
    pub blocks: Vec<BlockSpec>,
    pub head: HeadSpec,
    /// Dropout before the classifier (0 = none); inactive in eval mode.
    pub dropout: f64,
    pub classes: usize,
    pub bn_eps: f64,
    /// Padding of the stem (blocks carry their own).
    pub stem_padding: Padding,
    /// Activation a block string gets when it names none.
    pub default_activation: Activation,
}

/// Shape facts of one block in its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockGeometry {
    pub in_channels: usize,
    pub hidden_channels: usize,
    pub out_channels: usize,
    pub se_channels: Option<usize>,
    pub in_size: (usize, usize),
    pub out_size: (usize, usize),
    pub residual: bool,
}

/// Output size of a conv with odd kernel under either padding rule.
pub fn conv_out(size: usize, kernel: usize, stride: usize, padding: Padding) -> usize {
    match padding {
        Padding::Symmetric => (size + 2 * (kernel / 2) - kernel) / stride + 1,
        Padding::TfSame => size.div_ceil(stride),
    }
}

impl ArchSpec {
    /// Spatial size after the stem for a given (square) input.
    pub fn stem_out(&self, input: usize) -> usize {
        conv_out(input, self.stem.kernel, self.stem.stride, self.stem_padding)
    }

    /// The geometry of every block for the given input size.
    pub fn block_geometry(&self, input: usize) -> Vec<BlockGeometry> {
        let mut channels = self.stem.channels;
        let s = self.stem_out(input);
        let mut size = (s, s);
        self.blocks
            .iter()
            .map(|b| {
                let out_size = (
                    conv_out(size.0, b.kernel, b.stride, b.padding),
                    conv_out(size.1, b.kernel, b.stride, b.padding),
                );
                let g = BlockGeometry {
                    in_channels: channels,
                    hidden_channels: b.hidden_channels(channels),
                    out_channels: b.out_channels,
                    se_channels: b.se_channels(channels),
                    in_size: size,
                    out_size,
                    residual: b.has_residual(channels),
                };
                channels = b.out_channels;
                size = out_size;
                g
            })
            .collect()
    }

    /// Channels entering the head conv.
    pub fn last_block_channels(&self) -> usize {
        self.blocks.last().map_or(self.stem.channels, |b| b.out_channels)
    }

    /// Checks the invariants the builders and the network rely on.
    pub fn validate(&self) -> Result<(), SpecError> {
        let model = || self.name.clone();
        if self.blocks.is_empty() {
            return Err(SpecError::NoBlocks { model: model() });
        }
        if self.classes == 0 || self.head.channels == 0 || self.stem.channels == 0 {
            return Err(SpecError::ZeroWidth { model: model() });
        }
        for (block, b) in self.blocks.iter().enumerate() {
            if b.kernel % 2 == 0 || b.kernel == 0 {
                return Err(SpecError::EvenKernel { model: model(), block, kernel: b.kernel });
            }
            if b.stride == 0 || b.out_channels == 0 || b.expansion == 0 {
                return Err(SpecError::NotPositive { model: model(), block });
            }
            if b.kind == BlockKind::DepthwiseSeparable && b.expansion != 1 {
                return Err(SpecError::DsExpansion { model: model(), block, expansion: b.expansion });
            }
            if b.kind == BlockKind::Skip && (b.kernel != 1 || b.expansion != 1 || b.se.is_some()) {
                return Err(SpecError::SkipShape { model: model(), block });
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(SpecError::Dropout { model: model(), dropout: self.dropout });
        }
        Ok(())
    }
}

/// An architecture the builders cannot build, naming the model and the block.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("{model}: an architecture needs at least one block")]
    NoBlocks { model: String },
    #[error("{model}: zero-width stem, head or classifier")]
    ZeroWidth { model: String },
    #[error("{model}: block {block}: kernel {kernel} must be odd")]
    EvenKernel { model: String, block: usize, kernel: usize },
    #[error("{model}: block {block}: stride, channels and expansion must be positive")]
    NotPositive { model: String, block: usize },
    #[error("{model}: block {block}: a ds block has no expansion (got e{expansion})")]
    DsExpansion { model: String, block: usize, expansion: usize },
    #[error("{model}: block {block}: a skip block has kernel 1, no expansion and no SE")]
    SkipShape { model: String, block: usize },
    #[error("{model}: dropout {dropout} must be in [0, 1)")]
    Dropout { model: String, dropout: f64 },
}
