//! The processes of a data-parallel job, as the trainer and the scorers see them: a rank, a
//! size, and the few collectives they need. [`Solo`] is a job of one process (what every
//! single-machine run uses, at no cost); `Mpi` (feature `mpi`) is MPI's `COMM_WORLD`, started
//! by whatever launches MPI jobs (`mpiexec -n N`, `srun`). Nothing here speaks a protocol of its
//! own: scale-out is MPI's.
//!
//! What the job does with it (docs/DISTRIBUTED.md has the whole contract):
//! - training: every rank draws the same paths from (seed, step), reads its own shard of each
//!   global batch, and the ranks' gradients meet in ONE [`World::sum_f32`] per step;
//! - checkpoints: BN running statistics are averaged ([`World::sum_f64`]), replicas are checked
//!   bit-identical ([`World::gather_u64`]), rank 0 writes;
//! - scoring (`rank`, `search`): each architecture is scored by exactly one rank and the scores
//!   are gathered ([`World::gather_f64`]).

/// A group of processes running the same program on different shards of the data.
///
/// Every collective must be called by every rank, in the same order, with buffers of the same
/// length on every rank; all of them block until every rank has called them.
pub trait World {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of processes in the job.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place; every rank receives the same bits.
    fn sum_f32(&self, values: &mut [f32]);
    /// Element-wise sum over the ranks, in place (f64: BN statistics, metrics).
    fn sum_f64(&self, values: &mut [f64]);
    /// Every rank's `local` (one length on all ranks), concatenated in rank order, on every rank.
    fn gather_f64(&self, local: &[f64]) -> Vec<f64>;
    /// As [`World::gather_f64`], for digests.
    fn gather_u64(&self, local: &[u64]) -> Vec<u64>;
    /// Returns when every rank has called it.
    fn barrier(&self);
    /// Ends the whole job, every rank, with exit status `code`: what a failed rank calls so
    /// that the others do not wait forever in a collective.
    fn abort(&self, code: i32) -> !;

    /// Whether this rank writes the job's files and shows its progress (rank 0).
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// Ends this process after a failure: prints `error (rank r of n): message` on stderr and
    /// exits with status 1; in a job of several processes, ends the whole job ([`World::abort`])
    /// after giving the launcher time to forward the message (MPICH's Hydra drops output still
    /// in flight when it tears a job down).
    fn fail(&self, message: &str) -> ! {
        match self.size() {
            1 => {
                eprintln!("error: {message}");
                std::process::exit(1)
            }
            n => {
                eprintln!("error (rank {} of {n}): {message}", self.rank());
                std::thread::sleep(std::time::Duration::from_millis(500));
                self.abort(1)
            }
        }
    }
}

/// The job this process was started in: MPI's world in a build with the `mpi` feature (a job
/// of one when started without a launcher), else [`Solo`]. In a job of several processes a
/// panic aborts the process, so the launcher ends the job rather than leaving the other ranks
/// waiting in a collective.
pub fn launched() -> Box<dyn World> {
    #[cfg(feature = "mpi")]
    if let Some(world) = Mpi::init() {
        if world.size() > 1 {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default(info);
                std::process::abort();
            }));
        }
        return Box::new(world);
    }
    Box::new(Solo)
}

/// A job of one process: collectives are the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl World for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _values: &mut [f32]) {}
    fn sum_f64(&self, _values: &mut [f64]) {}
    fn gather_f64(&self, local: &[f64]) -> Vec<f64> {
        local.to_vec()
    }
    fn gather_u64(&self, local: &[u64]) -> Vec<u64> {
        local.to_vec()
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Runs `open` on the leader, then (after a barrier) on the other ranks: for opening a run
/// folder whose files the leader creates and the others only read and check.
pub fn leader_first<T>(world: &dyn World, open: impl FnOnce() -> T) -> T {
    if world.is_leader() {
        let opened = open();
        world.barrier();
        opened
    } else {
        world.barrier();
        open()
    }
}

/// The contiguous block of `items` that `rank` of `size` takes: blocks differ in length by at
/// most one, are disjoint, and cover `0..items` in rank order (contiguous, so a rank's
/// architectures keep their common prefixes for [`crate::scoring::PrefixScorer`]).
pub fn block(items: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let size = size.max(1);
    let (base, extra) = (items / size, items % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// FNV-1a over 64-bit words: a digest of bits for comparing replicas, not a cryptographic hash.
pub fn digest(words: impl IntoIterator<Item = u64>, mut state: u64) -> u64 {
    for w in words {
        for byte in w.to_le_bytes() {
            state ^= byte as u64;
            state = state.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    state
}

/// The start value of [`digest`].
pub const DIGEST_START: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(feature = "mpi")]
pub use mpi_world::Mpi;

#[cfg(feature = "mpi")]
mod mpi_world {
    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    /// MPI's `COMM_WORLD`. Started without a launcher, MPI makes a job of one process.
    pub struct Mpi {
        world: SimpleCommunicator,
        local_rank: usize,
        // Dropped last: finalizes MPI.
        _universe: mpi::environment::Universe,
    }

    impl Mpi {
        /// Initialises MPI; `None` when it was initialised before in this process.
        pub fn init() -> Option<Mpi> {
            let universe = mpi::initialize()?;
            let world = universe.world();
            let local_rank = world.split_shared(world.rank()).rank() as usize;
            Some(Mpi { world, local_rank, _universe: universe })
        }

        /// Rank among the processes on this machine (which GPU a rank takes).
        pub fn local_rank(&self) -> usize {
            self.local_rank
        }

        /// The MPI library's version string.
        pub fn library_version() -> String {
            mpi::environment::library_version().unwrap_or_default()
        }
    }

    impl super::World for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn sum_f32(&self, values: &mut [f32]) {
            let send = values.to_vec();
            self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        }
        fn sum_f64(&self, values: &mut [f64]) {
            let send = values.to_vec();
            self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        }
        fn gather_f64(&self, local: &[f64]) -> Vec<f64> {
            let mut all = vec![0.0; local.len() * self.size()];
            self.world.all_gather_into(local, &mut all[..]);
            all
        }
        fn gather_u64(&self, local: &[u64]) -> Vec<u64> {
            let mut all = vec![0; local.len() * self.size()];
            self.world.all_gather_into(local, &mut all[..]);
            all
        }
        fn barrier(&self) {
            self.world.barrier();
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_disjoint_balanced_and_cover_everything() {
        for items in 0..40 {
            for size in 1..7 {
                let blocks: Vec<_> = (0..size).map(|r| block(items, r, size)).collect();
                let joined: Vec<usize> = blocks.iter().flat_map(|b| b.clone()).collect();
                assert_eq!(joined, (0..items).collect::<Vec<_>>(), "{items} items, {size} ranks");
                let lens: Vec<usize> = blocks.iter().map(|b| b.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
            }
        }
    }
}
