//! `--weights` and the checkpoint flags, mapped onto [`fairnas_model::weights`].

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use fairnas_model::network::Network;
use fairnas_model::spec::ArchSpec;
use fairnas_model::weights;

/// The weight options every command that loads weights shares.
#[derive(Args, Debug, Clone)]
pub struct WeightsArgs {
    /// Weights: a .safetensors file (canonical names), a PyTorch checkpoint (.pth, .pth.tar;
    /// converted in memory), or hf://owner/repo[@revision]/path from the Hugging Face Hub.
    #[arg(long, value_name = "FILE|hf://owner/repo/path")]
    pub weights: String,
    #[command(flatten)]
    pub source: CheckpointSource,
}

/// How to read a PyTorch checkpoint (ignored for safetensors).
#[derive(Args, Debug, Clone, Default)]
pub struct CheckpointSource {
    /// Name layout of a PyTorch checkpoint: auto, fairnas, fairnas-se, efficientnet-pytorch or
    /// canonical.
    #[arg(long, default_value = "auto", value_name = "LAYOUT")]
    pub layout: String,
    /// Checkpoint entry holding the state dict (default: model_state, else state_dict, else the
    /// whole file).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

impl CheckpointSource {
    pub fn options(&self) -> weights::CheckpointSource {
        weights::CheckpointSource { layout: self.layout.clone(), key: self.key.clone() }
    }
}

/// Loads weights for `spec` as f32 candle tensors with canonical names, checked against the spec.
pub fn load_tensors(args: &WeightsArgs, spec: &ArchSpec, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(weights::load_tensors(&args.weights, spec, &args.source.options(), device)?)
}

/// Builds the network for `spec` from `--weights`.
pub fn load_network(args: &WeightsArgs, spec: &ArchSpec, device: &Device) -> Result<Network> {
    Ok(weights::load_network(&args.weights, spec, &args.source.options(), device)?)
}
