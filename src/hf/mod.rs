//! Hugging Face model directories: config.json, safetensors weights, tokenizer files.

pub mod config;
pub mod tokenizer;
pub mod weights;
