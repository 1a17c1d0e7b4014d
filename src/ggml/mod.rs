//! ggml tensor types and the byte formats this tool writes. Pure bytes: no candle, no files.

pub mod convert;
pub mod stock;
pub mod types;

pub use types::GgmlType;
