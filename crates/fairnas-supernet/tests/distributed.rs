//! Real MPI processes (`mpiexec`, MPICH's Hydra) running the `replicas` example: every rank of a
//! job trains the same paths each step and ends with bit-identical parameters.
//!
//! MPI traffic stays on this machine: shared memory between the ranks (`UCX_TLS=self,sm`) and
//! Hydra's control port on localhost (`../shared/MPI.md`). Needs the `mpi` feature and an MPI
//! launcher; `.ci/run` installs MPICH.

use std::path::PathBuf;
use std::process::Command;

fn replicas_example() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let debug = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let example = debug.join("examples/replicas");
    assert!(example.is_file(), "{} missing: cargo builds it with the tests (feature mpi)", example.display());
    example
}

/// The JSON line of every rank of an `mpiexec -n ranks` job, by rank.
fn run_job(ranks: usize, steps: u64) -> Vec<serde_json::Value> {
    let output = Command::new("mpiexec")
        .env("UCX_TLS", "self,sm")
        .args(["-n", &ranks.to_string(), "-hosts", "localhost", "-iface", "lo"])
        .arg(replicas_example())
        .arg(steps.to_string())
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("mpiexec runs (MPICH installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "job failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let mut lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON line per rank")).collect();
    lines.sort_by_key(|l| l["rank"].as_u64());
    assert_eq!(lines.len(), ranks, "{stdout}");
    lines
}

#[test]
fn every_rank_trains_the_same_paths_and_holds_the_same_bits() {
    let steps = 4;
    for ranks in [2, 3] {
        let lines = run_job(ranks, steps);
        let first = &lines[0];
        assert_eq!(first["size"], ranks);
        let paths = first["paths"].as_array().expect("paths");
        assert_eq!(paths.len(), steps as usize);
        // Strict fairness draws a new set of paths each step: a constant digest would hide a bug.
        assert!(paths.windows(2).all(|w| w[0] != w[1]), "{paths:?}");
        for line in &lines[1..] {
            assert_eq!(line["paths"], first["paths"], "rank {} trained other paths", line["rank"]);
            assert_eq!(line["params"], first["params"], "rank {} holds other parameters", line["rank"]);
        }
    }
}

/// The data shards differ between ranks, so the parameters after a step depend on the job's
/// size: a job of 2 must not end where a job of 1 (one shard) does. (Equality with one process
/// accumulating the same two shards is `tests/distributed.rs` of the binary.)
#[test]
fn the_job_size_changes_the_step() {
    let one = run_job(1, 2);
    let two = run_job(2, 2);
    assert_eq!(one[0]["paths"], two[0]["paths"]);
    assert_ne!(one[0]["params"], two[0]["params"]);
}
