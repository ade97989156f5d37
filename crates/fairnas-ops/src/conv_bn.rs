//! A pointwise or depthwise convolution, training-mode BN and activation as ONE autograd node.
//!
//! Why: candle's backward pass sums every gradient into a fresh zero-filled buffer
//! (`zeros_like` + `add`), so each graph node costs two extra passes over its output's size. As
//! separate nodes, conv then BN pays that for the convolution's output, the largest tensor of an
//! MBConv block. Here the convolution runs first without a graph node, its output is kept by the
//! op, and the backward pass chains the BN backward and the convolution's backward kernels
//! directly: the same kernels as the separate ops, so the results are the same bits.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use crate::batch_norm::{
    check_rows, dims_nchw, moments_of, normalize, BatchNormAct, BnElement, BnGradInput, BnGradSums,
};
use crate::dense_conv::{dense_conv_grads, DenseConv};
use crate::depthwise::{DepthwiseConv2d, Padding2d};
use crate::depthwise_backward::{DepthwiseInputGrad, DepthwiseWeightGrad};
use crate::layout::{contiguous_slice, dispatch_f32_f64};
use crate::pointwise::{PointwiseConv, PointwiseInputGrad, PointwiseWeightGrad};
use crate::Activation;

/// The convolution before the BN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnConv {
    /// 1x1, stride 1; weight `[O, C]` or `[O, C, 1, 1]`.
    Pointwise,
    /// Depthwise `k x k`; weight `[C, 1, k, k]`.
    Depthwise { stride: usize, padding: Padding2d },
    /// Dense `k x k`; weight `[O, C, k, k]`. The input gets a gradient only when autograd
    /// tracks it (not the stem's image batch).
    Dense { stride: usize, padding: Padding2d },
}

/// Inputs: `x` `[N, C, H, W]`, the conv weight, `[bn weight; bn bias]` `[2, O]`.
#[derive(Debug, Clone)]
struct ConvBnAct {
    conv: BnConv,
    bn: BatchNormAct,
    /// The convolution's output (no autograd graph), read by forward and backward.
    conv_out: Tensor,
}

fn forward_typed<T: BnElement>(op: &ConvBnAct, (ps, pl): (&CpuStorage, &Layout)) -> Result<(Vec<T>, Shape)> {
    let (storage, layout) = op.conv_out.storage_and_layout();
    let Storage::Cpu(cs) = &*storage else {
        candle_core::bail!("conv + batch norm: only CPU tensors are supported by this build")
    };
    let (n, c, hw) = dims_nchw("conv + batch norm", layout)?;
    check_rows("conv + batch norm params", pl, 2, c)?;
    let conv_out = contiguous_slice::<T>(cs, layout)?;
    let params = contiguous_slice::<T>(ps, pl)?;
    let y = normalize(&op.bn, &conv_out, (n, c, hw), &params[..c], &params[c..])?;
    Ok((y, layout.shape().clone()))
}

impl CustomOp3 for ConvBnAct {
    fn name(&self) -> &'static str {
        "fairnas-conv-bn-act"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _xl: &Layout,
        _w: &CpuStorage,
        _wl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_f32_f64(
            "conv + batch norm",
            &[p.dtype(), self.conv_out.dtype()],
            || forward_typed::<f32>(self, (p, pl)),
            || forward_typed::<f64>(self, (p, pl)),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        params: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let params = params.detach();
        let c = &self.conv_out;
        let sums = c.apply_op3_no_bwd(grad_output, &params, &BnGradSums(self.bn.clone()))?;
        let packed = Tensor::cat(&[&params, &sums], 0)?;
        let grad_c = c.apply_op3_no_bwd(grad_output, &packed, &BnGradInput(self.bn.clone()))?;
        let (grad_x, grad_w) = match self.conv {
            BnConv::Pointwise => (
                Some(grad_c.apply_op2_no_bwd(weight, &PointwiseInputGrad)?),
                x.apply_op2_no_bwd(&grad_c, &PointwiseWeightGrad)?.reshape(weight.shape())?,
            ),
            BnConv::Dense { stride, padding } => {
                let (grad_x, grad_w) = dense_conv_grads(x, weight, &grad_c, stride, padding)?;
                (grad_x, grad_w.expect("a dense conv always has a weight gradient"))
            }
            BnConv::Depthwise { stride, padding } => {
                let (_, _, height, width) = x.dims4()?;
                (
                    Some(grad_c.apply_op2_no_bwd(
                        weight,
                        &DepthwiseInputGrad { stride, padding, height, width, simple_cuda_kernel: false },
                    )?),
                    x.apply_op2_no_bwd(
                        &grad_c,
                        &DepthwiseWeightGrad {
                            stride,
                            padding,
                            kernel: weight.dim(2)?,
                            simple_cuda_kernel: false,
                        },
                    )?,
                )
            }
        };
        // sums = [sum dz, sum dz * xhat] = [d bias, d weight]; params are [weight; bias].
        let grad_params = Tensor::stack(&[sums.get(1)?, sums.get(0)?], 0)?;
        Ok((grad_x, Some(grad_w), Some(grad_params)))
    }
}

/// `act(batch_norm(conv(x, weight)))` with batch statistics, differentiable in `x`, `weight`,
/// `bn_weight` and `bn_bias`; also returns the batch's `[mean; biased variance]` `[2, O]` of
/// the convolution's output (for running statistics).
pub fn conv_bn_act(
    x: &Tensor,
    weight: &Tensor,
    conv: BnConv,
    bn_weight: &Tensor,
    bn_bias: &Tensor,
    eps: f64,
    activation: Activation,
) -> Result<(Tensor, Tensor)> {
    let conv_out = match conv {
        BnConv::Pointwise => x.apply_op2_no_bwd(weight, &PointwiseConv)?,
        BnConv::Depthwise { stride, padding } => {
            x.apply_op2_no_bwd(weight, &DepthwiseConv2d { stride, padding })?
        }
        BnConv::Dense { stride, padding } => x.apply_op2_no_bwd(weight, &DenseConv { stride, padding })?,
    };
    let stats = moments_of(&conv_out)?;
    let channels = stats.len();
    let mut flat: Vec<f64> = stats.iter().map(|m| m.0).collect();
    flat.extend(stats.iter().map(|m| m.1));
    let moments = Tensor::from_vec(flat, (2, channels), x.device())?.to_dtype(x.dtype())?;
    let params = Tensor::stack(&[bn_weight, bn_bias], 0)?;
    let op = ConvBnAct { conv, bn: BatchNormAct { eps, activation, moments: Arc::new(stats) }, conv_out };
    Ok((x.apply_op3(weight, &params, op)?, moments))
}
