//! Running GGUF files with llama.cpp (the pinned llama-cpp-2 / llama-cpp-sys-2): on the CPU, and
//! with `--features cuda` layers offloaded to the GPU (`--gpu-layers`).

pub mod bench;
pub mod compare;
pub mod generate;
pub mod log;
pub mod perplexity;
pub mod session;

pub use session::{threads, Runtime};
