//! One supernet training step: every path the sampler returns runs forward and backward on the
//! SAME mini-batch, the gradients are accumulated, then ONE optimizer update follows
//! (docs/FAIRNAS.md section 5). Under strict fairness every candidate therefore receives exactly one
//! gradient contribution per step, and so exactly one update.
//!
//! **Shared parameters** (stem, fixed blocks, head, classifier) receive one contribution per
//! path. [`SharedGradient::Sum`] (the default) adds them, as the paper's Algorithm 1 does
//! ("accumulate gradients over the m paths, then update"): the loss of a step is the sum of the
//! paths' losses. [`SharedGradient::Mean`] divides the shared parts' gradient by the number of
//! paths, so they move with the same step size as a single candidate; an option because the
//! original never said which it used and users asked.

use std::collections::HashMap;

use candle_core::{Result, Tensor, D};

use fairnas_ops::sgd::{MomentumUpdate, ParamUpdate, SgdStep};

use crate::sampler::Path;
use crate::supernet::{Mode, Supernet};
use crate::world::World;

/// How the shared parameters' per-path gradients are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharedGradient {
    #[default]
    Sum,
    Mean,
}

/// SGD with momentum, Nesterov and weight decay, in PyTorch's formulation; no decay on BN
/// parameters and biases.
#[derive(Debug, Clone, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// The MnasNet/SPOS-era defaults of docs/FAIRNAS.md section 5.
    fn default() -> Self {
        SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 4e-5 }
    }
}

/// The optimizer state: one momentum buffer per parameter name.
#[derive(Debug, Default)]
pub struct Sgd {
    pub config: SgdConfig,
    pub momentum: HashMap<String, Tensor>,
}

pub(crate) fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

fn decays(name: &str) -> bool {
    !name.contains(".bn.") && !name.ends_with("bias")
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Self {
        Sgd { config, momentum: HashMap::new() }
    }

    /// `p -= lr * d`, with `d` from the gradient, weight decay and momentum as torch.optim.SGD,
    /// in two in-place passes (`fairnas_ops::sgd`: the same operations as the candle formulation
    /// [`Sgd::update_reference`], which a test compares bit for bit).
    ///
    /// The momentum buffers are our own detached tensors: a gradient (or a `Var`) carries its
    /// autograd graph, and a buffer built from it would keep every earlier step's graph,
    /// activations included, alive (seen: +450 MB per NAS-Bench-Macro step until the OOM killer
    /// struck).
    fn update(&mut self, name: &str, param: &candle_core::Var, grad: &Tensor, lr: f64) -> Result<()> {
        let c = &self.config;
        let step = SgdStep {
            lr,
            momentum: c.momentum,
            weight_decay: if decays(name) { c.weight_decay } else { 0.0 },
            nesterov: c.nesterov,
        };
        let p = param.as_tensor();
        let grad = grad.detach();
        if p.device().is_cpu() && p.is_contiguous() {
            let buf = if c.momentum > 0.0 {
                let buf = match self.momentum.get(name) {
                    Some(b) => b.clone(),
                    None => {
                        let b = p.detach().zeros_like()?;
                        self.momentum.insert(name.to_string(), b.clone());
                        b
                    }
                };
                buf.inplace_op3(&grad, &p.detach(), &MomentumUpdate(step))?;
                buf
            } else {
                grad.clone()
            };
            return p.inplace_op3(&grad, &buf, &ParamUpdate(step));
        }
        self.update_reference(name, param, &grad, lr)
    }

    /// The same update as candle tensor ops (any device); the reference for the in-place kernels.
    pub fn update_reference(
        &mut self,
        name: &str,
        param: &candle_core::Var,
        grad: &Tensor,
        lr: f64,
    ) -> Result<()> {
        let c = &self.config;
        let p = param.as_tensor().detach();
        let mut g = grad.detach();
        if c.weight_decay > 0.0 && decays(name) {
            g = (g + (&p * c.weight_decay)?)?;
        }
        if c.momentum > 0.0 {
            let buf = match self.momentum.get(name) {
                Some(b) => ((b * c.momentum)? + &g)?,
                None => g.clone(),
            };
            g = if c.nesterov { (g + (&buf * c.momentum)?)? } else { buf.clone() };
            self.momentum.insert(name.to_string(), buf);
        }
        param.set(&(p - (g * lr)?)?)
    }
}

/// Cross-entropy with label smoothing `eps` (PyTorch's definition), mean over the batch.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = log_p.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let uniform = log_p.mean(D::Minus1)?.neg()?;
    ((nll * (1.0 - eps))? + (uniform * eps)?)?.mean_all()
}

/// Loss and gradient-combination options of a step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepOptions {
    /// Label smoothing of the cross-entropy (0.1 in the MnasNet/SPOS recipe).
    pub label_smoothing: f64,
    pub shared: SharedGradient,
    /// Rescale the accumulated gradient to at most this global L2 norm (running stats excluded).
    pub max_grad_norm: Option<f64>,
}

/// What one step measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Loss of each path, in sampler order.
    pub losses: Vec<f32>,
    /// Top-1 correct predictions of each path on the batch.
    pub correct: Vec<usize>,
    /// Global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
}

/// Runs `paths` on one batch, accumulates their gradients and makes one SGD update with `lr`.
/// A NaN or infinite loss stops before any update, naming the path.
pub fn train_step(
    supernet: &Supernet,
    paths: &[Path],
    images: &Tensor,
    labels: &Tensor,
    options: &StepOptions,
    optimizer: &mut Sgd,
    lr: f64,
) -> Result<StepStats> {
    let mut stats = StepStats { losses: Vec::new(), correct: Vec::new(), grad_norm: None };
    let accumulated = run_paths(supernet, paths, images, labels, options, &mut stats)?;
    update(supernet, accumulated, paths.len(), options, optimizer, lr, &mut stats)?;
    Ok(stats)
}

/// One step of a data-parallel job ([`crate::world`]): `shards` are this rank's parts of the
/// global batch (each its own BN batch). Every path runs on every shard; the rank's summed
/// gradients, with each path's loss and correct count appended, meet the other ranks' in ONE
/// flattened [`World::sum_f32`], are divided by the job's shard count (`shards.len()` x
/// ranks: the gradient of the global batch's mean loss), and every rank makes the same update.
/// The returned losses and counts are the global batch's, identical on every rank.
///
/// One shard in a job of one process is exactly [`train_step`]. Shards are summed in order,
/// each shard's paths first, so 2 ranks of one shard and 1 rank of 2 shards add the same two
/// terms (`tests/distributed.rs` compares them).
#[allow(clippy::too_many_arguments)]
pub fn train_step_sharded(
    supernet: &Supernet,
    paths: &[Path],
    shards: &[(Tensor, Tensor)],
    options: &StepOptions,
    optimizer: &mut Sgd,
    lr: f64,
    world: &dyn World,
) -> Result<StepStats> {
    if let ([(images, labels)], 1) = (shards, world.size()) {
        return train_step(supernet, paths, images, labels, options, optimizer, lr);
    }
    let mut flat: Vec<f32> = Vec::new();
    let mut layout: Vec<(&str, candle_core::Shape)> = Vec::new();
    let (mut losses, mut correct) = (vec![0f32; paths.len()], vec![0f32; paths.len()]);
    for (s, (images, labels)) in shards.iter().enumerate() {
        let mut stats = StepStats { losses: Vec::new(), correct: Vec::new(), grad_norm: None };
        let accumulated = run_paths(supernet, paths, images, labels, options, &mut stats)?;
        let mut offset = 0;
        for (name, _) in supernet.named_vars().filter(|(n, _)| !is_running_stat(n)) {
            let Some(g) = accumulated.get(name) else { continue };
            let values = g.flatten_all()?.to_vec1::<f32>()?;
            if s == 0 {
                layout.push((name, g.shape().clone()));
                flat.extend_from_slice(&values);
            } else {
                flat[offset..offset + values.len()].iter_mut().zip(&values).for_each(|(a, b)| *a += b);
            }
            offset += values.len();
        }
        losses.iter_mut().zip(&stats.losses).for_each(|(a, b)| *a += b);
        correct.iter_mut().zip(&stats.correct).for_each(|(a, &b)| *a += b as f32);
    }
    let gradients = flat.len();
    flat.extend_from_slice(&losses);
    flat.extend_from_slice(&correct);
    world.sum_f32(&mut flat);
    let total = (shards.len() * world.size()) as f32;
    flat[..gradients].iter_mut().for_each(|g| *g /= total);
    let mut stats = StepStats {
        losses: flat[gradients..gradients + paths.len()].iter().map(|l| l / total).collect(),
        correct: flat[gradients + paths.len()..].iter().map(|&c| c.round() as usize).collect(),
        grad_norm: None,
    };
    let device = shards.first().map_or(candle_core::Device::Cpu, |(x, _)| x.device().clone());
    let (mut accumulated, mut offset) = (HashMap::new(), 0);
    for (name, shape) in layout {
        let n = shape.elem_count();
        accumulated.insert(name, Tensor::from_slice(&flat[offset..offset + n], shape, &device)?);
        offset += n;
    }
    update(supernet, accumulated, paths.len(), options, optimizer, lr, &mut stats)?;
    Ok(stats)
}

/// Forward and backward of every path on one batch: the gradients summed over the paths, by
/// parameter name; each path's loss and correct count pushed onto `stats`.
fn run_paths<'a>(
    supernet: &'a Supernet,
    paths: &[Path],
    images: &Tensor,
    labels: &Tensor,
    options: &StepOptions,
    stats: &mut StepStats,
) -> Result<HashMap<&'a str, Tensor>> {
    let mut accumulated: HashMap<&str, Tensor> = HashMap::new();
    let label_values = labels.to_vec1::<u32>()?;
    for path in paths {
        let logits = supernet.forward(images, path, Mode::Train)?;
        let loss = cross_entropy(&logits, labels, options.label_smoothing)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            candle_core::bail!(
                "loss is {value} on path {} (no update made)",
                path.iter().map(|c| c.to_string()).collect::<String>()
            );
        }
        let predictions = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        stats.correct.push(predictions.iter().zip(&label_values).filter(|(p, l)| p == l).count());
        stats.losses.push(value);
        let grads = loss.backward()?;
        for (name, var) in supernet.named_vars() {
            if let Some(g) = grads.get(var) {
                let g = g.detach();
                let sum = match accumulated.remove(name) {
                    Some(previous) => (previous + g)?,
                    None => g,
                };
                accumulated.insert(name, sum);
            }
        }
    }
    Ok(accumulated)
}

/// The shared-gradient rule, clipping, and one SGD update of every parameter with a gradient.
fn update(
    supernet: &Supernet,
    accumulated: HashMap<&str, Tensor>,
    path_count: usize,
    options: &StepOptions,
    optimizer: &mut Sgd,
    lr: f64,
    stats: &mut StepStats,
) -> Result<()> {
    let mut combined: Vec<(&str, &candle_core::Var, Tensor)> = Vec::new();
    for (name, var) in supernet.named_vars() {
        if is_running_stat(name) {
            continue;
        }
        if let Some(g) = accumulated.get(name) {
            let g = if options.shared == SharedGradient::Mean && !name.starts_with("layers.") {
                (g / path_count as f64)?
            } else {
                g.clone()
            };
            combined.push((name, var, g));
        }
    }
    if let Some(max) = options.max_grad_norm {
        let mut sq = 0f64;
        for (_, _, g) in &combined {
            sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        stats.grad_norm = Some(norm);
        if norm > max {
            for (_, _, g) in combined.iter_mut() {
                *g = (&*g * (max / norm))?;
            }
        }
    }
    for (name, var, g) in &combined {
        optimizer.update(name, var, g, lr)?;
    }
    Ok(())
}

#[cfg(test)]
mod sgd_tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The in-place kernels against the candle formulation, bit for bit, over three steps (the
    /// first creates the momentum buffer), for every option combination.
    #[test]
    fn in_place_update_equals_the_candle_formulation() -> Result<()> {
        let dev = Device::Cpu;
        for (momentum, nesterov, weight_decay) in
            [(0.9, true, 4e-5), (0.9, false, 1e-3), (0.0, false, 4e-5), (0.5, true, 0.0)]
        {
            let config = SgdConfig { momentum, nesterov, weight_decay };
            for name in ["layers.0.1.expand.conv.weight", "stem.bn.weight", "classifier.bias"] {
                let init = Tensor::randn(0f32, 1.0, (7, 5), &dev)?;
                let (fast, slow) = (Var::from_tensor(&init)?, Var::from_tensor(&init.copy()?)?);
                let (mut a, mut b) = (Sgd::new(config.clone()), Sgd::new(config.clone()));
                for step in 0..3 {
                    let grad = Tensor::randn(0f32, 1.0, (7, 5), &dev)?;
                    let lr = 0.1 / (step + 1) as f64;
                    a.update(name, &fast, &grad, lr)?;
                    b.update_reference(name, &slow, &grad, lr)?;
                    let bits = |t: &Tensor| -> Vec<u32> {
                        t.flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect()
                    };
                    let what =
                        format!("m {momentum} nesterov {nesterov} wd {weight_decay} {name} step {step}");
                    assert_eq!(bits(fast.as_tensor()), bits(slow.as_tensor()), "{what}: parameter");
                    if momentum > 0.0 {
                        assert_eq!(bits(&a.momentum[name]), bits(&b.momentum[name]), "{what}: momentum");
                    }
                }
            }
        }
        Ok(())
    }
}
