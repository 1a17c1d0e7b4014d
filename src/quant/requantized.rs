//! A calibrated linear as the packer receives it: requantized on ApiQ's group grid, or through
//! a K-quant grid (the trainer builds either, the packer writes either).

use super::kgrid::KQuantized;
use super::quantizer::Quantized;

#[derive(Debug, Clone)]
pub enum Requantized {
    /// Per group f16 `d`, `m` and codes: APIQ2, Q2_0, Q4_1 exactly; others mapped.
    Groups(Quantized),
    /// Exactly the K type it was trained through.
    K(KQuantized),
}

impl Requantized {
    /// The values, row-major `[out, in]` (f32).
    pub fn weight(&self) -> &[f32] {
        match self {
            Requantized::Groups(q) => &q.weight,
            Requantized::K(k) => &k.weight,
        }
    }
}
