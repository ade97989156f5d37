//! Helpers shared by the gradient tests.

use candle_core::{DType, Tensor};

/// Largest absolute difference, relative to the largest magnitude of `b`.
pub fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let b = b.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Central differences of `f` w.r.t. every element of `at` (f64, step 1e-6).
pub fn numeric_grad(at: &Tensor, f: impl Fn(&Tensor) -> f64) -> Vec<f64> {
    let base = at.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let eps = 1e-6;
    (0..base.len())
        .map(|i| {
            let mut plus = base.clone();
            plus[i] += eps;
            let mut minus = base.clone();
            minus[i] -= eps;
            let t = |v: Vec<f64>| Tensor::from_vec(v, at.dims(), at.device()).unwrap();
            (f(&t(plus)) - f(&t(minus))) / (2.0 * eps)
        })
        .collect()
}
