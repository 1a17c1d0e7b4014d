//! A calibrated linear as the packer receives it: requantized on ApiQ's group grid, or through
//! a K-quant grid (the trainer builds either, the packer writes either).

use super::kquantized::KQuantized;
use super::quantizer::Quantized;
use crate::ggml::GgmlType;

/// A linear quantized once by ggml's own quantizer, never trained: its bytes as ggml wrote
/// them and their values.
#[derive(Debug, Clone)]
pub struct FrozenBase {
    pub ty: GgmlType,
    pub raw: Vec<u8>,
    /// `[out, in]` row-major, as ggml dequantizes `raw`.
    pub weight: Vec<f32>,
}

#[derive(Debug, Clone)]
pub enum Requantized {
    /// Per group f16 `d`, `m` and codes: APIQ2, Q2_0, Q4_1 exactly; others mapped.
    Groups(Quantized),
    /// Exactly the K type it was trained through.
    K(KQuantized),
    /// ggml's bytes unchanged (only the LoRA was trained over them).
    Frozen(FrozenBase),
}

impl Requantized {
    /// The values, row-major `[out, in]` (f32).
    pub fn weight(&self) -> &[f32] {
        match self {
            Requantized::Groups(q) => &q.weight,
            Requantized::K(k) => &k.weight,
            Requantized::Frozen(f) => &f.weight,
        }
    }
}
