//! Writing output files: GGUF models and adapters, and PEFT directories.

pub mod calibrated;
pub mod model;
pub mod peft;
pub mod safetensors_out;
