//! Data-parallel jobs of the `fairnas` binary on real MPI processes (`mpiexec`, MPICH's Hydra)
//! and the real CIFAR-10 subset in `data/cifar10-nas`: what a 2-rank job computes, that a
//! killed rank ends the job and the job resumes bit for bit, and that `rank` and `search` give
//! what one process gives.
//!
//! MPI traffic stays on this machine (`../shared/MPI.md`): shared memory between the ranks
//! (`UCX_TLS=self,sm`), Hydra's control port on localhost. Built with `--features mpi`;
//! `.ci/run` installs MPICH and runs these.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{ok, repo};

fn scratch(name: &str) -> PathBuf {
    common::scratch("distributed", name)
}

fn mpiexec(ranks: usize, args: &[&str]) -> Command {
    let mut command = Command::new("mpiexec");
    command
        .env("UCX_TLS", "self,sm")
        .args(["-n", &ranks.to_string(), "-hosts", "localhost", "-iface", "lo"])
        .arg(env!("CARGO_BIN_EXE_fairnas"))
        .args(["--threads", "1"])
        .args(args);
    command
}

fn job(ranks: usize, args: &[&str]) -> Output {
    mpiexec(ranks, args).output().expect("mpiexec runs (MPICH installed?)")
}

fn job_ok(ranks: usize, args: &[&str]) -> String {
    let out = job(ranks, args);
    assert!(
        out.status.success(),
        "{ranks}-rank job {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `'static` copy of a test's path (the helpers take `&str` flags).
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn data() -> String {
    repo().join("data/cifar10-nas").display().to_string()
}

/// `train-supernet` flags: NAS-Bench-Macro, strict fairness (3 paths per step), `batch` images
/// per BN batch, `steps` steps, a checkpoint after every step.
fn train_args<'a>(data: &'a str, out: &'a str, batch: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train-supernet",
        "--data",
        data,
        "--out",
        out,
        "--batch-size",
        batch,
        "--max-steps",
        steps,
        "--checkpoint-every",
        "1",
        "--epochs",
        "2",
        "--json",
    ]
}

/// Every tensor of a checkpoint as f32 values, by name.
fn tensors(run: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, values)
        })
        .collect()
}

fn state(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap()
}

/// 2 ranks x 32 images per step against 1 process accumulating the same two shards of 32.
///
/// BN: each shard is its own BN batch in both jobs (BN is local to a rank, as in every peer),
/// which is why the reference is 1 x (2 shards of 32) and not 1 x 64. The learnable parameters
/// and momentum buffers must agree to 1e-5 relative. The BN running statistics differ by
/// design: the 2-rank job averages each rank's own at every checkpoint, the single process
/// updates them shard after shard (momentum 0.1: (1-m)^2 r + (1-m) m mu0 + m mu1 against
/// (1-m) r + m (mu0 + mu1) / 2), so here they only have to be finite; the averaging itself is
/// a unit test (`trainer::tests`).
#[test]
fn two_ranks_compute_what_one_process_accumulating_two_shards_computes() {
    let (data, dir) = (data(), scratch("equivalence"));
    let (two, one) = (dir.join("two").display().to_string(), dir.join("one").display().to_string());
    // 256 images: 4 global batches of 64 per epoch, so the 6 steps cross an epoch's end.
    let mut args = train_args(&data, &two, "32", "6");
    args.extend(["--train-limit", "256"]);
    job_ok(2, &args);
    let mut reference = train_args(&data, &one, "32", "6");
    reference.extend(["--accumulate", "2", "--train-limit", "256"]);
    ok(&[&["--threads", "2"], &reference[..]].concat());
    let (a, b) = (tensors(Path::new(&two)), tensors(Path::new(&one)));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = (0f64, String::new());
    for (name, x) in &a {
        let y = &b[name];
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
        let diff = x.iter().zip(y).fold(0f64, |m, (p, q)| m.max((p - q).abs() as f64)) / scale;
        if name.contains("running_") {
            assert!(x.iter().all(|v| v.is_finite()), "{name}: running statistics");
        } else if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    eprintln!("largest relative difference of a parameter or momentum buffer: {:e} ({})", worst.0, worst.1);
    assert!(worst.0 <= 1e-5, "{} differs by {:e} relative", worst.1, worst.0);
    let (sa, sb) = (state(Path::new(&two)), state(Path::new(&one)));
    assert_eq!(sa["step"], 6);
    assert_eq!(sa["world_size"], 2);
    assert!(sb.get("world_size").is_none(), "a job of one records no size");
    let loss = |s: &serde_json::Value| s["accumulator"]["loss_sum"].as_f64().unwrap();
    assert!((loss(&sa) - loss(&sb)).abs() <= 1e-5 * loss(&sb), "{} vs {}", loss(&sa), loss(&sb));
    assert_eq!(sa["accumulator"]["images"], 2 * 64);
    assert_eq!(sb["accumulator"]["images"], 2 * 64, "the reference accumulates 2 shards of 32");
    assert_eq!(sa["accumulator"]["correct"], sb["accumulator"]["correct"]);
    // The finished epoch's metrics: the global batch's, the same but for time.
    let epoch = |s: &serde_json::Value| {
        let mut m = s["history"][0].clone();
        let o = m.as_object_mut().expect("one finished epoch");
        o.remove("wall_s");
        o.remove("images_per_s");
        m
    };
    assert_eq!(epoch(&sa)["step"], 4);
    let (ea, eb) = (epoch(&sa), epoch(&sb));
    let close = |k: &str| (ea[k].as_f64().unwrap() - eb[k].as_f64().unwrap()).abs() <= 1e-6;
    assert!(
        close("train_loss") && ea["train_top1"] == eb["train_top1"] && ea["lr"] == eb["lr"],
        "{ea} vs {eb}"
    );
}

/// The rank processes of a job: the `fairnas` processes whose command line names `out`.
fn rank_pids(out: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_rank = args.first().is_some_and(|a| a.ends_with("/fairnas"));
        if is_rank && args.iter().any(|a| a == out) {
            pids.push(pid);
        }
    }
    pids
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "the job did not end within {limit:?} of a rank's death");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 8 steps straight == a job whose rank 1 is SIGKILLed after a checkpoint, then `--resume`d
/// at the same size: every tensor bit for bit (BN statistics and momentum included). The kill
/// ends the whole job within seconds; a resume at another size is refused, naming both.
#[test]
fn a_job_with_a_killed_rank_ends_and_resumes_bit_identically() {
    let (data, dir) = (leak(&data()), scratch("resume"));
    let (straight, killed) = (dir.join("straight"), dir.join("killed"));
    let (straight_s, killed_s) = (straight.display().to_string(), killed.display().to_string());
    // 160 images: 5 global batches of 32 per epoch, so the job crosses an epoch's end.
    let run = |out: &'static str| {
        let mut a = train_args(data, out, "16", "8");
        a.extend(["--train-limit", "160"]);
        a
    };
    job_ok(2, &run(leak(&straight_s)));

    let mut child =
        mpiexec(2, &run(leak(&killed_s))).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let step = |out: &Path| {
        let text = std::fs::read_to_string(out.join("state.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
    };
    while step(&killed).is_none_or(|s| s < 3) {
        assert!(child.try_wait().unwrap().is_none(), "the job ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = rank_pids(&killed_s);
    assert_eq!(pids.len(), 2, "two rank processes: {pids:?}");
    let victim = *pids.iter().max().unwrap();
    assert!(Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap().success());
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    assert!(!status.success(), "a job with a killed rank must fail: {status:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(rank_pids(&killed_s).is_empty(), "no rank survives the job");
    let at_kill = step(&killed).unwrap();
    assert!((3..8).contains(&at_kill), "killed at step {at_kill}");

    let mut resume = run(leak(&killed_s));
    resume.push("--resume");
    let err = String::from_utf8_lossy(&common::fairnas(&[&["--threads", "2"], &resume[..]].concat()).stderr)
        .into_owned();
    assert!(err.contains("trained by 2 processes, this job has 1"), "{err}");
    job_ok(2, &resume);
    assert_eq!(step(&killed), Some(8));
    let metrics = |out: &Path| std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!((metrics(&straight), metrics(&killed)), (1, 1), "one finished epoch each");
    let (a, b) = (tensors(&straight), tensors(&killed));
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        let same = x.iter().zip(&b[name]).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{name} differs between the straight and the killed + resumed job");
    }
}

/// A diverging job (a learning rate of 1e4) stops at the first non-finite loss on any rank:
/// the job ends, the error names the rank, the last checkpoint stays whole.
#[test]
fn a_failing_rank_ends_the_job_with_its_name() {
    let (data, dir) = (data(), scratch("nan"));
    let out = dir.join("run").display().to_string();
    let mut args = train_args(&data, &out, "16", "30");
    args.extend(["--lr", "10000"]);
    let started = Instant::now();
    let result = job(2, &args);
    assert!(!result.status.success());
    let err = String::from_utf8_lossy(&result.stderr);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(err.contains("of 2)") && err.contains("loss is"), "{:?}: {err}\n{stdout}", result.status);
    assert!(started.elapsed() < Duration::from_secs(120));
    let saved = state(Path::new(&out))["step"].as_u64().unwrap();
    assert!(saved < 30, "stopped at {saved}");
    assert!(tensors(Path::new(&out)).values().all(|t| t.iter().all(|v| v.is_finite())));
}

/// `rank` and `search` shard their evaluations across 2 ranks (each architecture scored by one
/// rank) and write what one process writes: the same scores, report and front.
#[test]
fn rank_and_search_across_two_ranks_equal_one_process() {
    let (data, dir) = (data(), scratch("scoring"));
    let supernet = dir.join("supernet").display().to_string();
    ok(&[&["--threads", "2"], &train_args(&data, &supernet, "16", "3")[..]].concat());
    let gt = repo().join("data/nas-bench-macro/ground-truth.json").display().to_string();
    let scoring = ["--eval-limit", "40", "--bn-recal-batches", "1", "--bn-recal-batch-size", "16"];
    let rank = |out: &str| {
        let mut a =
            vec!["rank", "--supernet", &supernet, "--ground-truth", &gt, "--archs", "21", "--out", out];
        a.extend(scoring);
        a.push("--json");
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let (r1, r2) = (dir.join("rank1").display().to_string(), dir.join("rank2").display().to_string());
    let solo: serde_json::Value = serde_json::from_str(&ok(&rank(&r1))).unwrap();
    let args2 = rank(&r2);
    let shared: serde_json::Value =
        serde_json::from_str(&job_ok(2, &args2.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    let sorted_lines = |out: &str| {
        let mut lines: Vec<String> = std::fs::read_to_string(Path::new(out).join("scores.jsonl"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted_lines(&r1).len(), 21);
    assert_eq!(sorted_lines(&r1), sorted_lines(&r2), "each architecture's score");
    for key in ["one_shot_loss", "one_shot_top1", "flops_baseline"] {
        assert_eq!(solo[key], shared[key], "{key}");
    }

    let search = |out: &str| {
        let mut a = vec![
            "search",
            "--supernet",
            &supernet,
            "--population",
            "6",
            "--generations",
            "2",
            "--seed",
            "3",
            "--out",
            out,
        ];
        a.extend(scoring);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let (s1, s2) = (dir.join("search1").display().to_string(), dir.join("search2").display().to_string());
    ok(&search(&s1));
    job_ok(2, &search(&s2).iter().map(String::as_str).collect::<Vec<_>>());
    let front = |out: &str| std::fs::read_to_string(Path::new(out).join("front.json")).unwrap();
    assert_eq!(front(&s1), front(&s2));
    assert_eq!(sorted_lines(&s1), sorted_lines(&s2));
}

/// Subcommands that do not shard their work would run once per rank (and `nas`, `export`,
/// `convert` would write the same files from every rank): a job of several refuses them.
#[test]
fn other_subcommands_refuse_a_job_of_several_processes() {
    let result = job(2, &["info", "--model", "fairnas-a"]);
    assert!(!result.status.success());
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(
        err.contains("of 2)") && err.contains("data-parallel jobs: train-supernet, train, rank, search"),
        "{err}"
    );
    // The same build started without a launcher is a job of one and runs it.
    assert!(ok(&["info", "--model", "fairnas-a"]).starts_with("model: fairnas-a"));
}
