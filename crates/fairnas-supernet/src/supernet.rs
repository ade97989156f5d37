//! The weight-sharing supernet of a [`SearchSpace`]: every candidate of every searchable layer
//! has its own weights and its own BN; stem, fixed blocks, head and classifier are shared.
//!
//! Parameters are candle [`Var`]s so a forward pass along one path is differentiable with
//! candle's autograd (our depthwise and squeeze-excite ops bring their own backward kernels).
//! BN runs in training mode (batch statistics, running statistics updated with PyTorch's
//! momentum 0.1 and unbiased variance) or in eval mode.
//!
//! Names: shared parts use the canonical names of [`fairnas_model::network`] (`stem.*`,
//! `blocks.<i>.*` for the fixed blocks, `head.*`, `classifier.*`); candidate `c` of searchable
//! layer `l` lives under `layers.<l>.<c>.` with the block's own sub-names (`expand`, `dw`,
//! `se.reduce`, `se.expand`, `project`). [`Supernet::subnet_weights`] renames one path's tensors
//! to a plain network's names, so a sub-network runs (and is exported) through the verified
//! inference network.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use fairnas_model::network::ConvKind;
use fairnas_model::search_space::SearchSpace;
use fairnas_model::spec::{ArchSpec, BlockKind, BlockSpec, Padding};
use fairnas_ops::rng::SampleRng;
use fairnas_ops::{
    batch_norm_act, channel_affine_act, conv_bn_act, depthwise_conv2d, pack_fc, pointwise_conv,
    squeeze_excite_packed, Activation, BnConv, Padding2d,
};

/// PyTorch's BatchNorm momentum.
pub const BN_MOMENTUM: f64 = 0.1;

/// Whether BN uses (and updates) batch statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
    /// Training-mode statistics for BN recalibration: batch `k` (0-based) enters the running
    /// statistics with momentum `1 / (k + 1)`, so after K batches they are the plain average of
    /// the K batch statistics (PyTorch's `momentum=None`).
    Recalibrate {
        batch: usize,
    },
}

/// A named parameter store: every tensor of the supernet, in creation order.
#[derive(Debug, Default)]
struct Store {
    vars: Vec<(String, Var)>,
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

/// Standard normal draws (Box-Muller) from the per-tensor generator.
fn normals(rng: &mut SampleRng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = rng.uniform().max(f64::MIN_POSITIVE);
            let u2 = rng.uniform();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect()
}

impl Store {
    /// Creates a parameter: conv weights `N(0, 2 / fan_out)` (kaiming, fan-out, as MnasNet/timm
    /// initialise MBConv nets), classifier weights `N(0, 0.01^2)`, BN weight 1, biases, BN bias
    /// and running mean 0, running var 1. A pure function of (seed, name).
    fn param(&mut self, name: String, shape: &[usize], seed: u64, device: &Device) -> Result<Var> {
        let numel: usize = shape.iter().product();
        let last = name.rsplit('.').next().unwrap_or_default();
        let is_bn = name.contains(".bn.");
        let values: Vec<f32> = match last {
            "running_var" => vec![1.0; numel],
            "weight" if is_bn => vec![1.0; numel],
            "bias" | "running_mean" => vec![0.0; numel],
            _ => {
                let mut rng = SampleRng::new(seed, name_hash(&name), 0);
                let std = if name.starts_with("classifier") {
                    0.01
                } else {
                    // fan_out = out_channels * k * k / groups; depthwise weights are [C, 1, k, k].
                    let k2: usize = shape[2..].iter().product();
                    let fan_out =
                        if shape.get(1) == Some(&1) && shape.len() == 4 { k2 } else { shape[0] * k2 };
                    (2.0 / fan_out.max(1) as f64).sqrt()
                };
                normals(&mut rng, numel, std)
            }
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?;
        self.vars.push((name, var.clone()));
        Ok(var)
    }
}

/// BatchNorm with its four tensors.
#[derive(Debug, Clone)]
struct Bn {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    eps: f64,
}

impl Bn {
    fn new(store: &mut Store, prefix: &str, c: usize, eps: f64, seed: u64, dev: &Device) -> Result<Self> {
        let mut p = |t: &str| store.param(format!("{prefix}.{t}"), &[c], seed, dev);
        Ok(Bn {
            weight: p("weight")?,
            bias: p("bias")?,
            running_mean: p("running_mean")?,
            running_var: p("running_var")?,
            eps,
        })
    }

    /// `activation(bn(x))`: batch statistics (fused op, differentiable) in training and
    /// recalibration, running statistics folded into a per-channel affine in eval.
    fn forward(&self, x: &Tensor, mode: Mode, activation: Activation) -> Result<Tensor> {
        let (weight, bias) = (self.weight.as_tensor(), self.bias.as_tensor());
        match mode {
            Mode::Eval => {
                let scale = (self.running_var.as_tensor() + self.eps)?.sqrt()?.recip()?.mul(weight)?;
                let shift = (bias - self.running_mean.as_tensor().mul(&scale)?)?;
                channel_affine_act(x, &scale, &shift, activation)
            }
            Mode::Train | Mode::Recalibrate { .. } => {
                let (y, moments) = batch_norm_act(x, weight, bias, self.eps, activation)?;
                self.update_running(&moments, x.elem_count() / x.dim(1)?, mode)?;
                Ok(y)
            }
        }
    }

    /// Folds a batch's `[mean; biased variance]` over `count` values per channel into the
    /// running statistics (momentum 0.1 in training; a running average in recalibration).
    fn update_running(&self, moments: &Tensor, count: usize, mode: Mode) -> Result<()> {
        let unbiased = (moments.get(1)? * (count as f64 / (count.max(2) - 1) as f64))?;
        let m = match mode {
            Mode::Recalibrate { batch } => 1.0 / (batch as f64 + 1.0),
            _ => BN_MOMENTUM,
        };
        let rm = ((self.running_mean.as_tensor().detach() * (1.0 - m))? + (moments.get(0)? * m)?)?;
        let rv = ((self.running_var.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)
    }
}

/// Conv (no bias) + BN + activation with trainable parameters.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Var,
    kind: ConvKind,
    padding: Padding,
    bn: Bn,
    activation: Activation,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &mut Store,
        prefix: &str,
        in_c: usize,
        out_c: usize,
        kind: ConvKind,
        padding: Padding,
        activation: Activation,
        eps: f64,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        let shape: Vec<usize> = match kind {
            ConvKind::Dense { kernel, .. } => vec![out_c, in_c, kernel, kernel],
            ConvKind::Pointwise => vec![out_c, in_c, 1, 1],
            ConvKind::Depthwise { kernel, .. } => vec![out_c, 1, kernel, kernel],
        };
        let weight = store.param(format!("{prefix}.conv.weight"), &shape, seed, dev)?;
        let bn = Bn::new(store, &format!("{prefix}.bn"), out_c, eps, seed, dev)?;
        Ok(ConvBn { weight, kind, padding, bn, activation })
    }

    fn padding2d(&self, x: &Tensor, kernel: usize, stride: usize) -> Result<Padding2d> {
        let (_, _, h, w) = x.dims4()?;
        Ok(match self.padding {
            Padding::Symmetric => Padding2d::symmetric(kernel),
            Padding::TfSame => Padding2d::tf_same(h, w, kernel, stride),
        })
    }

    fn conv(&self, x: &Tensor) -> Result<Tensor> {
        let pad = |kernel: usize, stride: usize| self.padding2d(x, kernel, stride);
        let weight = self.weight.as_tensor();
        match self.kind {
            ConvKind::Pointwise => pointwise_conv(x, weight),
            ConvKind::Depthwise { kernel, stride } => {
                depthwise_conv2d(x, weight, stride, pad(kernel, stride)?)
            }
            ConvKind::Dense { kernel, stride } => {
                // Pad explicitly and cut the trailing rows/columns no window reaches: candle's
                // conv2d backward fails with a shape mismatch when they are present.
                let p = pad(kernel, stride)?;
                let xp = x.pad_with_zeros(2, p.top, p.bottom)?.pad_with_zeros(3, p.left, p.right)?;
                let (ph, pw) = (xp.dim(2)?, xp.dim(3)?);
                let xp = xp.narrow(2, 0, ph - (ph - kernel) % stride)?.narrow(
                    3,
                    0,
                    pw - (pw - kernel) % stride,
                )?;
                xp.conv2d(weight, 0, stride, 1, 1)
            }
        }
    }

    /// In training and recalibration, every convolution runs fused with its BN and activation
    /// as one autograd node (`fairnas_ops::conv_bn`: same bits as the separate ops, less memory
    /// traffic in the backward pass; the stem's dense convolution computes no gradient for the
    /// image batch).
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let fused = match (mode, self.kind) {
            (Mode::Eval, _) => None,
            (_, ConvKind::Pointwise) => Some(BnConv::Pointwise),
            (_, ConvKind::Depthwise { kernel, stride }) => {
                Some(BnConv::Depthwise { stride, padding: self.padding2d(x, kernel, stride)? })
            }
            (_, ConvKind::Dense { kernel, stride }) => {
                Some(BnConv::Dense { stride, padding: self.padding2d(x, kernel, stride)? })
            }
        };
        let Some(conv) = fused else {
            return self.bn.forward(&self.conv(x)?, mode, self.activation);
        };
        let bn = &self.bn;
        let (y, moments) = conv_bn_act(
            x,
            self.weight.as_tensor(),
            conv,
            bn.weight.as_tensor(),
            bn.bias.as_tensor(),
            bn.eps,
            self.activation,
        )?;
        bn.update_running(&moments, y.elem_count() / y.dim(1)?, mode)?;
        Ok(y)
    }
}

/// One block's parameters (a fixed block or one candidate).
#[derive(Debug, Clone)]
struct BlockParams {
    expand: Option<ConvBn>,
    dw: Option<ConvBn>,
    /// reduce weight, reduce bias, expand weight, expand bias.
    se: Option<[Var; 4]>,
    se_inner: Activation,
    project: Option<ConvBn>,
    residual: bool,
}

impl BlockParams {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &mut Store,
        prefix: &str,
        b: &BlockSpec,
        in_c: usize,
        eps: f64,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        let hidden = b.hidden_channels(in_c);
        let mut conv = |name: &str, i: usize, o: usize, kind: ConvKind, act: Activation| {
            ConvBn::new(store, &format!("{prefix}.{name}"), i, o, kind, b.padding, act, eps, seed, dev)
        };
        if b.kind == BlockKind::Skip {
            let project = if b.skip_projects(in_c) {
                let kind = if b.stride == 1 {
                    ConvKind::Pointwise
                } else {
                    ConvKind::Dense { kernel: 1, stride: b.stride }
                };
                Some(conv("project", in_c, b.out_channels, kind, Activation::Identity)?)
            } else {
                None
            };
            return Ok(BlockParams {
                expand: None,
                dw: None,
                se: None,
                se_inner: b.activation,
                project,
                residual: false,
            });
        }
        let expand = match b.kind {
            BlockKind::InvertedResidual => {
                Some(conv("expand", in_c, hidden, ConvKind::Pointwise, b.activation)?)
            }
            _ => None,
        };
        let dw = conv(
            "dw",
            hidden,
            hidden,
            ConvKind::Depthwise { kernel: b.kernel, stride: b.stride },
            b.activation,
        )?;
        let project = conv("project", hidden, b.out_channels, ConvKind::Pointwise, Activation::Identity)?;
        let se = match b.se_channels(in_c) {
            Some(r) => {
                let mut p = |name: &str, shape: &[usize]| {
                    store.param(format!("{prefix}.se.{name}"), shape, seed, dev)
                };
                Some([
                    p("reduce.weight", &[r, hidden, 1, 1])?,
                    p("reduce.bias", &[r])?,
                    p("expand.weight", &[hidden, r, 1, 1])?,
                    p("expand.bias", &[hidden])?,
                ])
            }
            None => None,
        };
        Ok(BlockParams {
            expand,
            dw: Some(dw),
            se,
            se_inner: b.activation,
            project: Some(project),
            residual: b.has_residual(in_c),
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = match &self.expand {
            Some(e) => e.forward(x, mode)?,
            None => x.clone(),
        };
        if let Some(dw) = &self.dw {
            h = dw.forward(&h, mode)?;
        }
        if let Some([rw, rb, ew, eb]) = &self.se {
            let reduce = pack_fc(rw.as_tensor(), rb.as_tensor())?;
            let expand = pack_fc(ew.as_tensor(), eb.as_tensor())?;
            h = squeeze_excite_packed(&h, &reduce, &expand, self.se_inner)?;
        }
        if let Some(p) = &self.project {
            h = p.forward(&h, mode)?;
        }
        if self.residual {
            h + x
        } else {
            Ok(h)
        }
    }
}

/// A part of the network with its own BN statistics: the shared stem (with any fixed blocks),
/// one candidate of one searchable layer, or the shared head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Stem,
    Layer { layer: usize, choice: usize },
    Head,
}

/// The supernet of a search space.
#[derive(Debug)]
pub struct Supernet {
    space: SearchSpace,
    store: Store,
    stem: ConvBn,
    fixed: Vec<BlockParams>,
    layers: Vec<Vec<BlockParams>>,
    head: ConvBn,
    classifier: (Var, Var),
}

impl Supernet {
    /// Builds the supernet with deterministic initial weights for `seed`.
    pub fn new(space: &SearchSpace, seed: u64, device: &Device) -> Result<Self> {
        let base: &ArchSpec = &space.base;
        let eps = base.bn_eps;
        let mut store = Store::default();
        let stem = ConvBn::new(
            &mut store,
            "stem",
            base.in_channels,
            base.stem.channels,
            ConvKind::Dense { kernel: base.stem.kernel, stride: base.stem.stride },
            base.stem_padding,
            base.stem.activation,
            eps,
            seed,
            device,
        )?;
        let mut channels = base.stem.channels;
        let mut fixed = Vec::new();
        for (i, b) in base.blocks.iter().enumerate() {
            fixed.push(BlockParams::new(&mut store, &format!("blocks.{i}"), b, channels, eps, seed, device)?);
            channels = b.out_channels;
        }
        let mut layers = Vec::new();
        for (l, candidates) in space.layers.iter().enumerate() {
            let out = candidates.first().map_or(channels, |c| c.out_channels);
            if candidates.iter().any(|c| c.out_channels != out) {
                candle_core::bail!("layer {l}: candidates must agree on output channels");
            }
            let built = candidates
                .iter()
                .enumerate()
                .map(|(c, b)| {
                    BlockParams::new(&mut store, &format!("layers.{l}.{c}"), b, channels, eps, seed, device)
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(built);
            channels = out;
        }
        let head = ConvBn::new(
            &mut store,
            "head",
            channels,
            base.head.channels,
            ConvKind::Pointwise,
            Padding::Symmetric,
            base.head.activation,
            eps,
            seed,
            device,
        )?;
        let classifier = (
            store.param("classifier.weight".into(), &[base.classes, base.head.channels], seed, device)?,
            store.param("classifier.bias".into(), &[base.classes], seed, device)?,
        );
        Ok(Supernet { space: space.clone(), store, stem, fixed, layers, head, classifier })
    }

    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    /// Logits `[N, classes]` of the sub-network `path`.
    pub fn forward(&self, x: &Tensor, path: &[usize], mode: Mode) -> Result<Tensor> {
        self.space.check(path).map_err(candle_core::Error::msg)?;
        let mut h = self.forward_stem(x, mode)?;
        for (layer, &choice) in path.iter().enumerate() {
            h = self.forward_layer(layer, choice, &h, mode)?;
        }
        self.forward_head(&h, mode)
    }

    /// The shared part before the searchable layers: stem and fixed blocks.
    pub fn forward_stem(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = self.stem.forward(x, mode)?;
        for b in &self.fixed {
            h = b.forward(&h, mode)?;
        }
        Ok(h)
    }

    /// Candidate `choice` of searchable layer `layer`.
    pub fn forward_layer(&self, layer: usize, choice: usize, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let block = self.layers.get(layer).and_then(|c| c.get(choice)).ok_or_else(|| {
            candle_core::Error::msg(format!("{}: no candidate {choice} at layer {layer}", self.space.name))
        })?;
        block.forward(x, mode)
    }

    /// Head, global average pool and classifier: logits `[N, classes]`.
    pub fn forward_head(&self, h: &Tensor, mode: Mode) -> Result<Tensor> {
        let features = self.head.forward(h, mode)?.mean((2, 3))?;
        let (w, b) = (self.classifier.0.as_tensor(), self.classifier.1.as_tensor());
        features.matmul(&w.t()?)?.broadcast_add(b)
    }

    /// Every parameter with its supernet name, in creation order.
    pub fn named_vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.store.vars.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// The tensors of sub-network `path` under a plain network's canonical names (searchable
    /// layer `l` becomes `blocks.<fixed + l>`): load them with [`fairnas_model::network::Network`]
    /// on `space.subnet(path)`.
    pub fn subnet_weights(&self, path: &[usize]) -> Result<HashMap<String, Tensor>> {
        self.space.check(path).map_err(candle_core::Error::msg)?;
        let mut out = HashMap::new();
        for (name, var) in &self.store.vars {
            if let Some(canonical) = self.canonical_name(name, path) {
                out.insert(canonical, var.as_tensor().copy()?);
            }
        }
        Ok(out)
    }

    /// The inverse of [`Supernet::subnet_weights`]: sets the tensors of sub-network `path`
    /// from canonical names (e.g. weights `fairnas export` wrote, to fine-tune them). Every
    /// tensor of the path must be there with its shape; extra tensors are an error too.
    pub fn load_subnet_weights(&self, path: &[usize], tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.space.check(path).map_err(candle_core::Error::msg)?;
        let mut used = 0;
        let mut problems = Vec::new();
        for (name, var) in &self.store.vars {
            let Some(canonical) = self.canonical_name(name, path) else { continue };
            match tensors.get(&canonical) {
                None => problems.push(format!("missing {canonical}")),
                Some(t) if t.dims() != var.dims() => {
                    problems.push(format!("{canonical}: shape {:?}, expected {:?}", t.dims(), var.dims()))
                }
                Some(t) => {
                    var.set(&t.to_dtype(var.dtype())?)?;
                    used += 1;
                }
            }
        }
        if used != tensors.len() {
            let expected: std::collections::HashSet<String> =
                self.store.vars.iter().filter_map(|(n, _)| self.canonical_name(n, path)).collect();
            let mut extra: Vec<&String> = tensors.keys().filter(|k| !expected.contains(*k)).collect();
            extra.sort();
            problems.extend(extra.into_iter().map(|k| format!("unexpected {k}")));
        }
        if !problems.is_empty() {
            candle_core::bail!("weights do not fit sub-network {path:?}: {}", problems.join(", "));
        }
        Ok(())
    }

    /// A supernet tensor's name in the plain network of `path` (searchable layer `l` becomes
    /// `blocks.<fixed + l>`), or None when it belongs to a candidate off the path.
    fn canonical_name(&self, name: &str, path: &[usize]) -> Option<String> {
        let Some(rest) = name.strip_prefix("layers.") else { return Some(name.to_string()) };
        let mut parts = rest.splitn(3, '.');
        let layer = parts.next()?.parse::<usize>().ok()?;
        let choice = parts.next()?.parse::<usize>().ok()?;
        let tail = parts.next()?;
        (path.get(layer) == Some(&choice)).then(|| format!("blocks.{}.{tail}", self.fixed.len() + layer))
    }

    /// Resets the running statistics of every BN on `path` (before re-estimating them).
    pub fn reset_bn_stats(&self, path: &[usize]) -> Result<()> {
        let prefixes: Vec<String> =
            path.iter().enumerate().map(|(l, c)| format!("layers.{l}.{c}.")).collect();
        self.reset_bn_stats_where(|name| {
            !name.starts_with("layers.") || prefixes.iter().any(|p| name.starts_with(p.as_str()))
        })
    }

    /// Resets the BN statistics of one part of the network (for scoring many sub-networks
    /// part by part, see [`crate::scoring`]).
    pub fn reset_part_bn_stats(&self, part: Part) -> Result<()> {
        match part {
            Part::Stem => self.reset_bn_stats_where(|n| n.starts_with("stem.") || n.starts_with("blocks.")),
            Part::Layer { layer, choice } => {
                let prefix = format!("layers.{layer}.{choice}.");
                self.reset_bn_stats_where(|n| n.starts_with(&prefix))
            }
            Part::Head => self.reset_bn_stats_where(|n| n.starts_with("head.")),
        }
    }

    fn reset_bn_stats_where(&self, selected: impl Fn(&str) -> bool) -> Result<()> {
        for (name, var) in &self.store.vars {
            let on_path = selected(name);
            if on_path && name.ends_with("running_mean") {
                var.set(&var.as_tensor().zeros_like()?)?;
            } else if on_path && name.ends_with("running_var") {
                var.set(&var.as_tensor().ones_like()?)?;
            }
        }
        Ok(())
    }

    /// BN recalibration for scoring a sub-network: resets the statistics of every BN on `path`
    /// and re-estimates them as the average over `batches` (training-mode forwards, no weight
    /// change). Shared BNs are recalibrated too, since their statistics depend on the path.
    pub fn recalibrate_bn<'a>(
        &self,
        path: &[usize],
        batches: impl IntoIterator<Item = &'a Tensor>,
    ) -> Result<usize> {
        self.reset_bn_stats(path)?;
        let mut seen = 0;
        for x in batches {
            self.forward(&x.detach(), path, Mode::Recalibrate { batch: seen })?;
            seen += 1;
        }
        Ok(seen)
    }

    pub fn dtype(&self) -> DType {
        self.classifier.0.dtype()
    }
}
