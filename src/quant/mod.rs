//! ApiQ's quantizer and LoRA as differentiable candle computations (math only: no files).

#[cfg(feature = "cuda")]
mod fake_quant_cuda;
pub mod fake_quant_op;
pub mod kgrid;
pub mod kgrid_sym;
pub mod kquantized;
pub mod kspec;
pub mod lora;
pub mod qparams;
pub mod quantizer;
pub mod requantized;
pub mod ste;

pub use kspec::{KGrid, KInit};
pub use quantizer::{GroupedWeight, Lwc, QuantSpec};
pub use requantized::{FrozenBase, Requantized};
