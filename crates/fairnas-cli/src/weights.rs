//! `--weights` and the checkpoint flags, mapped onto [`fairnas_model::weights`].

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use fairnas_model::network::Network;
use fairnas_model::spec::ArchSpec;
use fairnas_model::weights::{self, CheckpointSource};

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

/// Builds the network for `spec` from `--weights`.
pub fn load_network(args: &WeightsArgs, spec: &ArchSpec, device: &Device) -> Result<Network> {
    Ok(weights::load_network(&args.weights, spec, &args.source, device)?)
}
