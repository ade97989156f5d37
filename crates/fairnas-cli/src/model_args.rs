//! The model-selection flags every command that takes a model shares.

use clap::Args;
use fairnas_model::selection::ModelSelection;
use fairnas_model::spec::ArchSpec;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Named model (see `fairnas --help` for the list).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Squeeze-excite ratio of the SE variants (1.0 or 0.5 for the released models).
    #[arg(long, value_name = "R")]
    pub se_ratio: Option<f64>,
    /// CIFAR-10 transfer head (10 classes, Dropout 0.1).
    #[arg(long)]
    pub transfer: bool,
    /// Any architecture as block strings, e.g. "ds_r1_k3_s1_c16 ir_r2_k5_s2_e6_c40".
    #[arg(long, value_name = "BLOCKS")]
    pub arch: Option<String>,
    /// A sub-network as choice digits: 19 digits 0-5 in the FairNAS space, or 8 digits 0-2
    /// with --space nas-bench-macro.
    #[arg(long, value_name = "DIGITS")]
    pub choices: Option<String>,
    /// Search space of --choices: fairnas (default) or nas-bench-macro.
    #[arg(long, value_name = "SPACE")]
    pub space: Option<String>,
}

impl ModelArgs {
    pub fn resolve(&self) -> anyhow::Result<ArchSpec> {
        ModelSelection {
            model: self.model.clone(),
            se_ratio: self.se_ratio,
            transfer: self.transfer,
            arch: self.arch.clone(),
            choices: self.choices.clone(),
            space: self.space.clone(),
        }
        .resolve()
        .map_err(anyhow::Error::msg)
    }
}
