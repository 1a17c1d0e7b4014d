//! Writing output GGUF files.

pub mod calibrated;
pub mod model;
