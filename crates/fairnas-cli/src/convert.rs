//! `fairnas convert`: a checkpoint to a safetensors file with canonical names
//! ([`fairnas_model::weights::convert_file`]) or to ONNX ([`fairnas_data::deploy`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgAction, Args, ValueEnum};
use fairnas_data::deploy::convert_to_onnx;
use fairnas_model::selection::ModelSelection;
use fairnas_model::weights::CheckpointSource;

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// The checkpoint: a PyTorch file (legacy or zip torch.save), hf://owner/repo/path, or
    /// (with --to onnx) a safetensors file with canonical names.
    #[arg(long, value_name = "FILE")]
    pub input: String,
    /// Where to write the converted file (written atomically).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// What to write: safetensors (canonical names) or onnx (a standard ONNX graph, opset 17).
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    pub to: Format,
    /// ONNX: fold BatchNorm into the convolutions (`--fold-bn false` keeps BatchNormalization).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub fold_bn: bool,
    #[command(flatten)]
    pub model: ModelSelection,
    #[command(flatten)]
    pub source: CheckpointSource,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Output formats of `convert` and `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Safetensors,
    Onnx,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let spec = args.model.resolve()?;
    match args.to {
        Format::Onnx => {
            let file = convert_to_onnx(&args.input, &args.output, &spec, &args.source, args.fold_bn)?;
            print(&file, args.json)
        }
        Format::Safetensors => print(
            &fairnas_model::weights::convert_file(&args.input, &args.output, &spec, &args.source)?,
            args.json,
        ),
    }
}

fn print<T: serde::Serialize + std::fmt::Display>(summary: &T, json: bool) -> Result<()> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(summary)?),
        false => println!("{summary}"),
    }
    Ok(())
}
