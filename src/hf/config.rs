//! config.json as written by transformers → a validated [`ModelSpec`].

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::arch::{self, Arch};

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    vocab_size: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    /// Llama-3.1 style: frequencies rescaled per dimension, written as `rope_freqs.weight`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: f64,
    },
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub arch: &'static Arch,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ctx: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub tied_embeddings: bool,
    pub vocab_size: usize,
}

impl ModelSpec {
    pub fn load(path: &Path) -> Result<ModelSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ModelSpec> {
        let raw: RawConfig = serde_json::from_str(text).context("not a valid model config")?;
        let names = raw.architectures.unwrap_or_default();
        let Some(arch) = names.iter().find_map(|n| arch::by_hf_name(n)) else {
            bail!(
                "unsupported architecture {} (supported: {})",
                if names.is_empty() {
                    "(none given)".to_string()
                } else {
                    names.join(", ")
                },
                arch::supported_hf_names()
            );
        };
        let n_head = raw.num_attention_heads;
        let n_head_kv = raw.num_key_value_heads.unwrap_or(n_head);
        ensure!(
            n_head > 0 && n_head_kv > 0 && n_head.is_multiple_of(n_head_kv),
            "num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}"
        );
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / n_head);
        ensure!(
            head_dim > 0 && head_dim.is_multiple_of(2),
            "head_dim {head_dim} must be even"
        );
        ensure!(
            raw.num_hidden_layers > 0 && raw.hidden_size > 0 && raw.vocab_size > 0,
            "empty model dimensions"
        );
        let rope_scaling = match raw.rope_scaling {
            None | Some(serde_json::Value::Null) => RopeScaling::None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                let num = |k: &str, d: f64| v.get(k).and_then(|x| x.as_f64()).unwrap_or(d);
                match kind {
                    "linear" => RopeScaling::Linear {
                        factor: num("factor", 1.0) as f32,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: num("factor", 8.0),
                        low_freq_factor: num("low_freq_factor", 1.0),
                        high_freq_factor: num("high_freq_factor", 4.0),
                        original_context: num("original_max_position_embeddings", 8192.0),
                    },
                    "default" => RopeScaling::None,
                    other => {
                        bail!("unsupported rope_scaling type `{other}` (supported: linear, llama3)")
                    }
                }
            }
        };
        Ok(ModelSpec {
            arch,
            n_embd: raw.hidden_size,
            n_ff: raw.intermediate_size,
            n_layer: raw.num_hidden_layers,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx: raw.max_position_embeddings,
            rms_eps: raw.rms_norm_eps as f32,
            rope_theta: raw.rope_theta.unwrap_or(10000.0) as f32,
            rope_scaling,
            tied_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            vocab_size: raw.vocab_size,
        })
    }

    /// Llama-3.1 rope factors, one per rotated pair (`LlamaModel.generate_extra_tensors`).
    pub fn rope_factors(&self) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } = self.rope_scaling
        else {
            return None;
        };
        let dim = self.head_dim as f64;
        let low_wavelen = original_context / low_freq_factor;
        let high_wavelen = original_context / high_freq_factor;
        Some(
            (0..self.head_dim / 2)
                .map(|i| {
                    // torch computes the frequencies in f32.
                    let freq = 1.0f32 / (self.rope_theta.powf((2 * i) as f32 / dim as f32));
                    let wavelen = 2.0 * std::f64::consts::PI / f64::from(freq);
                    let f = if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor
                    } else {
                        let smooth = (original_context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        1.0 / ((1.0 - smooth) / factor + smooth)
                    };
                    f as f32
                })
                .collect(),
        )
    }
}
