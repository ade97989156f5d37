//! Which sub-networks (paths) of the supernet one training step trains.
//!
//! A path is one choice index per searchable layer. A step asks its sampler for a list of paths;
//! the trainer runs forward and backward for each on the same mini-batch, accumulates the
//! gradients and makes ONE optimizer update (docs/FAIRNAS.md section 5).
//!
//! Samplers are pure functions of (seed, step): resuming at step `s` reproduces exactly the
//! paths an uninterrupted run would have drawn, with no sampler state to save beyond the seed.
//!
//! **Layers with different numbers of choices.** Strict fairness asks that every candidate of a
//! layer is trained equally often in every step. With `P = lcm(n_1, ..., n_L)` paths per step,
//! layer `l` (with `n_l` choices) concatenates `P / n_l` independent random permutations of its
//! choices, so each of its candidates is activated exactly `P / n_l` times per step: exactly once
//! when all layers have the same count (the FairNAS space: 6 paths; NAS-Bench-Macro: 3), never
//! "once, plus a few extra for the small layers", which would break fairness between candidates
//! of the same layer. The cost is more paths per step when the counts differ; a space whose
//! `lcm` is large is refused rather than silently trained unfairly.

use fairnas_ops::rng::SampleRng;

/// The largest number of paths per step a strictly fair sampler accepts (lcm of the choice
/// counts). Larger means the space mixes incompatible choice counts.
pub const MAX_PATHS_PER_STEP: usize = 64;

/// One sub-network: a choice index per searchable layer.
pub type Path = Vec<usize>;

/// A path-sampling strategy.
pub trait PathSampler: Send + Sync {
    /// The paths to train at `step`, in the order the trainer runs them.
    fn paths(&self, step: u64) -> Vec<Path>;
    /// Name for logs, configs and checkpoints.
    fn name(&self) -> &'static str;
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Fisher-Yates with our deterministic generator.
fn permutation(n: usize, rng: &mut SampleRng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.up_to(i as u32) as usize;
        p.swap(i, j);
    }
    p
}

/// Why a sampler cannot draw paths from a space; names the layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    #[error("the search space has no searchable layers")]
    NoLayers,
    #[error("searchable layer {0} has no candidate")]
    EmptyLayer(usize),
    #[error(
        "strict fairness over choice counts {choices:?} needs more than {MAX_PATHS_PER_STEP} paths per step (their lcm)"
    )]
    TooManyPaths { choices: Vec<usize> },
    #[error("path has {given} choices but the space has {layers} layers")]
    PathLength { given: usize, layers: usize },
    #[error("layer {layer}: choice {choice} is out of range (0..{candidates})")]
    Choice { layer: usize, choice: usize, candidates: usize },
}

fn check_choices(choices: &[usize]) -> Result<(), SamplerError> {
    if choices.is_empty() {
        return Err(SamplerError::NoLayers);
    }
    if let Some(l) = choices.iter().position(|&n| n == 0) {
        return Err(SamplerError::EmptyLayer(l));
    }
    Ok(())
}

/// Strict fairness: `P = lcm(choice counts)` paths per step; every candidate of a layer is used
/// exactly `P / n_l` times (once in uniform spaces), positions drawn by independent permutations.
#[derive(Debug, Clone)]
pub struct StrictFair {
    choices: Vec<usize>,
    paths_per_step: usize,
    seed: u64,
}

impl StrictFair {
    pub fn new(choices: &[usize], seed: u64) -> Result<Self, SamplerError> {
        check_choices(choices)?;
        let mut lcm = 1usize;
        for &n in choices {
            lcm = lcm / gcd(lcm, n) * n;
            if lcm > MAX_PATHS_PER_STEP {
                return Err(SamplerError::TooManyPaths { choices: choices.to_vec() });
            }
        }
        Ok(StrictFair { choices: choices.to_vec(), paths_per_step: lcm, seed })
    }

    pub fn paths_per_step(&self) -> usize {
        self.paths_per_step
    }
}

impl PathSampler for StrictFair {
    fn paths(&self, step: u64) -> Vec<Path> {
        let p = self.paths_per_step;
        let mut paths = vec![Vec::with_capacity(self.choices.len()); p];
        for (layer, &n) in self.choices.iter().enumerate() {
            let mut rng = SampleRng::new(self.seed, step, layer as u64);
            let order: Vec<usize> = (0..p / n).flat_map(|_| permutation(n, &mut rng)).collect();
            for (path, &choice) in paths.iter_mut().zip(&order) {
                path.push(choice);
            }
        }
        paths
    }

    fn name(&self) -> &'static str {
        "strict"
    }
}

/// Uniform single path (SPOS): one path per step, every layer's choice uniform.
#[derive(Debug, Clone)]
pub struct UniformSinglePath {
    choices: Vec<usize>,
    seed: u64,
}

impl UniformSinglePath {
    pub fn new(choices: &[usize], seed: u64) -> Result<Self, SamplerError> {
        check_choices(choices)?;
        Ok(UniformSinglePath { choices: choices.to_vec(), seed })
    }
}

impl PathSampler for UniformSinglePath {
    fn paths(&self, step: u64) -> Vec<Path> {
        let mut rng = SampleRng::new(self.seed, step, u64::MAX);
        vec![self.choices.iter().map(|&n| rng.up_to(n as u32 - 1) as usize).collect()]
    }

    fn name(&self) -> &'static str {
        "uniform"
    }
}

/// Expectation fairness, the baseline the FairNAS paper argues against: as many paths per step
/// as strict fairness trains (so the compute per update is the same), but each drawn uniformly
/// and independently, so candidates are trained equally only in expectation.
#[derive(Debug, Clone)]
pub struct ExpectationFair {
    choices: Vec<usize>,
    paths_per_step: usize,
    seed: u64,
}

impl ExpectationFair {
    pub fn new(choices: &[usize], seed: u64) -> Result<Self, SamplerError> {
        let strict = StrictFair::new(choices, seed)?;
        Ok(ExpectationFair { choices: choices.to_vec(), paths_per_step: strict.paths_per_step, seed })
    }
}

impl PathSampler for ExpectationFair {
    fn paths(&self, step: u64) -> Vec<Path> {
        (0..self.paths_per_step)
            .map(|i| {
                let mut rng = SampleRng::new(self.seed ^ 0xE7, step, i as u64);
                self.choices.iter().map(|&n| rng.up_to(n as u32 - 1) as usize).collect()
            })
            .collect()
    }

    fn name(&self) -> &'static str {
        "expectation"
    }
}

/// Always the same path: training one stand-alone network with the supernet trainer.
#[derive(Debug, Clone)]
pub struct FixedPath {
    path: Path,
}

impl FixedPath {
    pub fn new(choices: &[usize], path: Path) -> Result<Self, SamplerError> {
        check_choices(choices)?;
        if path.len() != choices.len() {
            return Err(SamplerError::PathLength { given: path.len(), layers: choices.len() });
        }
        if let Some((layer, (&choice, &candidates))) =
            path.iter().zip(choices).enumerate().find(|(_, (&c, &n))| c >= n)
        {
            return Err(SamplerError::Choice { layer, choice, candidates });
        }
        Ok(FixedPath { path })
    }
}

impl PathSampler for FixedPath {
    fn paths(&self, _step: u64) -> Vec<Path> {
        vec![self.path.clone()]
    }

    fn name(&self) -> &'static str {
        "fixed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Activations per (layer, candidate) in one step.
    fn counts(paths: &[Path], choices: &[usize]) -> Vec<Vec<usize>> {
        let mut c: Vec<Vec<usize>> = choices.iter().map(|&n| vec![0; n]).collect();
        for path in paths {
            assert_eq!(path.len(), choices.len());
            for (l, &choice) in path.iter().enumerate() {
                c[l][choice] += 1;
            }
        }
        c
    }

    fn space() -> impl Strategy<Value = Vec<usize>> {
        prop_oneof![
            Just(vec![6; 19]),
            Just(vec![3; 8]),
            proptest::collection::vec(1..=6usize, 1..30),
            proptest::collection::vec(prop_oneof![Just(2usize), Just(4), Just(8)], 1..12),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn strict_fairness_uses_every_candidate_equally_in_every_step(choices in space(), seed in any::<u64>(), step in any::<u64>()) {
            let sampler = StrictFair::new(&choices, seed).unwrap();
            let paths = sampler.paths(step);
            prop_assert_eq!(paths.len(), sampler.paths_per_step());
            for (l, per_candidate) in counts(&paths, &choices).iter().enumerate() {
                let want = sampler.paths_per_step() / choices[l];
                prop_assert!(per_candidate.iter().all(|&c| c == want), "layer {} counts {:?}", l, per_candidate);
            }
            // Same (seed, step), same paths: what exact resume relies on.
            prop_assert_eq!(paths, sampler.paths(step));
        }

        #[test]
        fn other_samplers_stay_in_range(choices in space(), seed in any::<u64>(), step in any::<u64>()) {
            let uniform = UniformSinglePath::new(&choices, seed).unwrap().paths(step);
            prop_assert_eq!(uniform.len(), 1);
            let expectation = ExpectationFair::new(&choices, seed).unwrap().paths(step);
            for path in uniform.iter().chain(&expectation) {
                prop_assert!(path.iter().zip(&choices).all(|(&c, &n)| c < n));
            }
        }
    }

    #[test]
    fn uniform_spaces_use_each_candidate_exactly_once() {
        let s = StrictFair::new(&[6; 19], 3).unwrap();
        assert_eq!(s.paths_per_step(), 6);
        assert!(counts(&s.paths(0), &[6; 19]).iter().all(|c| c.iter().all(|&k| k == 1)));
        assert_ne!(s.paths(0), s.paths(1), "a new permutation every step");
    }

    #[test]
    fn expectation_fairness_is_only_fair_on_average() {
        let choices = [6usize; 19];
        let sampler = ExpectationFair::new(&choices, 9).unwrap();
        let unequal_steps = (0..50)
            .filter(|&s| counts(&sampler.paths(s), &choices).iter().any(|c| c.iter().any(|&k| k != 1)))
            .count();
        assert!(unequal_steps > 45, "{unequal_steps}");
        let mut total = [0usize; 6];
        for step in 0..2000 {
            for path in sampler.paths(step) {
                total[path[0]] += 1;
            }
        }
        assert!(total.iter().all(|&t| (1850..2150).contains(&t)), "{total:?}");
    }

    #[test]
    fn bad_spaces_and_paths_are_refused() {
        assert!(StrictFair::new(&[], 0).is_err());
        assert!(StrictFair::new(&[3, 0], 0).unwrap_err().to_string().contains("layer 1"));
        assert!(StrictFair::new(&[5, 7, 9], 0).unwrap_err().to_string().contains("lcm"));
        assert!(FixedPath::new(&[3, 3], vec![0, 3]).unwrap_err().to_string().contains("layer 1"));
        assert!(FixedPath::new(&[3, 3], vec![0]).is_err());
        assert_eq!(FixedPath::new(&[3, 3], vec![2, 1]).unwrap().paths(7), vec![vec![2, 1]]);
    }
}
