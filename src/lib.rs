//! apiq2gguf: ApiQ 2-bit quantization for GGUF / llama.cpp.
//!
//! Pipeline: a model source ([`source`]: HF directory via [`hf`], or a GGUF file via
//! [`gguf::reader`]) gives GGUF metadata and tensors as f32 under GGUF names ([`arch`] holds the
//! name tables and the RoPE permutation); [`export`] encodes them ([`ggml`]) and streams them
//! through the atomic [`gguf::writer`]; [`runtime`] runs the result with llama.cpp.
//!
//! `ggml` and `gguf` are pure byte formats: no candle, no model knowledge.

pub mod apiq;
pub mod arch;
pub mod atomic;
pub mod bench;
pub mod calib;
pub mod cli;
pub mod commands;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod eval;
pub mod eval_plot;
pub mod export;
pub mod ggml;
pub mod gguf;
pub mod hf;
pub mod inspect;
pub mod kernel_check;
mod mmap;
pub mod nn;
pub mod output_check;
pub mod pack;
pub mod phases;
pub mod pipeline;
pub mod quant;
pub mod report;
pub mod runtime;
pub mod source;
pub mod trace;
