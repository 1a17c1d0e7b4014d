//! ApiQ's quantizer and LoRA as differentiable candle computations (math only: no files).

#[cfg(feature = "cuda")]
mod fake_quant_cuda;
pub mod fake_quant_op;
pub mod lora;
pub mod qparams;
pub mod quantizer;
pub mod ste;

pub use quantizer::{GroupedWeight, Lwc, QuantSpec};
