//! `fairnas info`: the cost model's per-layer table.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::model_args::ModelArgs;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input resolution (square) the costs are computed for; default: the model's own (224).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
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

pub fn run(args: InfoArgs) -> Result<()> {
    let spec = args.model.resolve()?;
    let input = args.input_size.unwrap_or(spec.input_size);
    anyhow::ensure!((1..=8192).contains(&input), "--input-size {input} must be between 1 and 8192 pixels");
    let report = fairnas_model::cost::cost_report_at(&spec, input);
    if args.json {
        let out = json!({
            "model": spec.name,
            "input_size": input,
            "classes": spec.classes,
            "bn_eps": spec.bn_eps,
            "dropout": spec.dropout,
            "blocks": fairnas_model::block_string::format_blocks(&spec.blocks, spec.default_activation),
            "params": report.params,
            "madds": report.madds,
            "thop_flops": report.thop_flops,
            "layers": report.layers,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "model: {}  (input {input}x{input}, {} classes, BN eps {:e})",
        spec.name, spec.classes, spec.bn_eps
    );
    println!(
        "{:>3}  {:<12} {:<34} {:>11}  {:>15}  {:>11} {:>13} {:>13}",
        "#", "layer", "block", "channels", "resolution", "params", "madds", "thop flops"
    );
    for (i, l) in report.layers.iter().enumerate() {
        println!(
            "{:>3}  {:<12} {:<34} {:>11}  {:>15}  {:>11} {:>13} {:>13}",
            i,
            l.name,
            l.description,
            format!("{}->{}", l.in_channels, l.out_channels),
            format!("{}x{}->{}x{}", l.in_size.0, l.in_size.1, l.out_size.0, l.out_size.1),
            thousands(l.params),
            thousands(l.madds),
            thousands(l.thop_flops),
        );
    }
    println!("params: {}", thousands(report.params));
    println!("multiply-adds: {}", thousands(report.madds));
    println!("thop FLOPs: {}", thousands(report.thop_flops));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(4_651_352), "4,651,352");
        assert_eq!(super::thousands(388_122_848), "388,122,848");
    }
}
