//! Pareto dominance, Deb's constrained domination, non-dominated sorting, crowding distance
//! and hypervolume. Every objective here is *minimised*: callers negate the ones they maximise
//! (see [`crate::objective::Direction`]).

use serde::{Deserialize, Serialize};

/// One architecture's objective values (minimisation form) and how far it breaks the
/// constraints (0 when feasible).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fitness {
    pub values: Vec<f64>,
    pub violation: f64,
}

impl Fitness {
    pub fn feasible(&self) -> bool {
        self.violation <= 0.0
    }
}

/// `a` is no worse than `b` everywhere and better somewhere.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        if x > y {
            return false;
        }
        better |= x < y;
    }
    better
}

/// Deb's constrained domination: a feasible solution beats an infeasible one, of two infeasible
/// ones the smaller violation wins, of two feasible ones Pareto dominance decides.
pub fn constrained_dominates(a: &Fitness, b: &Fitness) -> bool {
    match (a.feasible(), b.feasible()) {
        (true, false) => true,
        (false, true) => false,
        (false, false) => a.violation < b.violation,
        (true, true) => dominates(&a.values, &b.values),
    }
}

/// Fast non-dominated sort (Deb et al. 2002) under constrained domination: the fronts in
/// order, each a list of indices in increasing order.
pub fn non_dominated_sort(items: &[Fitness]) -> Vec<Vec<usize>> {
    let n = items.len();
    let mut dominated_by_me: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut dominators = vec![0usize; n];
    for i in 0..n {
        for j in i + 1..n {
            if constrained_dominates(&items[i], &items[j]) {
                dominated_by_me[i].push(j);
                dominators[j] += 1;
            } else if constrained_dominates(&items[j], &items[i]) {
                dominated_by_me[j].push(i);
                dominators[i] += 1;
            }
        }
    }
    let mut fronts = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| dominators[i] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &dominated_by_me[i] {
                dominators[j] -= 1;
                if dominators[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        fronts.push(current);
        current = next;
    }
    fronts
}

/// Crowding distance of each member of `front` (same order): the normalised perimeter of the
/// box its neighbours span, summed over objectives; the extremes get infinity.
pub fn crowding_distance(items: &[Fitness], front: &[usize]) -> Vec<f64> {
    let mut distance = vec![0.0; front.len()];
    if front.len() <= 2 {
        return vec![f64::INFINITY; front.len()];
    }
    let objectives = items[front[0]].values.len();
    for m in 0..objectives {
        let mut order: Vec<usize> = (0..front.len()).collect();
        let value = |k: usize| items[front[k]].values[m];
        order.sort_by(|&a, &b| value(a).total_cmp(&value(b)).then(a.cmp(&b)));
        let (lo, hi) = (value(order[0]), value(order[order.len() - 1]));
        distance[order[0]] = f64::INFINITY;
        distance[order[order.len() - 1]] = f64::INFINITY;
        if hi > lo {
            for w in 1..order.len() - 1 {
                distance[order[w]] += (value(order[w + 1]) - value(order[w - 1])) / (hi - lo);
            }
        }
    }
    distance
}

/// Indices of the non-dominated points (plain Pareto dominance), duplicates kept once (the
/// lowest index).
pub fn pareto_front(points: &[Vec<f64>]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            !points.iter().enumerate().any(|(j, q)| dominates(q, &points[i]) || (j < i && q == &points[i]))
        })
        .collect()
}

/// The hypervolume dominated by `points` and bounded by `reference` (minimisation: the volume
/// of the region every point of which some point is better than, and the reference worse).
/// Points not strictly better than the reference in every objective add nothing. Exact:
/// a sweep in 2 objectives, slicing along the last objective above that (fine for the few
/// hundred points of a front in 3-4 objectives).
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let inside: Vec<&[f64]> = points
        .iter()
        .map(Vec::as_slice)
        .filter(|p| p.len() == reference.len() && p.iter().zip(reference).all(|(v, r)| v < r))
        .collect();
    volume(&inside, reference)
}

fn volume(points: &[&[f64]], reference: &[f64]) -> f64 {
    let d = reference.len();
    if points.is_empty() || d == 0 {
        return 0.0;
    }
    if d == 1 {
        return reference[0] - points.iter().fold(f64::INFINITY, |m, p| m.min(p[0]));
    }
    if d == 2 {
        let mut sorted = points.to_vec();
        sorted.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
        let (mut area, mut best_y) = (0.0, reference[1]);
        for p in sorted {
            if p[1] < best_y {
                area += (reference[0] - p[0]) * (best_y - p[1]);
                best_y = p[1];
            }
        }
        return area;
    }
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a[d - 1].total_cmp(&b[d - 1]));
    let mut total = 0.0;
    for i in 0..sorted.len() {
        let upper = if i + 1 < sorted.len() { sorted[i + 1][d - 1] } else { reference[d - 1] };
        let depth = upper - sorted[i][d - 1];
        if depth > 0.0 {
            let slice: Vec<&[f64]> = sorted[..=i].iter().map(|p| &p[..d - 1]).collect();
            total += volume(&slice, &reference[..d - 1]) * depth;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(values: &[f64], violation: f64) -> Fitness {
        Fitness { values: values.to_vec(), violation }
    }

    #[test]
    fn sorts_fronts_and_prefers_feasible() {
        let items = vec![
            fit(&[1.0, 4.0], 0.0),
            fit(&[2.0, 2.0], 0.0),
            fit(&[4.0, 1.0], 0.0),
            fit(&[3.0, 3.0], 0.0),  // dominated by 1
            fit(&[0.0, 0.0], 0.5),  // best values, but infeasible
            fit(&[5.0, 5.0], 0.0),  // dominated by everything feasible
            fit(&[0.0, 0.0], 0.25), // infeasible, less so than 4
        ];
        assert_eq!(non_dominated_sort(&items), vec![vec![0, 1, 2], vec![3], vec![5], vec![6], vec![4]]);
        let d = crowding_distance(&items, &[0, 1, 2]);
        assert!(d[0].is_infinite() && d[2].is_infinite());
        assert!((d[1] - ((4.0 - 1.0) / 3.0 + (4.0 - 1.0) / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn hypervolume_of_known_sets() {
        let r = [4.0, 4.0];
        assert_eq!(hypervolume(&[vec![1.0, 3.0], vec![2.0, 2.0], vec![3.0, 1.0]], &r), 6.0);
        // Dominated and out-of-box points change nothing.
        let more = [vec![1.0, 3.0], vec![2.0, 2.0], vec![3.0, 1.0], vec![3.0, 3.0], vec![5.0, 0.0]];
        assert_eq!(hypervolume(&more, &r), 6.0);
        assert_eq!(hypervolume(&[vec![0.0, 0.0, 0.0]], &[2.0, 3.0, 4.0]), 24.0);
        assert_eq!(pareto_front(&more), vec![0, 1, 2, 4]);
    }

    /// 3-D against an independent count: integer points, so the dominated region is a union
    /// of unit cells whose lower corners we can enumerate.
    #[test]
    fn hypervolume_in_three_dimensions_matches_counting_cells() {
        let mut state = 12345u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % n) as f64
        };
        for _ in 0..20 {
            let points: Vec<Vec<f64>> = (0..8).map(|_| vec![next(8), next(8), next(8)]).collect();
            let r = [8.0, 8.0, 8.0];
            let mut cells = 0;
            for x in 0..8 {
                for y in 0..8 {
                    for z in 0..8 {
                        let c = [x as f64, y as f64, z as f64];
                        cells += usize::from(points.iter().any(|p| p.iter().zip(&c).all(|(a, b)| a <= b)));
                    }
                }
            }
            assert_eq!(hypervolume(&points, &r), cells as f64, "{points:?}");
        }
    }
}
