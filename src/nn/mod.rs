//! The decoder block and whole-model forward in candle, for calibration (math only: no files).

pub mod block;
pub mod hparams;
pub mod model;
