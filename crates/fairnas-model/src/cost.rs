//! The cost model: parameters, multiply-adds and thop-convention FLOPs, from the spec alone.
//!
//! Conventions (docs/FAIRNAS.md sections 1 and 2):
//! - **params**: every learnable tensor (conv/linear weights and biases, BN weight and bias);
//!   BN running statistics are not parameters.
//! - **multiply-adds**: multiply-accumulates of convolutions and fully connected layers only.
//! - **thop FLOPs**: the `thop` profiler's rules, which the published transfer-model "flops" use:
//!   conv = output elements x (in/groups x kh x kw, +1 with bias); BatchNorm = 2 x elements;
//!   adaptive average pool = (H x W + 1) x output elements; Linear = in x out; everything else 0.
//!
//! The cost model is deliberately written from the formulas, not by walking the candle network,
//! so that a test can check one against the other.

use serde::Serialize;

use crate::block_string::format_block;
use crate::spec::{conv_out, ArchSpec, BlockKind};

/// Costs of one row of the per-layer table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerCost {
    /// Canonical weight prefix of the layer (`stem`, `blocks.3`, `head`, `classifier`).
    pub name: String,
    /// Human-readable description (a block string for blocks).
    pub description: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_size: (usize, usize),
    pub out_size: (usize, usize),
    pub params: u64,
    pub madds: u64,
    pub thop_flops: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CostReport {
    pub model: String,
    pub input_size: usize,
    pub layers: Vec<LayerCost>,
    pub params: u64,
    pub madds: u64,
    pub thop_flops: u64,
}

/// What `fairnas info` shows of a model: its settings and the cost table at one input size.
/// `Display` is the table with thousands separators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub model: String,
    pub input_size: usize,
    pub classes: usize,
    pub bn_eps: f64,
    pub dropout: f64,
    /// The architecture as block strings ([`crate::block_string`]).
    pub blocks: String,
    pub params: u64,
    pub madds: u64,
    pub thop_flops: u64,
    pub layers: Vec<LayerCost>,
}

/// Input sizes [`ModelInfo::at`] accepts: past 8192 pixels the counts stop meaning anything
/// for these networks (and the shape arithmetic approaches overflow).
pub const INPUT_SIZES: std::ops::RangeInclusive<usize> = 1..=8192;

impl ModelInfo {
    /// `spec`'s costs at `input` x `input` pixels; `None` outside [`INPUT_SIZES`].
    pub fn at(spec: &ArchSpec, input: usize) -> Option<Self> {
        if !INPUT_SIZES.contains(&input) {
            return None;
        }
        let report = cost_report_at(spec, input);
        Some(ModelInfo {
            model: spec.name.clone(),
            input_size: input,
            classes: spec.classes,
            bn_eps: spec.bn_eps,
            dropout: spec.dropout,
            blocks: crate::block_string::format_blocks(&spec.blocks, spec.default_activation),
            params: report.params,
            madds: report.madds,
            thop_flops: report.thop_flops,
            layers: report.layers,
        })
    }
}

impl std::fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.input_size;
        writeln!(
            f,
            "model: {}  (input {n}x{n}, {} classes, BN eps {:e})",
            self.model, self.classes, self.bn_eps
        )?;
        let row = |f: &mut std::fmt::Formatter<'_>, cells: [&str; 8]| {
            let [i, name, block, channels, resolution, params, madds, flops] = cells;
            writeln!(f, "{i:>3}  {name:<12} {block:<34} {channels:>11}  {resolution:>15}  {params:>11} {madds:>13} {flops:>13}")
        };
        row(f, ["#", "layer", "block", "channels", "resolution", "params", "madds", "thop flops"])?;
        for (i, l) in self.layers.iter().enumerate() {
            let channels = format!("{}->{}", l.in_channels, l.out_channels);
            let resolution = format!("{}x{}->{}x{}", l.in_size.0, l.in_size.1, l.out_size.0, l.out_size.1);
            let (params, madds, flops) = (thousands(l.params), thousands(l.madds), thousands(l.thop_flops));
            row(
                f,
                [&i.to_string(), &l.name, &l.description, &channels, &resolution, &params, &madds, &flops],
            )?;
        }
        writeln!(f, "params: {}", thousands(self.params))?;
        writeln!(f, "multiply-adds: {}", thousands(self.madds))?;
        write!(f, "thop FLOPs: {}", thousands(self.thop_flops))
    }
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Running totals of one layer.
#[derive(Default)]
struct Tally {
    params: u64,
    madds: u64,
    thop: u64,
}

impl Tally {
    /// A convolution without bias: `out_c x (in_c / groups) x k x k` weights.
    fn conv(&mut self, in_c: usize, out_c: usize, groups: usize, k: usize, out_hw: (usize, usize)) {
        let per_output = (in_c / groups * k * k) as u64;
        let outputs = (out_c * out_hw.0 * out_hw.1) as u64;
        self.params += out_c as u64 * per_output;
        self.madds += outputs * per_output;
        self.thop += outputs * per_output;
    }
    /// A 1x1 conv with bias on a 1x1 map (the SE FCs).
    fn conv1x1_bias_on_vector(&mut self, in_c: usize, out_c: usize) {
        self.params += (in_c * out_c + out_c) as u64;
        self.madds += (in_c * out_c) as u64;
        self.thop += (out_c * (in_c + 1)) as u64;
    }
    fn batch_norm(&mut self, c: usize, hw: (usize, usize)) {
        self.params += 2 * c as u64;
        self.thop += 2 * (c * hw.0 * hw.1) as u64;
    }
    /// Global average pool to 1x1: thop counts (H*W adds + 1 divide) per output element.
    fn global_pool(&mut self, c: usize, hw: (usize, usize)) {
        self.thop += ((hw.0 * hw.1 + 1) * c) as u64;
    }
    fn linear(&mut self, in_f: usize, out_f: usize) {
        self.params += (in_f * out_f + out_f) as u64;
        self.madds += (in_f * out_f) as u64;
        self.thop += (in_f * out_f) as u64;
    }
}

/// Computes the per-layer and total costs of `spec` at its input size.
pub fn cost_report(spec: &ArchSpec) -> CostReport {
    cost_report_at(spec, spec.input_size)
}

/// Computes the costs for a square input of `input` pixels.
pub fn cost_report_at(spec: &ArchSpec, input: usize) -> CostReport {
    let mut layers = Vec::new();
    let mut push = |name: String,
                    description: String,
                    io: (usize, usize),
                    sizes: ((usize, usize), (usize, usize)),
                    t: Tally| {
        layers.push(LayerCost {
            name,
            description,
            in_channels: io.0,
            out_channels: io.1,
            in_size: sizes.0,
            out_size: sizes.1,
            params: t.params,
            madds: t.madds,
            thop_flops: t.thop,
        })
    };

    let s = conv_out(input, spec.stem.kernel, spec.stem.stride, spec.stem_padding);
    let mut t = Tally::default();
    t.conv(spec.in_channels, spec.stem.channels, 1, spec.stem.kernel, (s, s));
    t.batch_norm(spec.stem.channels, (s, s));
    push(
        "stem".into(),
        format!("conv{0}x{0} s{1}, {2}", spec.stem.kernel, spec.stem.stride, spec.stem.activation),
        (spec.in_channels, spec.stem.channels),
        ((input, input), (s, s)),
        t,
    );

    for (i, (b, g)) in spec.blocks.iter().zip(spec.block_geometry(input)).enumerate() {
        let mut t = Tally::default();
        if b.kind == BlockKind::Skip {
            if b.skip_projects(g.in_channels) {
                t.conv(g.in_channels, g.out_channels, 1, 1, g.out_size);
                t.batch_norm(g.out_channels, g.out_size);
            }
        } else {
            if b.kind == BlockKind::InvertedResidual {
                t.conv(g.in_channels, g.hidden_channels, 1, 1, g.in_size);
                t.batch_norm(g.hidden_channels, g.in_size);
            }
            t.conv(g.hidden_channels, g.hidden_channels, g.hidden_channels, b.kernel, g.out_size);
            t.batch_norm(g.hidden_channels, g.out_size);
            if let Some(r) = g.se_channels {
                t.global_pool(g.hidden_channels, g.out_size);
                t.conv1x1_bias_on_vector(g.hidden_channels, r);
                t.conv1x1_bias_on_vector(r, g.hidden_channels);
            }
            t.conv(g.hidden_channels, g.out_channels, 1, 1, g.out_size);
            t.batch_norm(g.out_channels, g.out_size);
        }
        push(
            format!("blocks.{i}"),
            format_block(b, 1, spec.default_activation),
            (g.in_channels, g.out_channels),
            (g.in_size, g.out_size),
            t,
        );
    }

    let last = spec.block_geometry(input).last().map_or((s, s), |g| g.out_size);
    let c_in = spec.last_block_channels();
    let mut t = Tally::default();
    t.conv(c_in, spec.head.channels, 1, 1, last);
    t.batch_norm(spec.head.channels, last);
    t.global_pool(spec.head.channels, last);
    push(
        "head".into(),
        format!("conv1x1, {}, global pool", spec.head.activation),
        (c_in, spec.head.channels),
        (last, (1, 1)),
        t,
    );

    let mut t = Tally::default();
    t.linear(spec.head.channels, spec.classes);
    let dropout = if spec.dropout > 0.0 { format!("dropout {}, ", spec.dropout) } else { String::new() };
    push(
        "classifier".into(),
        format!("{dropout}linear"),
        (spec.head.channels, spec.classes),
        ((1, 1), (1, 1)),
        t,
    );

    let params = layers.iter().map(|l| l.params).sum();
    let madds = layers.iter().map(|l| l.madds).sum();
    let thop_flops = layers.iter().map(|l| l.thop_flops).sum();
    CostReport { model: spec.name.clone(), input_size: input, layers, params, madds, thop_flops }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::{efficientnet_lite0, fairnas_spec, FairnasModel, FairnasVariant};

    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(4_651_352), "4,651,352");
        assert_eq!(super::thousands(388_122_848), "388,122,848");
    }

    fn report(m: FairnasModel, se_ratio: Option<f64>, transfer: bool) -> CostReport {
        cost_report(&fairnas_spec("t", &m.choices(), FairnasVariant { se_ratio, transfer }))
    }

    #[test]
    fn plain_models_match_the_published_exact_sizes() {
        let expected = [
            (FairnasModel::A, 4_651_352, 388_122_848),
            (FairnasModel::B, 4_506_272, 345_297_632),
            (FairnasModel::C, 4_397_864, 321_024_992),
        ];
        for (m, params, madds) in expected {
            let r = report(m, None, false);
            assert_eq!((r.params, r.madds), (params, madds), "{m:?}");
        }
    }

    #[test]
    fn se_models_match_the_published_params() {
        let expected = [
            (FairnasModel::A, 7_103_512, 5_881_920),
            (FairnasModel::B, 6_871_432, 5_693_040),
            (FairnasModel::C, 6_697_720, 5_551_776),
        ];
        for (m, full, half) in expected {
            assert_eq!(report(m, Some(1.0), false).params, full, "{m:?} se1.0");
            assert_eq!(report(m, Some(0.5), false).params, half, "{m:?} se0.5");
        }
    }

    #[test]
    fn transfer_models_match_the_published_params_and_thop_flops() {
        let params = [
            (FairnasModel::A, 1.0, 5_835_322),
            (FairnasModel::B, 1.0, 5_603_242),
            (FairnasModel::C, 1.0, 5_429_530),
            (FairnasModel::A, 0.5, 4_613_730),
            (FairnasModel::B, 0.5, 4_424_850),
            (FairnasModel::C, 0.5, 4_283_586),
        ];
        for (m, r, p) in params {
            assert_eq!(report(m, Some(r), true).params, p, "{m:?} se{r}");
        }
        assert_eq!(report(FairnasModel::A, Some(1.0), true).thop_flops, 403_362_640);
        assert_eq!(report(FairnasModel::B, Some(0.5), true).thop_flops, 358_330_632);
        assert_eq!(report(FairnasModel::C, Some(0.5), true).thop_flops, 333_272_088);
    }

    #[test]
    fn per_layer_rows_sum_to_totals_and_track_resolution() {
        let r = report(FairnasModel::A, None, false);
        assert_eq!(r.layers.len(), 1 + 20 + 2);
        assert_eq!(r.layers[0].out_size, (112, 112));
        assert_eq!(r.layers[2].out_size, (56, 56)); // searchable layer 0
        assert_eq!(r.layers[20].out_size, (7, 7)); // searchable layer 18
        assert_eq!(r.layers.iter().map(|l| l.params).sum::<u64>(), r.params);
    }

    #[test]
    fn lite0_size() {
        // EfficientNet-Lite0: 4,652,008 parameters (the reference checkpoint's learnable tensors).
        let r = cost_report(&efficientnet_lite0());
        assert_eq!(r.params, 4_652_008);
        assert_eq!(r.layers.last().unwrap().out_channels, 1000);
    }
}
