//! `fairnas info`: the cost model's per-layer table ([`ModelInfo`]).

use anyhow::Result;
use clap::Args;
use fairnas_model::cost::{ModelInfo, INPUT_SIZES};
use fairnas_model::selection::ModelSelection;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelSelection,
    /// Input resolution (square) the costs are computed for; default: the model's own (224).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let spec = args.model.resolve()?;
    let input = args.input_size.unwrap_or(spec.input_size);
    let Some(info) = ModelInfo::at(&spec, input) else {
        anyhow::bail!(
            "--input-size {input} must be between {} and {} pixels",
            INPUT_SIZES.start(),
            INPUT_SIZES.end()
        );
    };
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&info)?),
        false => println!("{info}"),
    }
    Ok(())
}
