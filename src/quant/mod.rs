//! ApiQ's quantizer and LoRA as differentiable candle computations (math only: no files).

pub mod lora;
pub mod quantizer;
pub mod ste;

pub use quantizer::{GroupedWeight, Lwc, QuantSpec};
