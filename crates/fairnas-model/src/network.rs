//! The candle network that runs any [`ArchSpec`] (eval mode, NCHW, f32 or f64).
//!
//! Weight names are the project's canonical naming, one for every family:
//!
//! ```text
//! stem.conv.weight                 [C, 3, k, k]      stem.bn.{weight,bias,running_mean,running_var}
//! blocks.<i>.expand.conv.weight    [H, C, 1, 1]      blocks.<i>.expand.bn.*      (ir blocks only)
//! blocks.<i>.dw.conv.weight        [H, 1, k, k]      blocks.<i>.dw.bn.*
//! blocks.<i>.se.reduce.{weight,bias}  [R, H, 1, 1], [R]   (SE blocks only)
//! blocks.<i>.se.expand.{weight,bias}  [H, R, 1, 1], [H]
//! blocks.<i>.project.conv.weight   [O, H, 1, 1]      blocks.<i>.project.bn.*
//! head.conv.weight                 [1280, C, 1, 1]   head.bn.*
//! classifier.{weight,bias}         [classes, 1280], [classes]
//! ```
//!
//! A skip block (`sk`, NAS-Bench-Macro's identity choice) has no tensors, or, where it changes
//! stride or width, only `blocks.<i>.project.conv.weight [O, C, 1, 1]` and `blocks.<i>.project.bn.*`.
//!
//! `i` counts every block from 0, so FairNAS searchable layer `j` is `blocks.<j+1>` (block 0 is
//! the fixed depthwise-separable block). Shapes follow PyTorch so converted checkpoints need no
//! transposes. BN keeps its four tensors (training will need them); the eval-mode affine
//! `x * scale + shift` is precomputed at load time.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use fairnas_ops::{
    channel_affine_act, dense_conv2d, depthwise_affine_act, depthwise_conv2d, fold_batch_norm,
    folded_dense_conv2d, folded_pointwise, folded_pointwise_gated, pack_fc, squeeze_excite_gates,
    squeeze_excite_packed, Activation, Padding2d,
};

use crate::spec::{ArchSpec, BlockKind, Padding};

/// BatchNorm over channels with running statistics.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
    /// `weight / sqrt(running_var + eps)`, `[C]`: eval-mode BN as an affine, applied in the
    /// epilogue of the convolution before it.
    scale: Tensor,
    /// `bias - running_mean * scale`, `[C]`.
    shift: Tensor,
    /// `[scale; shift]` as `[2, C]`: the operand of the fused depthwise kernel.
    affine: Tensor,
}

impl BatchNorm2d {
    pub fn load(vb: VarBuilder, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.))?;
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
        let scale = (&weight / (&running_var + eps)?.sqrt()?)?;
        let shift = (&bias - (&running_mean * &scale)?)?;
        Ok(Self {
            affine: Tensor::stack(&[&scale, &shift], 0)?,
            scale,
            shift,
            weight,
            bias,
            running_mean,
            running_var,
            eps,
        })
    }
}

/// The three convolution shapes of the family; each runs on the fastest path we have for it
/// (shared with the supernet, which runs the same shapes with trainable weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// A full k x k convolution (the stem): candle's conv2d.
    Dense { kernel: usize, stride: usize },
    /// 1x1, stride 1: a batched matmul.
    Pointwise,
    /// Depthwise k x k: our custom op.
    Depthwise { kernel: usize, stride: usize },
}

/// Conv (no bias) -> BN -> activation.
#[derive(Debug, Clone)]
struct ConvBnAct {
    weight: Tensor,
    kind: ConvKind,
    padding: Padding,
    bn: BatchNorm2d,
    activation: Activation,
    /// Pointwise and dense convs on the CPU: `[W * scale | shift]` (`W` flattened to
    /// `[O, C*k*k]`), BN folded into the weights once at load time for [`folded_pointwise`] /
    /// [`folded_dense_conv2d`], which apply shift and activation (and a pointwise conv's
    /// residual) in their epilogue.
    folded: Option<Tensor>,
}

fn padding_for(padding: Padding, h: usize, w: usize, kernel: usize, stride: usize) -> Padding2d {
    match padding {
        Padding::Symmetric => Padding2d::symmetric(kernel),
        Padding::TfSame => Padding2d::tf_same(h, w, kernel, stride),
    }
}

impl ConvBnAct {
    #[allow(clippy::too_many_arguments)]
    fn load(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        kind: ConvKind,
        padding: Padding,
        activation: Activation,
        eps: f64,
    ) -> Result<Self> {
        let shape = match kind {
            ConvKind::Dense { kernel, .. } => (out_c, in_c, kernel, kernel),
            ConvKind::Pointwise => (out_c, in_c, 1, 1),
            ConvKind::Depthwise { kernel, .. } => (out_c, 1, kernel, kernel),
        };
        let weight = vb.pp("conv").get(shape, "weight")?;
        let bn = BatchNorm2d::load(vb.pp("bn"), out_c, eps)?;
        let folded = match kind {
            ConvKind::Pointwise if weight.device().is_cpu() => {
                Some(fold_batch_norm(&weight, &bn.scale, &bn.shift)?)
            }
            ConvKind::Dense { kernel, .. } if weight.device().is_cpu() => Some(fold_batch_norm(
                &weight.reshape((out_c, in_c * kernel * kernel))?,
                &bn.scale,
                &bn.shift,
            )?),
            _ => None,
        };
        Ok(Self { weight, kind, padding, bn, activation, folded })
    }

    fn conv(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        match self.kind {
            ConvKind::Pointwise => {
                let out_c = self.weight.dim(0)?;
                let w2 = self.weight.reshape((out_c, c))?;
                let x3 = x.contiguous()?.reshape((n, c, h * w))?;
                w2.broadcast_left(n)?.matmul(&x3)?.reshape((n, out_c, h, w))
            }
            ConvKind::Dense { kernel, stride } => {
                let p = padding_for(self.padding, h, w, kernel, stride);
                if x.device().is_cpu() {
                    // im2col + one GEMM per image, images in parallel (candle's conv2d copies
                    // the batch into its own layout first).
                    return dense_conv2d(x, &self.weight, stride, p);
                }
                if p.is_symmetric() && p.top == p.left {
                    x.conv2d(&self.weight, p.top, stride, 1, 1)
                } else {
                    x.pad_with_zeros(2, p.top, p.bottom)?.pad_with_zeros(3, p.left, p.right)?.conv2d(
                        &self.weight,
                        0,
                        stride,
                        1,
                        1,
                    )
                }
            }
            ConvKind::Depthwise { kernel, stride } => {
                depthwise_conv2d(x, &self.weight, stride, padding_for(self.padding, h, w, kernel, stride))
            }
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_plus(x, None)
    }

    /// Multiply-adds that produced `output`: each output element takes one per weight of its
    /// output channel (`C k^2` for dense and pointwise convs, `k^2` for depthwise ones).
    fn madds(&self, output: &Tensor) -> u64 {
        let per_output = self.weight.elem_count() / self.weight.dim(0).unwrap_or(1).max(1);
        (output.elem_count() * per_output) as u64
    }

    /// `act(bn(conv(x)))`, plus `residual` (after the activation) when given.
    fn forward_plus(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        match (&self.folded, self.kind) {
            (Some(packed), ConvKind::Pointwise) => {
                return folded_pointwise(x, packed, self.activation, residual)
            }
            (Some(packed), ConvKind::Dense { kernel, stride }) => {
                let (_, _, h, w) = x.dims4()?;
                let padding = padding_for(self.padding, h, w, kernel, stride);
                let out = folded_dense_conv2d(x, packed, kernel, stride, padding, self.activation)?;
                return match residual {
                    Some(r) => out + r,
                    None => Ok(out),
                };
            }
            _ => {}
        }
        let out = self.forward_unfused(x)?;
        match residual {
            Some(r) => out + r,
            None => Ok(out),
        }
    }

    fn forward_unfused(&self, x: &Tensor) -> Result<Tensor> {
        if let ConvKind::Depthwise { kernel, stride } = self.kind {
            // BN and activation in the kernel's epilogue: one pass over the output, not three.
            let (_, _, h, w) = x.dims4()?;
            let padding = padding_for(self.padding, h, w, kernel, stride);
            return depthwise_affine_act(x, &self.weight, &self.bn.affine, stride, padding, self.activation);
        }
        // BN's eval affine and the activation in one pass over the convolution's output.
        channel_affine_act(&self.conv(x)?, &self.bn.scale, &self.bn.shift, self.activation)
    }
}

/// Squeeze-excite with its two FC layers packed as `weight | bias` once at load time.
#[derive(Debug, Clone)]
struct SqueezeExciteLayer {
    reduce: Tensor,
    expand: Tensor,
    inner: Activation,
}

impl SqueezeExciteLayer {
    /// Multiply-adds of the two FC layers for `images` images (their packed `weight | bias`
    /// less the biases).
    fn madds(&self, images: usize) -> u64 {
        let (rows, cols) = self.reduce.dims2().unwrap_or_default();
        (2 * rows * cols.saturating_sub(1) * images) as u64
    }
}

/// Any block of the family: each stage is present or not by kind (a skip block may have none).
#[derive(Debug, Clone)]
struct Block {
    expand: Option<ConvBnAct>,
    depthwise: Option<ConvBnAct>,
    se: Option<SqueezeExciteLayer>,
    project: Option<ConvBnAct>,
    residual: bool,
}

impl Block {
    /// The block, each stage timed into `clock` when there is one (as `{prefix}.expand`, ...).
    fn forward(&self, x: &Tensor, clock: &mut StageClock, prefix: &str) -> Result<Tensor> {
        let mut h = match &self.expand {
            Some(e) => clock.time(|| format!("{prefix}.expand"), || e.forward(x), |y| e.madds(y))?,
            None => x.clone(),
        };
        if let Some(dw) = &self.depthwise {
            h = clock.time(|| format!("{prefix}.dw"), || dw.forward(&h), |y| dw.madds(y))?;
        }
        let residual = self.residual.then_some(x);
        if let (Some(se), Some(project @ ConvBnAct { folded: Some(packed), kind: ConvKind::Pointwise, .. })) =
            (&self.se, &self.project)
        {
            // The gates only; the projection scales its input rows by them as it loads them, so
            // the gated hidden tensor is never written and read back.
            let gates = clock.time(
                || format!("{prefix}.se"),
                || squeeze_excite_gates(&h, &se.reduce, &se.expand, se.inner),
                |y| se.madds(y.dim(0).unwrap_or(0)),
            )?;
            return clock.time(
                || format!("{prefix}.project"),
                || folded_pointwise_gated(&h, Some(&gates), packed, project.activation, residual),
                |y| project.madds(y),
            );
        }
        if let Some(se) = &self.se {
            h = clock.time(
                || format!("{prefix}.se"),
                || squeeze_excite_packed(&h, &se.reduce, &se.expand, se.inner),
                |y| se.madds(y.dim(0).unwrap_or(0)),
            )?;
        }
        match (&self.project, residual) {
            (Some(p), residual) => {
                clock.time(|| format!("{prefix}.project"), || p.forward_plus(&h, residual), |y| p.madds(y))
            }
            (None, Some(r)) => h + r,
            (None, None) => Ok(h),
        }
    }
}

/// The wall time of one stage of a forward pass (`Network::forward_timed`). CPU ops run
/// synchronously, so each stage's time is its own; on CUDA the device is synchronised after
/// every stage (which costs the overlap a plain forward would have).
#[derive(Debug, Clone)]
pub struct StageTime {
    /// `stem`, `blocks.3.expand`, `blocks.3.dw`, `blocks.3.se`, `blocks.3.project`, `head`, ...
    pub stage: String,
    /// The stage's output shape.
    pub output: Vec<usize>,
    /// Multiply-adds of the stage over the whole batch (convolutions and FC layers only).
    pub madds: u64,
    pub elapsed: std::time::Duration,
}

/// Collects stage times when timing, and costs nothing (no clock reads, no names) otherwise.
struct StageClock<'a>(Option<&'a mut Vec<StageTime>>);

impl StageClock<'_> {
    fn time(
        &mut self,
        stage: impl FnOnce() -> String,
        run: impl FnOnce() -> Result<Tensor>,
        madds: impl FnOnce(&Tensor) -> u64,
    ) -> Result<Tensor> {
        let Some(times) = self.0.as_deref_mut() else { return run() };
        let started = std::time::Instant::now();
        let out = run()?;
        out.device().synchronize()?;
        let elapsed = started.elapsed();
        times.push(StageTime { stage: stage(), output: out.dims().to_vec(), madds: madds(&out), elapsed });
        Ok(out)
    }
}

/// (canonical name, shape) of every tensor a network loads.
pub type Manifest = Vec<(String, Vec<usize>)>;

/// A VarBuilder backend that hands out zeros and records the name and shape of every tensor
/// asked for, so the network can declare its own manifest without allocating random weights.
#[derive(Default)]
struct ManifestRecorder {
    seen: std::sync::Arc<std::sync::Mutex<Manifest>>,
}

impl candle_nn::var_builder::SimpleBackend for ManifestRecorder {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _hint: Init,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        self.seen
            .lock()
            .map_err(|_| candle_core::Error::msg("manifest recorder poisoned"))?
            .push((name.to_string(), shape.dims().to_vec()));
        Tensor::zeros(shape, dtype, device)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &candle_core::Device) -> Result<Tensor> {
        candle_core::bail!("the manifest recorder needs a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// The CPU forward pass runs the batch in chunks whose largest activation (f32) stays within
/// this, a budget for a 32 MB last-level cache that leaves room for the layer's input and
/// weights. Measured on FairNAS-A (largest activation 2.4 MB per image, 224x224; 2-core EPYC,
/// 32 MB L3): batch 32 at 135 img/s as one pass, 144 img/s in chunks of 4 or 8.
const CPU_CHUNK_BYTES: usize = 20 << 20;

/// A network built from a spec.
#[derive(Debug, Clone)]
pub struct Network {
    /// The largest activation of a pass (a block's hidden tensor), in f32 elements per input
    /// pixel: sizes the CPU's image chunks for any input size.
    largest_activation_per_pixel: f64,
    spec: ArchSpec,
    stem: ConvBnAct,
    blocks: Vec<Block>,
    head: ConvBnAct,
    classifier: candle_nn::Linear,
}

impl Network {
    /// Builds the network, taking every tensor from `vb` under the canonical names. A missing
    /// tensor or a wrong shape is an error naming it.
    pub fn load(spec: &ArchSpec, vb: VarBuilder) -> Result<Self> {
        spec.validate().map_err(candle_core::Error::msg)?;
        let eps = spec.bn_eps;
        let stem = ConvBnAct::load(
            vb.pp("stem"),
            spec.in_channels,
            spec.stem.channels,
            ConvKind::Dense { kernel: spec.stem.kernel, stride: spec.stem.stride },
            spec.stem_padding,
            spec.stem.activation,
            eps,
        )?;
        let mut blocks = Vec::with_capacity(spec.blocks.len());
        for (i, (b, g)) in spec.blocks.iter().zip(spec.block_geometry(spec.input_size)).enumerate() {
            let vb = vb.pp("blocks").pp(i);
            let hidden = g.hidden_channels;
            if b.kind == BlockKind::Skip {
                let project = if b.skip_projects(g.in_channels) {
                    let kind = if b.stride == 1 {
                        ConvKind::Pointwise
                    } else {
                        ConvKind::Dense { kernel: 1, stride: b.stride }
                    };
                    Some(ConvBnAct::load(
                        vb.pp("project"),
                        g.in_channels,
                        g.out_channels,
                        kind,
                        b.padding,
                        Activation::Identity,
                        eps,
                    )?)
                } else {
                    None
                };
                blocks.push(Block { expand: None, depthwise: None, se: None, project, residual: false });
                continue;
            }
            let expand = match b.kind {
                BlockKind::InvertedResidual => Some(ConvBnAct::load(
                    vb.pp("expand"),
                    g.in_channels,
                    hidden,
                    ConvKind::Pointwise,
                    b.padding,
                    b.activation,
                    eps,
                )?),
                BlockKind::DepthwiseSeparable | BlockKind::Skip => None,
            };
            let depthwise = Some(ConvBnAct::load(
                vb.pp("dw"),
                hidden,
                hidden,
                ConvKind::Depthwise { kernel: b.kernel, stride: b.stride },
                b.padding,
                b.activation,
                eps,
            )?);
            let se = match g.se_channels {
                Some(r) => {
                    let vb = vb.pp("se");
                    Some(SqueezeExciteLayer {
                        reduce: pack_fc(
                            &vb.pp("reduce").get((r, hidden, 1, 1), "weight")?,
                            &vb.pp("reduce").get(r, "bias")?,
                        )?,
                        expand: pack_fc(
                            &vb.pp("expand").get((hidden, r, 1, 1), "weight")?,
                            &vb.pp("expand").get(hidden, "bias")?,
                        )?,
                        inner: b.activation,
                    })
                }
                None => None,
            };
            let project = Some(ConvBnAct::load(
                vb.pp("project"),
                hidden,
                g.out_channels,
                ConvKind::Pointwise,
                b.padding,
                Activation::Identity,
                eps,
            )?);
            blocks.push(Block { expand, depthwise, se, project, residual: g.residual });
        }
        let head = ConvBnAct::load(
            vb.pp("head"),
            spec.last_block_channels(),
            spec.head.channels,
            ConvKind::Pointwise,
            Padding::Symmetric,
            spec.head.activation,
            eps,
        )?;
        let vbc = vb.pp("classifier");
        let classifier = candle_nn::Linear::new(
            vbc.get((spec.classes, spec.head.channels), "weight")?,
            Some(vbc.get(spec.classes, "bias")?),
        );
        let pixels = (spec.input_size * spec.input_size) as f64;
        let largest = spec
            .block_geometry(spec.input_size)
            .iter()
            .map(|g| (g.hidden_channels.max(g.in_channels) * g.in_size.0 * g.in_size.1) as f64)
            .fold(0.0, f64::max);
        let largest_activation_per_pixel = largest / pixels;
        Ok(Self { largest_activation_per_pixel, spec: spec.clone(), stem, blocks, head, classifier })
    }

    /// Every tensor the network for `spec` loads, with its shape, sorted by name (the network
    /// itself declares them, so this cannot drift from [`Network::load`]).
    pub fn tensor_manifest(spec: &ArchSpec) -> Result<Manifest> {
        let recorder = ManifestRecorder::default();
        let seen = recorder.seen.clone();
        let vb = VarBuilder::from_backend(Box::new(recorder), DType::F32, candle_core::Device::Cpu);
        Network::load(spec, vb)?;
        let mut out = seen.lock().map_err(|_| candle_core::Error::msg("manifest recorder poisoned"))?.clone();
        out.sort();
        Ok(out)
    }

    /// Checks a set of named tensors against the manifest and reports every problem at once:
    /// missing tensors, unexpected ones and wrong shapes.
    pub fn check_tensors(spec: &ArchSpec, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let manifest = Self::tensor_manifest(spec)?;
        let mut problems = Vec::new();
        for (name, shape) in &manifest {
            match tensors.get(name) {
                None => problems.push(format!("missing tensor {name} {shape:?}")),
                Some(t) if t.dims() != shape.as_slice() => {
                    problems.push(format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()))
                }
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> = manifest.iter().map(|(n, _)| n.as_str()).collect();
        let mut unexpected: Vec<_> = tensors.keys().filter(|k| !known.contains(k.as_str())).collect();
        unexpected.sort();
        problems.extend(unexpected.into_iter().map(|k| format!("unexpected tensor {k}")));
        if problems.is_empty() {
            Ok(())
        } else {
            candle_core::bail!(
                "weights do not fit {} ({} problems):\n  {}",
                spec.name,
                problems.len(),
                problems.join("\n  ")
            )
        }
    }

    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// The device the weights live on (inputs must be moved there).
    pub fn device(&self) -> &candle_core::Device {
        self.classifier.weight().device()
    }

    /// Logits `[N, classes]` for a normalised `[N, 3, H, W]` batch. Eval mode: BN uses running
    /// statistics, dropout is the identity.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let chunk = if x.device().is_cpu() { self.cpu_chunk(h, w) } else { usize::MAX };
        self.forward_in_chunks(x, chunk)
    }

    /// [`Network::forward`] on `chunk` images at a time.
    fn forward_in_chunks(&self, x: &Tensor, chunk: usize) -> Result<Tensor> {
        let n = x.dim(0)?;
        if n <= chunk {
            return self.forward_with(x, &mut StageClock(None));
        }
        // Chunks of images through the whole network, so that every layer's output is still
        // in the last-level cache when the next layer reads it (at batch 32 the early layers'
        // tensors are 50-150 MB and each went through DRAM twice). Each image's logits are the
        // same bits either way: no kernel mixes images.
        let parts = (0..n)
            .step_by(chunk)
            .map(|start| self.forward_with(&x.narrow(0, start, chunk.min(n - start))?, &mut StageClock(None)))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    /// Images per pass on the CPU for `h x w` inputs: as many as keep the largest activation
    /// of the pass within [`CPU_CHUNK_BYTES`].
    fn cpu_chunk(&self, h: usize, w: usize) -> usize {
        let per_image = self.largest_activation_per_pixel * (h * w) as f64 * 4.0;
        ((CPU_CHUNK_BYTES as f64 / per_image.max(1.0)) as usize).max(1)
    }

    /// [`Network::forward`], also returning the wall time of every stage (stem, each block's
    /// expand / depthwise / SE / project, head, pool + classifier), in order: where a model's
    /// latency goes (`fairnas bench --stages`). One pass over the whole batch (no chunking),
    /// so that each stage's time is that of its whole tensor.
    pub fn forward_timed(&self, x: &Tensor) -> Result<(Tensor, Vec<StageTime>)> {
        let mut times = Vec::new();
        let logits = self.forward_with(x, &mut StageClock(Some(&mut times)))?;
        Ok((logits, times))
    }

    fn forward_with(&self, x: &Tensor, clock: &mut StageClock) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != self.spec.in_channels {
            candle_core::bail!(
                "{}: expected {} input channels, got {c}",
                self.spec.name,
                self.spec.in_channels
            );
        }
        let mut h = clock.time(|| "stem".into(), || self.stem.forward(x), |y| self.stem.madds(y))?;
        for (i, b) in self.blocks.iter().enumerate() {
            h = b.forward(&h, clock, &format!("blocks.{i}"))?;
        }
        let h = clock.time(|| "head".into(), || self.head.forward(&h), |y| self.head.madds(y))?;
        clock.time(
            || "pool+classifier".into(),
            || self.classify(&h.mean((2, 3))?),
            |y| (y.elem_count() * self.spec.head.channels) as u64,
        )
    }

    /// The same network without BN folded into the pointwise and dense convs: every layer as separate
    /// conv, affine + activation and residual ops (the reference for the folded path).
    #[cfg(test)]
    fn unfolded(&self) -> Self {
        let mut net = self.clone();
        let layers = net.blocks.iter_mut().flat_map(|b| [&mut b.expand, &mut b.project]).flatten();
        for layer in layers.chain([&mut net.head, &mut net.stem]) {
            layer.folded = None;
        }
        net
    }

    /// The linear classifier, one image at a time: a single `[N, C] x [C, K]` GEMM blocks its
    /// reduction differently for different N, so an image's logits would depend (in the last
    /// bits) on how many images share its batch. On the CPU [`fairnas_ops::linear`] (a fixed
    /// order dot product per logit), elsewhere `N` matrix-vector products: every image gets
    /// bit-identical logits whatever the batch size.
    fn classify(&self, features: &Tensor) -> Result<Tensor> {
        if let (true, Some(bias)) = (features.device().is_cpu(), self.classifier.bias()) {
            // Our row-by-row dot products: the same per-image bits, without the GEMM library's
            // slow 1-column products.
            return fairnas_ops::linear(&features.contiguous()?, self.classifier.weight(), bias);
        }
        let n = features.dim(0)?;
        // [N, K, C] (stride-0 batch, as in the pointwise convolutions) x [N, C, 1].
        let weight = self.classifier.weight().broadcast_left(n)?;
        let logits = weight.matmul(&features.unsqueeze(2)?)?.squeeze(2)?;
        match self.classifier.bias() {
            Some(bias) => logits.broadcast_add(bias),
            None => Ok(logits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::cost_report;
    use crate::selection::{all_named_models, ModelSelection};
    use candle_core::Device;
    use candle_nn::VarMap;

    /// Parameters the instantiated network actually created, running statistics excluded.
    fn instantiated_params(spec: &ArchSpec) -> u64 {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Network::load(spec, vb).unwrap();
        let data = varmap.data().lock().unwrap();
        data.iter()
            .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
            .map(|(_, v)| v.elem_count() as u64)
            .sum()
    }

    #[test]
    fn instantiated_parameter_count_equals_cost_model_for_every_named_model() {
        for name in all_named_models() {
            let spec = ModelSelection::named(&name).resolve().unwrap();
            assert_eq!(instantiated_params(&spec), cost_report(&spec).params, "{name}");
        }
    }

    #[test]
    fn manifest_lists_exactly_what_the_network_instantiates() {
        for name in ["fairnas-a-se-0.5-transfer", "efficientnet-lite0"] {
            let spec = ModelSelection::named(name).resolve().unwrap();
            let varmap = VarMap::new();
            Network::load(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
            let mut instantiated: Vec<_> =
                varmap.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
            instantiated.sort();
            assert_eq!(Network::tensor_manifest(&spec).unwrap(), instantiated, "{name}");
        }
    }

    /// BN folded into the pointwise weights, with shift, activation and residual in the
    /// GEMM's epilogue, gives the separate ops' logits within 1e-4 relative (f32; the largest
    /// logit sets the scale), for a plain, an SE and a NAS-Bench-Macro network.
    #[test]
    fn folded_pointwise_layers_match_the_unfused_network() -> Result<()> {
        let dev = Device::Cpu;
        let macro_net = ModelSelection {
            choices: Some("01212012".into()),
            space: Some("nas-bench-macro".into()),
            ..Default::default()
        };
        for selection in
            [ModelSelection::named("fairnas-a"), ModelSelection::named("fairnas-c-se"), macro_net]
        {
            let spec = selection.resolve().unwrap();
            let name = &spec.name;
            let net = crate::synthetic::synthetic_network(&spec, 3, DType::F32, &dev)?;
            let x = Tensor::randn(0f32, 1., (2, spec.in_channels, spec.input_size, spec.input_size), &dev)?;
            let folded = net.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let unfolded = net.unfolded().forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let scale = unfolded.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = folded.iter().zip(&unfolded).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
            assert!(err < 1e-4, "{name}: max relative difference {err}");
            assert!(folded != unfolded, "{name}: the folded path did not run");
        }
        Ok(())
    }

    /// A batch run in chunks (as the CPU forward does for large batches) gives every image the
    /// bits of one pass over the whole batch.
    #[test]
    fn chunked_forward_gives_the_bits_of_one_pass() -> Result<()> {
        let dev = Device::Cpu;
        let spec = ModelSelection::named("fairnas-b").resolve().unwrap();
        let net = crate::synthetic::synthetic_network(&spec, 2, DType::F32, &dev)?;
        let x = Tensor::randn(0f32, 1., (7, 3, 64, 64), &dev)?;
        let whole = net.forward_with(&x, &mut StageClock(None))?.flatten_all()?.to_vec1::<f32>()?;
        let chunked = net.forward_in_chunks(&x, 3)?;
        assert_eq!(chunked.dims(), [7, 1000]);
        assert_eq!(chunked.flatten_all()?.to_vec1::<f32>()?, whole);
        assert_eq!(net.cpu_chunk(224, 224), 8, "FairNAS-B's largest activation is 2.4 MB per 224x224 image");
        Ok(())
    }

    /// The timed forward is the forward (same bits), its stages come in network order, and
    /// their multiply-adds add up to the cost model's (which counts the same layers from the
    /// spec alone), per image times the batch.
    #[test]
    fn timed_forward_gives_the_same_logits_and_accounts_for_every_multiply_add() -> Result<()> {
        let dev = Device::Cpu;
        let spec = ModelSelection::named("fairnas-c").resolve().unwrap();
        let net = crate::synthetic::synthetic_network(&spec, 5, DType::F32, &dev)?;
        let x = Tensor::randn(0f32, 1., (2, 3, 96, 96), &dev)?;
        let (logits, stages) = net.forward_timed(&x)?;
        assert_eq!(
            logits.flatten_all()?.to_vec1::<f32>()?,
            net.forward(&x)?.flatten_all()?.to_vec1::<f32>()?
        );
        let names: Vec<&str> = stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(&names[..4], ["stem", "blocks.0.dw", "blocks.0.project", "blocks.1.expand"]);
        assert_eq!(&names[names.len() - 3..], ["blocks.19.project", "head", "pool+classifier"]);
        assert_eq!(stages[0].output, [2, 32, 48, 48]);
        let mut small = spec.clone();
        small.input_size = 96;
        let madds: u64 = stages.iter().map(|s| s.madds).sum();
        assert_eq!(madds, 2 * cost_report(&small).madds);
        Ok(())
    }

    #[test]
    fn pointwise_matmul_matches_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (3, 8, 5, 6), &dev)?;
        let w = Tensor::randn(0f32, 1., (4, 8, 1, 1), &dev)?;
        let bn = BatchNorm2d::load(
            VarBuilder::from_tensors(std::collections::HashMap::new(), DType::F32, &dev).pp("x"),
            4,
            1e-5,
        );
        // An empty VarBuilder must fail and name the tensor.
        let err = bn.unwrap_err().to_string();
        assert!(err.contains("x.weight"), "{err}");
        let conv = ConvBnAct {
            weight: w.clone(),
            kind: ConvKind::Pointwise,
            padding: Padding::Symmetric,
            bn: BatchNorm2d::load(VarBuilder::zeros(DType::F32, &dev), 4, 1e-5)?,
            activation: Activation::Identity,
            folded: None,
        };
        let got = conv.conv(&x)?;
        let want = x.conv2d(&w, 0, 1, 1, 1)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
