//! How a block is computed: the storage type of matrix-product operands, and whether our fused
//! CUDA kernels replace candle's op-by-op compositions.
//!
//! `f32` everywhere is the reference (and what the gradient checks cover). `bf16`/`f16` store
//! the operands of every matrix product of the trained block (fake-quantized weights,
//! activations, attention scores and probabilities) in 16 bits for the tensor cores; cuBLAS
//! accumulates in f32, and everything else stays f32: master weights, LWC logits, LoRA pairs,
//! optimizer state, norms, RoPE, the loss. This is at least as precise as the released code's
//! fp16 autocast, which also runs the SwiGLU and residual arithmetic in fp16.

use candle_core::DType;
use serde::Serialize;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    /// With dynamic loss scaling (as PyTorch's GradScaler).
    F16,
}

impl Precision {
    /// Storage type of matrix-product operands.
    pub fn matmul_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Compute {
    pub precision: Precision,
    /// Fused kernels for the LWC quantizer, the causal softmax and AdamW (CUDA only).
    pub fused: bool,
}

impl Compute {
    /// f32, candle's ops: the reference.
    pub const REFERENCE: Compute = Compute {
        precision: Precision::F32,
        fused: false,
    };
}
