//! Writing output GGUF files.

pub mod model;
