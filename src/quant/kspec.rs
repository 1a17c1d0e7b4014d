//! The asymmetric K-quant types ApiQ calibrates through (their shape only; the quantizer is
//! `kgrid`). Below both the quantizer's spec and the K grid, which name it.

/// ggml's super-block: 256 values.
pub const QK_K: usize = 256;

/// An asymmetric K-quant type as a grid to calibrate through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum KGrid {
    #[serde(rename = "q2_k")]
    Q2K,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
}

impl KGrid {
    /// Bits per weight code.
    pub fn bits(self) -> u32 {
        match self {
            KGrid::Q2K => 2,
            KGrid::Q4K => 4,
            KGrid::Q5K => 5,
        }
    }

    /// Values per sub-block (one scale and one min each).
    pub fn sub_len(self) -> usize {
        match self {
            KGrid::Q2K => 16,
            KGrid::Q4K | KGrid::Q5K => 32,
        }
    }

    pub fn subs(self) -> usize {
        QK_K / self.sub_len()
    }

    /// Largest weight code.
    pub fn code_max(self) -> f64 {
        f64::from((1u32 << self.bits()) - 1)
    }

    /// Largest sub-block scale / min code (4-bit for Q2_K, 6-bit for Q4_K and Q5_K).
    pub fn scale_max(self) -> f64 {
        match self {
            KGrid::Q2K => 15.0,
            KGrid::Q4K | KGrid::Q5K => 63.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KGrid::Q2K => "q2_k",
            KGrid::Q4K => "q4_k",
            KGrid::Q5K => "q5_k",
        }
    }

    /// Whether a linear of this many inputs holds whole super-blocks (else it falls back).
    pub fn fits(in_features: usize) -> bool {
        in_features.is_multiple_of(QK_K)
    }
}

/// Where a K grid's clipping starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
pub enum KInit {
    /// LWC's start, σ(4) = 0.982 of each sub-block's range.
    #[default]
    Lwc,
    /// The range of each sub-block that ggml's own quantizer (`quantize_row_q*_K_ref`, no
    /// importance matrix) picks for the weight: training starts where llama-quantize ends.
    Ggml,
}

impl KInit {
    pub fn is_lwc(&self) -> bool {
        *self == KInit::Lwc
    }
}
