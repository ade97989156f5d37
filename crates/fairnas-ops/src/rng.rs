//! The counter-based random stream every layer of the project draws from.
//!
//! A training run, a search and a latency table are pure functions of their seed: every draw is
//! made by a [`SampleRng`] seeded from (seed, epoch or generation, index), never by a generator
//! shared between threads or carried across steps. So a resumed run repeats exactly the
//! batches, augmentations and paths an uninterrupted one would have seen, and the thread count
//! changes nothing.
//!
//! It lives in the bottom crate because image augmentation (`fairnas-data`), path sampling
//! (`fairnas-supernet`) and evolution (`fairnas-search`) must share the same stream, and none
//! of them should depend on another for it.
//!
//! ```
//! use fairnas_ops::rng::{epoch_order, SampleRng};
//! let a = SampleRng::new(7, 0, 3).next_u64();
//! assert_eq!(a, SampleRng::new(7, 0, 3).next_u64()); // a pure function of (seed, epoch, index)
//! let order = epoch_order(5, 7, 0);
//! let mut sorted = order.clone();
//! sorted.sort_unstable();
//! assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
//! ```

/// A small deterministic generator (SplitMix64); one per sample, never shared between threads.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    pub fn new(seed: u64, epoch: u64, index: u64) -> Self {
        let mut rng = SampleRng(seed ^ 0x5DEE_CE66_D1CE_4E5B);
        rng.0 ^= rng.next_u64().wrapping_add(epoch);
        rng.0 ^= rng.next_u64().wrapping_add(index);
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n] (inclusive, as torch.randint(0, n + 1)).
    pub fn up_to(&mut self, n: u32) -> u32 {
        (self.uniform() * (n as f64 + 1.0)) as u32
    }
}

/// The order in which epoch `epoch` visits `len` samples: a Fisher-Yates permutation seeded by
/// (seed, epoch).
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SampleRng::new(seed ^ 0x0123_4567_89AB_CDEF, epoch, u64::MAX);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_that_change_with_epoch_and_seed() {
        let a = epoch_order(1000, 7, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(1000, 7, 0));
        assert_ne!(a, epoch_order(1000, 7, 1));
        assert_ne!(a, epoch_order(1000, 8, 0));
        assert!(epoch_order(0, 1, 1).is_empty());
    }
}
