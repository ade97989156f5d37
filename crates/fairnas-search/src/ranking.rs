//! How faithfully one scoring of architectures (one-shot accuracy, FLOPs) orders them compared
//! with the ground truth (stand-alone accuracy): rank correlations and top-k precision.
//!
//! Ties are common on both sides (one-shot accuracies on a few hundred images, identical
//! benchmark entries), so Kendall's tau is tau-b and Spearman's rho uses average ranks, as
//! `scipy.stats.kendalltau` / `spearmanr` do (tests compare against scipy's values).

use serde::Serialize;

/// Kendall's tau-b: (concordant - discordant) / sqrt((pairs - x ties) (pairs - y ties)).
/// O(n^2), exact; n is at most a few thousand here. `None` when either side is constant.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "kendall tau: both sides need one value per item");
    let (mut concordant, mut discordant, mut tied_x, mut tied_y) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            let dx = x[i].partial_cmp(&x[j]).expect("kendall tau: NaN score");
            let dy = y[i].partial_cmp(&y[j]).expect("kendall tau: NaN score");
            use std::cmp::Ordering::Equal;
            match (dx, dy) {
                (Equal, Equal) => {
                    tied_x += 1;
                    tied_y += 1;
                }
                (Equal, _) => tied_x += 1,
                (_, Equal) => tied_y += 1,
                (a, b) if a == b => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let n = x.len() as u64;
    let pairs = n * n.saturating_sub(1) / 2;
    let denominator = ((pairs - tied_x) as f64 * (pairs - tied_y) as f64).sqrt();
    (denominator > 0.0).then(|| (concordant as f64 - discordant as f64) / denominator)
}

/// Pearson's r. `None` when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "pearson: both sides need one value per item");
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    let denominator = (sxx * syy).sqrt();
    (denominator > 0.0).then(|| sxy / denominator)
}

/// Ranks 1..n, ties sharing the average of the ranks they span.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].partial_cmp(&values[b]).expect("ranks: NaN score"));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0; // mean of start+1 ..= end
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman's rho: Pearson's r of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Indices of the `k` highest values; equal values keep the lower index first, so the choice
/// among ties at the boundary is deterministic.
fn top_indices(values: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].partial_cmp(&values[a]).expect("top-k: NaN score").then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Size of the top `fraction` of `n` items: at least 1.
pub fn top_k_size(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).floor() as usize).clamp(1, n.max(1))
}

/// Of the true top `fraction` (by `truth`), the share that the predicted top `fraction` (by
/// `predicted`, same size) contains.
pub fn top_k_precision(predicted: &[f64], truth: &[f64], fraction: f64) -> f64 {
    assert_eq!(predicted.len(), truth.len(), "top-k: both sides need one value per item");
    if truth.is_empty() {
        return 0.0;
    }
    let k = top_k_size(truth.len(), fraction);
    let true_top: std::collections::HashSet<usize> = top_indices(truth, k).into_iter().collect();
    let hits = top_indices(predicted, k).into_iter().filter(|i| true_top.contains(i)).count();
    hits as f64 / k as f64
}

/// The top-k fractions reported: 1%, 5%, 10%.
pub const TOP_K_FRACTIONS: [f64; 3] = [0.01, 0.05, 0.10];

/// Every statistic of one scoring against the ground truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankingReport {
    pub architectures: usize,
    pub kendall_tau: Option<f64>,
    pub spearman_rho: Option<f64>,
    pub pearson_r: Option<f64>,
    /// `(fraction, k, precision)` for each of [`TOP_K_FRACTIONS`].
    pub top_k_precision: Vec<(f64, usize, f64)>,
}

impl std::fmt::Display for RankingReport {
    /// `tau 0.6012  rho 0.7934  r 0.7512  top-10% (396) 0.41 ...` (`n/a` for an undefined value).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
        write!(f, "tau {}  rho {}  r {}", v(self.kendall_tau), v(self.spearman_rho), v(self.pearson_r))?;
        for (fraction, k, precision) in &self.top_k_precision {
            write!(f, "  top-{:.0}% ({k}) {precision:.2}", 100.0 * fraction)?;
        }
        Ok(())
    }
}

impl RankingReport {
    pub fn new(predicted: &[f64], truth: &[f64]) -> Self {
        RankingReport {
            architectures: truth.len(),
            kendall_tau: kendall_tau_b(predicted, truth),
            spearman_rho: spearman(predicted, truth),
            pearson_r: pearson(predicted, truth),
            top_k_precision: TOP_K_FRACTIONS
                .iter()
                .map(|&f| (f, top_k_size(truth.len(), f), top_k_precision(predicted, truth, f)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_reversed_and_tied_orders() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(kendall_tau_b(&x, &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(kendall_tau_b(&x, &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(kendall_tau_b(&x, &[5.0; 4]), None);
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert_eq!(spearman(&x, &[1.0, 4.0, 9.0, 16.0]), Some(1.0));
    }

    #[test]
    fn top_k_counts_the_shared_top_items() {
        let truth: Vec<f64> = (0..100).map(f64::from).collect();
        let mut predicted = truth.clone();
        assert_eq!(top_k_precision(&predicted, &truth, 0.10), 1.0);
        predicted.swap(99, 0); // the true best is now predicted worst
        assert_eq!(top_k_precision(&predicted, &truth, 0.10), 0.9);
        assert_eq!(top_k_size(3969, 0.01), 39);
        assert_eq!(top_k_size(20, 0.01), 1);
    }
}
