//! `fairnas`: FairNAS models, search space and tools from one binary.
//!
//! Every subcommand is its flags (clap structs), one call into a library crate, and printing.

// The doc comments on the flag structs are clap's help text, printed verbatim by `--help`
// (`<root>/<wnid>/*`, `hf://owner/repo[@revision]`), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod allocator;
mod bench;
mod bench_step;
mod convert;
mod device;
mod export;
mod gpu_check;
mod hints;
mod info;
mod latency;
mod nas;
mod predict;
mod rank;
mod search;
mod train;
mod verify;
mod weights;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fairnas_supernet::world::World;

#[derive(Parser)]
#[command(
    name = "fairnas",
    version,
    about = "FairNAS in Rust: model family, cost model, inference",
    after_help = fairnas_model::selection::MODEL_HELP
)]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Log level filter (error, warn, info, debug, trace), or RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    /// Run the CUDA kernels' own source on the CPU, under the emulator that test builds carry,
    /// wherever an op has a CUDA kernel (f32, `--device cpu`): how CI checks those kernels.
    #[arg(long, global = true, hide = true)]
    emulate_cuda: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline on the embedded data (or --config): supernet, latency table, NSGA-II
    /// search, export, fine-tune, HTML report.
    Nas(nas::NasArgs),
    /// Per-layer table of a model: block strings, shapes, params, multiply-adds, thop FLOPs.
    Info(info::InfoArgs),
    /// Classify images with a model and its weights (safetensors or a PyTorch checkpoint).
    Predict(predict::PredictArgs),
    /// ImageNet top-1/top-5 of a model on a validation folder (the original verify.py).
    Verify(verify::VerifyArgs),
    /// CIFAR-10 top-1/top-5 of a transfer model (the original transfer_verify.py).
    TransferVerify(verify::TransferVerifyArgs),
    /// Convert a PyTorch checkpoint (.pth/.pth.tar) to safetensors with canonical names.
    Convert(convert::ConvertArgs),
    /// Train a supernet with strictly fair (or uniform / expectation) path sampling.
    TrainSupernet(train::TrainSupernetArgs),
    /// Train one stand-alone network with the supernet trainer (fixed path).
    Train(train::TrainArgs),
    /// Accuracy of one sub-network of a trained supernet, after BN recalibration.
    EvalSubnet(train::EvalSubnetArgs),
    /// Multi-objective evolutionary search (NSGA-II) over a trained supernet.
    Search(search::SearchArgs),
    /// One sub-network of a supernet as a stand-alone model (inherited weights + description).
    Export(export::ExportArgs),
    /// Time every candidate block of a search space: a latency lookup table for `search`.
    LatencyTable(latency::LatencyTableArgs),
    /// Ranking quality of a supernet against a benchmark's stand-alone ground truth.
    Rank(rank::RankArgs),
    /// Inference speed of a model at several batch sizes (synthetic weights; see benches/peers/).
    Bench(bench::BenchArgs),
    /// Time one strictly fair supernet training step (see benches/supernet_step.sh).
    BenchStep(bench_step::BenchStepArgs),
    /// The standing GPU check: every custom op against its CPU reference, kernel and FairNAS-A
    /// timings (needs the cuda build; `--device cpu` runs the same harness on the CPU).
    GpuCheck(gpu_check::GpuCheckArgs),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    crate::allocator::keep_freed_memory();
    let cli = Cli::parse();
    let world = fairnas_supernet::world::launched();
    // Ranks other than the leader log warnings and errors only.
    let level = if world.is_leader() { cli.log.as_str() } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = run(cli, &*world) {
        world.fail(&match hints::for_error(&e) {
            Some(hint) => format!("{e:#}; {hint}"),
            None => format!("{e:#}"),
        });
    }
}

fn run(cli: Cli, world: &dyn World) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    if cli.emulate_cuda {
        fairnas_ops::cuda_emulator::set_enabled(true)?;
    }
    let parallel = matches!(cli.command, Command::TrainSupernet(_) | Command::Train(_));
    let parallel = parallel || matches!(cli.command, Command::Rank(_) | Command::Search(_));
    anyhow::ensure!(parallel || world.size() == 1, "data-parallel jobs: train-supernet, train, rank, search");
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Verify(args) => verify::run_verify(args),
        Command::TransferVerify(args) => verify::run_transfer_verify(args),
        Command::TrainSupernet(args) => train::run_train_supernet(args, world),
        Command::Train(args) => train::run_train(args, world),
        Command::EvalSubnet(args) => train::run_eval_subnet(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchStep(args) => bench_step::run(args),
        Command::GpuCheck(args) => gpu_check::run(args),
        Command::Rank(args) => rank::run_rank(args, world),
        Command::Nas(args) => nas::run_nas(args),
        Command::Search(args) => search::run_search(args, world),
        Command::Export(args) => export::run_export(args),
        Command::LatencyTable(args) => latency::run_latency_table(args),
    }
}
