//! Learning-rate schedules as multipliers of the base learning rates.

/// Linear warm-up from `warmup_start` to 1, then cosine decay to `min_scale` at `total_steps`
/// (the shape of the reference's timm cosine scheduler, stepped per optimizer update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    /// Updates of linear warm-up.
    pub warmup_steps: u64,
    /// Multiplier at the first update.
    pub warmup_start: f64,
    /// Updates of the whole run.
    pub total_steps: u64,
    /// Multiplier at the end.
    pub min_scale: f64,
}

impl CosineSchedule {
    /// The multiplier for update `step` (0-based).
    pub fn scale(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return self.warmup_start + (1.0 - self.warmup_start) * t;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_scale + (1.0 - self.min_scale) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays() {
        let s = CosineSchedule {
            warmup_steps: 10,
            warmup_start: 0.1,
            total_steps: 110,
            min_scale: 0.0,
        };
        assert!((s.scale(0) - 0.1).abs() < 1e-12);
        assert!((s.scale(10) - 1.0).abs() < 1e-12);
        assert!((s.scale(60) - 0.5).abs() < 1e-12);
        assert!(s.scale(110).abs() < 1e-12);
        assert!(s.scale(500).abs() < 1e-12);
        assert!(s.scale(5) < s.scale(6));
    }
}
