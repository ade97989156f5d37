//! timm-style block strings: a compact, human-editable way to write MBConv blocks.
//!
//! Grammar: `<kind>_<token>_<token>...`, kind `ds` (depthwise separable) or `ir` (inverted
//! residual), tokens in any order:
//!
//! | token | meaning | default |
//! |---|---|---|
//! | `r<n>` | repeat n times; only the first repeat has the stride | 1 |
//! | `k<n>` | depthwise kernel (odd) | required |
//! | `s<n>` | stride of the depthwise conv | 1 |
//! | `e<n>` | expansion ratio (ir only; ds is always 1) | required for ir |
//! | `c<n>` | output channels | required |
//! | `se<x>` | squeeze-excite, bottleneck = x * INPUT channels (FairNAS, EfficientNet) | none |
//! | `seh<x>` | squeeze-excite, bottleneck = x * HIDDEN (expanded) channels | none |
//! | `nre` `nr6` `nsw` | activation relu / relu6 / swish | the architecture's default |
//! | `noskip` | no residual connection even where shapes allow one | skip allowed |
//! | `same` | TensorFlow SAME padding instead of symmetric k//2 | symmetric |
//!
//! Values are bounded (repeat <= 64, kernel <= 31, stride <= 8, expansion <= 64, channels <= 65536,
//! SE ratio <= 16) so typos fail early and cost sums cannot overflow.
//!
//! Example: `ir_r1_k7_s2_e3_c32_se0.5_nsw` is FairNAS-A-SE-0.5's first searchable layer.
//! An architecture is its blocks' strings separated by spaces; printing groups identical
//! consecutive blocks back into `r<n>` runs.

use std::fmt;

use fairnas_ops::Activation;

use crate::spec::{BlockKind, BlockSpec, Padding, SeBase, SqueezeExciteSpec};

/// A block string that could not be parsed, naming the offending token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStringError {
    pub block: String,
    pub token: String,
    pub reason: String,
}

impl fmt::Display for BlockStringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad token '{}' in block string '{}': {}", self.token, self.block, self.reason)
    }
}

impl std::error::Error for BlockStringError {}

/// Upper bounds that keep every cost product far from overflow and catch typos early.
const MAX_VALUE: [(&str, usize); 5] =
    [("repeat", 64), ("kernel", 31), ("stride", 8), ("expansion", 64), ("output channels", 65_536)];

fn parse_positive(block: &str, token: &str, digits: &str, what: &str) -> Result<usize, BlockStringError> {
    let max = MAX_VALUE.iter().find(|(name, _)| *name == what).map_or(usize::MAX, |(_, m)| *m);
    match digits.parse::<usize>() {
        Ok(v) if v > 0 && v <= max => Ok(v),
        _ => Err(BlockStringError {
            block: block.into(),
            token: token.into(),
            reason: format!("{what} must be an integer from 1 to {max}"),
        }),
    }
}

/// Parses one block string into `repeat` block specs.
pub fn parse_block(block: &str, default_activation: Activation) -> Result<Vec<BlockSpec>, BlockStringError> {
    let err = |token: &str, reason: &str| BlockStringError {
        block: block.into(),
        token: token.into(),
        reason: reason.into(),
    };
    let mut tokens = block.split('_');
    let kind_token = tokens.next().unwrap_or("");
    let kind = match kind_token {
        "ds" => BlockKind::DepthwiseSeparable,
        "ir" => BlockKind::InvertedResidual,
        "sk" => BlockKind::Skip,
        _ => return Err(err(kind_token, "block kind must be 'ds', 'ir' or 'sk'")),
    };
    let (mut repeat, mut kernel, mut stride, mut expansion, mut out) = (1, None, 1, None, None);
    let (mut se, mut activation, mut skip, mut padding) =
        (None, default_activation, true, Padding::Symmetric);
    for token in tokens {
        if token == "noskip" {
            skip = false;
        } else if token == "same" {
            padding = Padding::TfSame;
        } else if let Some(name) = token.strip_prefix('n') {
            activation = match name {
                "re" => Activation::Relu,
                "r6" => Activation::Relu6,
                "sw" => Activation::Swish,
                _ => return Err(err(token, "activation must be nre, nr6 or nsw")),
            };
        } else if let Some((ratio, base)) = token
            .strip_prefix("seh")
            .map(|r| (r, SeBase::HiddenChannels))
            .or_else(|| token.strip_prefix("se").map(|r| (r, SeBase::InputChannels)))
        {
            match ratio.parse::<f64>() {
                Ok(r) if r > 0.0 && r <= 16.0 => se = Some(SqueezeExciteSpec { ratio: r, base }),
                _ => return Err(err(token, "squeeze-excite ratio must be a number in (0, 16]")),
            }
        } else if let Some(v) = token.strip_prefix('r') {
            repeat = parse_positive(block, token, v, "repeat")?;
        } else if let Some(v) = token.strip_prefix('k') {
            let k = parse_positive(block, token, v, "kernel")?;
            if k % 2 == 0 {
                return Err(err(token, "kernel must be odd"));
            }
            kernel = Some(k);
        } else if let Some(v) = token.strip_prefix('s') {
            stride = parse_positive(block, token, v, "stride")?;
        } else if let Some(v) = token.strip_prefix('e') {
            expansion = Some(parse_positive(block, token, v, "expansion")?);
        } else if let Some(v) = token.strip_prefix('c') {
            out = Some(parse_positive(block, token, v, "output channels")?);
        } else {
            return Err(err(
                token,
                "unknown token (expected r, k, s, e, c, se, seh, nre/nr6/nsw, noskip, same)",
            ));
        }
    }
    let kernel = match (kind, kernel) {
        (BlockKind::Skip, None | Some(1)) => 1,
        (BlockKind::Skip, Some(k)) => {
            return Err(err(&format!("k{k}"), "a skip block has no kernel (1x1 at most)"))
        }
        (_, k) => k.ok_or_else(|| err(block, "missing kernel token k<n>"))?,
    };
    let out_channels = out.ok_or_else(|| err(block, "missing output channels token c<n>"))?;
    let expansion = match (kind, expansion) {
        (BlockKind::DepthwiseSeparable | BlockKind::Skip, None | Some(1)) => 1,
        (BlockKind::DepthwiseSeparable | BlockKind::Skip, Some(e)) => {
            return Err(err(&format!("e{e}"), "only ir blocks have an expansion"))
        }
        (BlockKind::InvertedResidual, Some(e)) => e,
        (BlockKind::InvertedResidual, None) => return Err(err(block, "missing expansion token e<n>")),
    };
    let first = BlockSpec { kind, kernel, stride, expansion, out_channels, se, activation, padding, skip };
    let rest = BlockSpec { stride: 1, ..first };
    Ok(std::iter::once(first).chain(std::iter::repeat_n(rest, repeat - 1)).collect())
}

/// Formats one block (as a single repeat, or as `repeat` copies when given).
pub fn format_block(b: &BlockSpec, repeat: usize, default_activation: Activation) -> String {
    let mut s = match b.kind {
        BlockKind::DepthwiseSeparable => format!("ds_r{repeat}_k{}_s{}", b.kernel, b.stride),
        BlockKind::InvertedResidual => format!("ir_r{repeat}_k{}_s{}_e{}", b.kernel, b.stride, b.expansion),
        BlockKind::Skip => format!("sk_r{repeat}_s{}", b.stride),
    };
    s.push_str(&format!("_c{}", b.out_channels));
    if let Some(se) = b.se {
        let prefix = match se.base {
            SeBase::InputChannels => "se",
            SeBase::HiddenChannels => "seh",
        };
        s.push_str(&format!("_{prefix}{}", se.ratio));
    }
    if b.activation != default_activation {
        s.push_str(&format!("_n{}", b.activation.short_name()));
    }
    if !b.skip {
        s.push_str("_noskip");
    }
    if b.padding == Padding::TfSame {
        s.push_str("_same");
    }
    s
}

/// Parses space- or comma-separated block strings into the flat block list.
pub fn parse_blocks(text: &str, default_activation: Activation) -> Result<Vec<BlockSpec>, BlockStringError> {
    let mut blocks = Vec::new();
    for part in text.split(|c: char| c.is_whitespace() || c == ',').filter(|p| !p.is_empty()) {
        blocks.extend(parse_block(part, default_activation)?);
    }
    if blocks.is_empty() {
        return Err(BlockStringError {
            block: text.into(),
            token: text.into(),
            reason: "no blocks given".into(),
        });
    }
    Ok(blocks)
}

/// Formats a block list, grouping runs that a single `r<n>` string reproduces.
pub fn format_blocks(blocks: &[BlockSpec], default_activation: Activation) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let continuation = BlockSpec { stride: 1, ..blocks[i] };
        let mut j = i + 1;
        while j < blocks.len() && blocks[j] == continuation {
            j += 1;
        }
        parts.push(format_block(&blocks[i], j - i, default_activation));
        i = j;
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const R6: Activation = Activation::Relu6;

    #[test]
    fn skip_blocks_parse_and_print() {
        let b = parse_block("sk_r1_s2_c64", R6).unwrap();
        assert_eq!((b[0].kind, b[0].kernel, b[0].stride, b[0].out_channels), (BlockKind::Skip, 1, 2, 64));
        assert_eq!(format_block(&b[0], 1, R6), "sk_r1_s2_c64");
        assert!(parse_block("sk_r1_k3_s1_c64", R6).unwrap_err().to_string().contains("'k3'"));
        assert!(parse_block("sk_r1_s1_e6_c64", R6).unwrap_err().to_string().contains("'e6'"));
    }

    #[test]
    fn parses_the_documented_examples() {
        let b = parse_block("ir_r1_k7_s2_e3_c32_se0.5_nsw", R6).unwrap();
        assert_eq!(b.len(), 1);
        let b = b[0];
        assert_eq!((b.kernel, b.stride, b.expansion, b.out_channels), (7, 2, 3, 32));
        assert_eq!(b.se, Some(SqueezeExciteSpec { ratio: 0.5, base: SeBase::InputChannels }));
        assert_eq!(b.activation, Activation::Swish);
        let ds = parse_block("ds_r1_k3_s1_c16", R6).unwrap()[0];
        assert_eq!((ds.kind, ds.expansion, ds.activation), (BlockKind::DepthwiseSeparable, 1, R6));
        let run = parse_block("ir_r2_k5_s2_e6_c40", R6).unwrap();
        assert_eq!(run.iter().map(|b| b.stride).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn round_trips_single_blocks_and_runs() {
        for s in [
            "ds_r1_k3_s1_c16",
            "ir_r2_k5_s2_e6_c40",
            "ir_r1_k7_s2_e3_c32_se0.5_nsw",
            "ir_r3_k3_s1_e6_c80_seh0.25_nre_noskip_same",
            "ds_r1_k3_s1_c16_same",
        ] {
            let blocks = parse_blocks(s, R6).unwrap();
            assert_eq!(format_blocks(&blocks, R6), s);
        }
        let arch = "ds_r1_k3_s1_c16 ir_r2_k3_s2_e6_c24 ir_r1_k5_s1_e3_c24 ir_r4_k5_s2_e6_c192_se1";
        let blocks = parse_blocks(arch, R6).unwrap();
        assert_eq!(blocks.len(), 8);
        assert_eq!(format_blocks(&blocks, R6), arch);
        assert_eq!(parse_blocks(&format_blocks(&blocks, R6), R6).unwrap(), blocks);
    }

    #[test]
    fn errors_name_the_bad_token() {
        let cases = [
            ("xx_k3_c16", "xx"),
            ("ir_r1_k4_s1_e6_c16", "k4"),
            ("ir_r1_k3_s1_e6_c16_nge", "nge"),
            ("ir_r1_k3_s1_e6_c16_se-1", "se-1"),
            ("ir_r1_k3_sx_e6_c16", "sx"),
            ("ir_r1_k3_s1_e6_c16_zz", "zz"),
            ("ds_r1_k3_s1_e6_c16", "e6"),
            ("ir_r0_k3_s1_e6_c16", "r0"),
            ("ir_r1_k3_s1_e6_c99999999999999999999", "c99999999999999999999"),
            ("ir_r1_k33_s1_e6_c16", "k33"),
        ];
        for (s, token) in cases {
            let e = parse_block(s, R6).unwrap_err();
            assert_eq!(e.token, token, "{s}: {e}");
            assert!(e.to_string().contains(&format!("'{token}'")), "{e}");
        }
        assert!(parse_block("ir_r1_k3_s1_c16", R6).unwrap_err().reason.contains("expansion"));
        assert!(parse_block("ir_r1_s1_e3_c16", R6).unwrap_err().reason.contains("kernel"));
        assert!(parse_blocks("  ", R6).is_err());
    }
}
