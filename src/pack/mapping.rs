//! What a type that cannot hold the calibrated grid exactly (a fallback such as Q4_0 for rows
//! that are not whole K super-blocks) adds to the calibrated weights: reported, never hidden.

/// Error that the mapping adds to the calibrated weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct MappingError {
    pub sum_sq: f64,
    /// Σ y² of the calibrated weights, for a relative figure.
    pub sum_sq_ref: f64,
    pub max_abs: f64,
    pub n: usize,
}

impl MappingError {
    /// The error of `got` against the calibrated weights `want`.
    pub fn measure(got: &[f32], want: &[f32]) -> MappingError {
        let mut e = MappingError {
            n: want.len(),
            ..MappingError::default()
        };
        for (a, b) in got.iter().zip(want) {
            let d = f64::from(a - b);
            e.sum_sq += d * d;
            e.max_abs = e.max_abs.max(d.abs());
            e.sum_sq_ref += f64::from(*b) * f64::from(*b);
        }
        e
    }

    pub fn add(&mut self, o: &MappingError) {
        self.sum_sq += o.sum_sq;
        self.sum_sq_ref += o.sum_sq_ref;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.n += o.n;
    }

    pub fn rmse(&self) -> f64 {
        (self.sum_sq / self.n.max(1) as f64).sqrt()
    }

    /// ‖added error‖ / ‖calibrated weights‖.
    pub fn relative(&self) -> f64 {
        (self.sum_sq / self.sum_sq_ref.max(f64::MIN_POSITIVE)).sqrt()
    }
}
