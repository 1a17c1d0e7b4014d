//! The decoder block and whole-model forward in candle, for calibration (math only: no files).

pub mod block;
#[cfg(feature = "cuda")]
mod causal_softmax_cuda;
pub mod causal_softmax_op;
pub mod compute;
pub mod hparams;
pub mod model;
