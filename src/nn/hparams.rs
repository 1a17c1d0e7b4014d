//! Model hyper-parameters for the forward pass, read from the GGUF metadata a source implies
//! (one path for HF directories and GGUF files).

use anyhow::{bail, Context, Result};

use crate::gguf::keys::{self, arch_key};
use crate::gguf::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// llama: rotate consecutive pairs (2i, 2i+1) (weights in GGUF's interleaved order).
    Norm,
    /// qwen2: rotate (i, i + hd/2).
    Neox,
}

#[derive(Debug, Clone)]
pub struct HParams {
    pub arch: String,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope: RopeKind,
    /// Llama-3.1 per-pair frequency divisors (`rope_freqs.weight`).
    pub rope_factors: Option<Vec<f32>>,
    pub qkv_bias: bool,
}

fn get<'a>(kv: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl HParams {
    /// A tiny block (E 16, FF 24, 4 query heads of 4, 2 kv heads) for gradient tests.
    #[cfg(test)]
    pub(crate) fn tiny(rope: RopeKind, qkv_bias: bool) -> HParams {
        HParams {
            arch: "llama".into(),
            n_embd: 16,
            n_ff: 24,
            n_layer: 1,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 4,
            n_ctx_train: 64,
            rms_eps: 1e-5,
            rope_base: 10000.0,
            rope,
            rope_factors: None,
            qkv_bias,
        }
    }

    pub fn from_metadata(
        kv: &[(String, Value)],
        rope_factors: Option<Vec<f32>>,
    ) -> Result<HParams> {
        let arch = get(kv, keys::GENERAL_ARCHITECTURE)
            .and_then(Value::as_str)
            .context("no general.architecture")?
            .to_string();
        let (rope, qkv_bias) = match arch.as_str() {
            "llama" => (RopeKind::Norm, false),
            "qwen2" => (RopeKind::Neox, true),
            other => bail!("calibration supports the llama and qwen2 architectures, not `{other}`"),
        };
        let u = |suffix: &str| -> Result<usize> {
            let k = arch_key(&arch, suffix);
            get(kv, &k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .with_context(|| format!("metadata `{k}` is missing"))
        };
        let n_embd = u(keys::EMBEDDING_LENGTH)?;
        let n_head = u(keys::HEAD_COUNT)?;
        let n_head_kv = u(keys::HEAD_COUNT_KV).unwrap_or(n_head);
        let head_dim = u(keys::KEY_LENGTH).unwrap_or(n_embd / n_head.max(1));
        let f = |suffix: &str, default: f64| -> f64 {
            get(kv, &arch_key(&arch, suffix))
                .and_then(Value::as_f64)
                .unwrap_or(default)
        };
        Ok(HParams {
            n_ff: u(keys::FEED_FORWARD_LENGTH)?,
            n_layer: u(keys::BLOCK_COUNT)?,
            n_ctx_train: u(keys::CONTEXT_LENGTH)?,
            rms_eps: f(keys::RMS_EPS, 1e-5) as f32,
            rope_base: f(keys::ROPE_FREQ_BASE, 10000.0) as f32,
            arch,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            rope,
            rope_factors,
            qkv_bias,
        })
    }
}
