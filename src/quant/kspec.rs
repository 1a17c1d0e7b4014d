//! The K-quant types ApiQ calibrates through (their shape only; the quantizers are `kgrid` and
//! `kgrid_sym`). Below both the quantizer's spec and the K grids, which name it.

/// ggml's super-block: 256 values.
pub const QK_K: usize = 256;

/// A K-quant type as a grid to calibrate through: asymmetric (Q2_K, Q4_K, Q5_K: a scale and a
/// min per sub-block) or symmetric (Q3_K, Q6_K: one signed scale per sub-block, signed codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum KGrid {
    #[serde(rename = "q2_k")]
    Q2K,
    #[serde(rename = "q3_k")]
    Q3K,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

impl KGrid {
    pub const ALL: [KGrid; 5] = [KGrid::Q2K, KGrid::Q3K, KGrid::Q4K, KGrid::Q5K, KGrid::Q6K];

    /// Bits per weight code.
    pub fn bits(self) -> u32 {
        match self {
            KGrid::Q2K => 2,
            KGrid::Q3K => 3,
            KGrid::Q4K => 4,
            KGrid::Q5K => 5,
            KGrid::Q6K => 6,
        }
    }

    /// One signed scale per sub-block and codes around 0 (Q3_K, Q6_K), instead of a scale and
    /// a subtracted min.
    pub fn symmetric(self) -> bool {
        matches!(self, KGrid::Q3K | KGrid::Q6K)
    }

    /// Values per sub-block (one scale, and one min where asymmetric, each).
    pub fn sub_len(self) -> usize {
        match self {
            KGrid::Q2K | KGrid::Q3K | KGrid::Q6K => 16,
            KGrid::Q4K | KGrid::Q5K => 32,
        }
    }

    pub fn subs(self) -> usize {
        QK_K / self.sub_len()
    }

    /// Smallest weight code: 0, or −2^(b−1) for the symmetric types (Q3_K −4, Q6_K −32).
    pub fn code_min(self) -> f64 {
        if self.symmetric() {
            -f64::from(1u32 << (self.bits() - 1))
        } else {
            0.0
        }
    }

    /// Largest weight code: 2^b − 1, or 2^(b−1) − 1 for the symmetric types.
    pub fn code_max(self) -> f64 {
        self.code_min() + f64::from((1u32 << self.bits()) - 1)
    }

    /// What ggml adds to a code to store it unsigned (4 for Q3_K, 32 for Q6_K, else 0).
    pub fn code_offset(self) -> u8 {
        (-self.code_min()) as u8
    }

    /// Smallest sub-block scale code: 0, or Q3_K's −32 (6-bit) and Q6_K's −128 (8-bit).
    pub fn scale_min(self) -> f64 {
        match self {
            KGrid::Q3K => -32.0,
            KGrid::Q6K => -128.0,
            _ => 0.0,
        }
    }

    /// Largest sub-block scale / min code (4-bit for Q2_K, 6-bit for Q4_K and Q5_K; Q3_K 31,
    /// Q6_K 127).
    pub fn scale_max(self) -> f64 {
        match self {
            KGrid::Q2K => 15.0,
            KGrid::Q4K | KGrid::Q5K => 63.0,
            KGrid::Q3K => 31.0,
            KGrid::Q6K => 127.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KGrid::Q2K => "q2_k",
            KGrid::Q3K => "q3_k",
            KGrid::Q4K => "q4_k",
            KGrid::Q5K => "q5_k",
            KGrid::Q6K => "q6_k",
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
    /// LWC's start, σ(4) = 0.982 of each sub-block's range (the group grids' only start).
    #[default]
    Lwc,
    /// The range of each sub-block that ggml's own quantizer picks for the weight, with the
    /// importance matrix of the quantized chain (llama-quantize with llama-imatrix's):
    /// training starts where llama-quantize ends.
    Ggml,
}

impl KInit {
    pub fn is_lwc(&self) -> bool {
        *self == KInit::Lwc
    }
}
