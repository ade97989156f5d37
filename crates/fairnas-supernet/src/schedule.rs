//! Learning-rate schedule: linear warm-up, then cosine decay (the MnasNet/SPOS-era recipe).

/// `lr(step)`: from `base / warmup` up to `base` over the first `warmup` steps, then
/// `min + (base - min) * (1 + cos(pi * t)) / 2` with `t` going from 0 to 1 over the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    pub base_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl CosineSchedule {
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = CosineSchedule { base_lr: 0.1, min_lr: 0.0, warmup_steps: 10, total_steps: 110 };
        assert!((s.lr(0) - 0.01).abs() < 1e-12);
        assert!((s.lr(9) - 0.1).abs() < 1e-12);
        assert!((s.lr(10) - 0.1).abs() < 1e-12);
        assert!((s.lr(60) - 0.05).abs() < 1e-12, "half way: {}", s.lr(60));
        assert!(s.lr(110).abs() < 1e-12);
        assert!(s.lr(500).abs() < 1e-12, "clamped after the end");
        assert!((1..110).all(|i| s.lr(i) <= s.lr(i - 1) + 1e-12 || i <= 10));
    }
}
