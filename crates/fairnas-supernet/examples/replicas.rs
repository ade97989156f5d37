//! One process of a data-parallel strict-fair job, through the library alone: run it under an
//! MPI launcher and every rank prints what it trained and what it holds.
//!
//! Each rank draws the step's paths from (seed, step) with no communication, reads its own
//! shard of the global batch (`ImageSource::train_shards`), and calls
//! [`train_step_sharded`], whose one all-reduce per step makes the update the same everywhere.
//! The rank prints one JSON line: a digest of the paths of every step, and a digest of every
//! parameter's bits after the last step. `tests/distributed.rs` runs it on 2 ranks and compares
//! the lines; they must be equal.
//!
//! Run: `cargo build -p fairnas-supernet --features mpi --example replicas &&
//! UCX_TLS=self,sm mpiexec -n 2 -hosts localhost -iface lo target/debug/examples/replicas [STEPS]`

use std::path::Path;

use candle_core::{Device, Tensor};
use fairnas_model::search_space::SearchSpace;
use fairnas_supernet::images::ImageFolder;
use fairnas_supernet::world::{digest, Mpi, World, DIGEST_START};
use fairnas_supernet::{
    train_step_sharded, ImageSource, PathSampler, Sgd, SgdConfig, StepOptions, StrictFair, Supernet,
};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let world = Mpi::init().ok_or("MPI was initialised before")?;
    let steps: u64 = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    let (seed, batch) = (7, 16);
    let space = SearchSpace::nas_bench_macro();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cifar10-nas");
    let images = ImageFolder::open(&data, "train", Some(256), &space)?;
    let supernet = Supernet::new(&space, seed, &Device::Cpu)?;
    let sampler = StrictFair::new(&space.choice_counts(), seed)?;
    let mut sgd = Sgd::new(SgdConfig::default());
    let options = StepOptions::default();
    let mut path_digests = Vec::new();
    let shards = images.train_shards(seed, 0, 0, batch, world.rank(), world.size());
    for (step, shard) in (0..steps).zip(shards) {
        let shard = shard.map_err(|e| e.to_string())?;
        let labels = Tensor::from_vec(shard.labels.clone(), batch, &Device::Cpu)?;
        let x = shard.images(images.image_size(), &Device::Cpu)?;
        let paths = sampler.paths(step);
        path_digests
            .push(format!("{:016x}", digest(paths.iter().flatten().map(|&c| c as u64), DIGEST_START)));
        train_step_sharded(&supernet, &paths, &[(x, labels)], &options, &mut sgd, 0.05, &world)?;
    }
    let mut params = DIGEST_START;
    for (name, var) in supernet.named_vars().filter(|(n, _)| !n.contains("running")) {
        let bits = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        params = digest(name.bytes().map(u64::from).chain(bits.iter().map(|v| v.to_bits() as u64)), params);
    }
    println!(
        "{}",
        serde_json::json!({
            "rank": world.rank(),
            "size": world.size(),
            "paths": path_digests,
            "params": format!("{params:016x}"),
        })
    );
    Ok(())
}
