//! Greedy generation and tokenization through llama.cpp.

use std::num::NonZeroU32;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::session::Runtime;

#[derive(Debug, Clone)]
pub struct GenerateArgs {
    pub model: PathBuf,
    pub prompt: String,
    pub n_predict: usize,
    pub threads: i32,
    pub lora: Option<PathBuf>,
    pub lora_scale: f32,
}

#[derive(Debug, Clone)]
pub struct Generated {
    pub prompt_ids: Vec<i32>,
    pub ids: Vec<i32>,
    /// The continuation's text (special tokens not rendered).
    pub text: String,
}

/// Greedy decoding: the prompt is tokenized as llama-completion does (special tokens added and
/// parsed), then the arg-max token is taken until `n_predict` tokens or an end-of-generation
/// token.
pub fn generate(rt: &Runtime, a: &GenerateArgs) -> Result<Generated> {
    let (model, mut adapter) = rt.load_with_lora(&a.model, a.lora.as_deref())?;
    let vocab = model.vocab();
    let prompt: Vec<LlamaToken> = vocab.tokenize(a.prompt.as_bytes(), true, true);
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let n_ctx = prompt.len() + a.n_predict + 1;
    let cparams = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx as u32))
        .with_n_batch(prompt.len().max(1) as u32)
        .with_n_threads(a.threads)
        .with_n_threads_batch(a.threads);
    let mut ctx = rt.context(&model, cparams, adapter.as_mut(), a.lora_scale)?;
    let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
    for (i, t) in prompt.iter().enumerate() {
        batch.add(*t, i as i32, &[0], i + 1 == prompt.len())?;
    }
    ctx.decode(&mut batch)
        .map_err(|e| anyhow!("llama.cpp decode failed: {e}"))?;
    let mut ids = Vec::new();
    let mut bytes = Vec::new();
    let mut last = batch.n_tokens() - 1;
    for pos in prompt.len()..prompt.len() + a.n_predict {
        let logits = ctx.get_logits_ith(last);
        let next = logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0;
        let tok = LlamaToken(next as i32);
        if vocab.is_eog(tok) {
            break;
        }
        ids.push(tok.0);
        bytes.extend(vocab.token_to_piece(tok, false, None));
        batch.clear();
        batch.add(tok, pos as i32, &[0], true)?;
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode failed: {e}"))?;
        last = 0;
    }
    Ok(Generated {
        prompt_ids: prompt.iter().map(|t| t.0).collect(),
        ids,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// llama.cpp's token ids for `text` (add_special and parse_special as given).
pub fn tokenize(
    rt: &Runtime,
    model: &std::path::Path,
    text: &[u8],
    add_special: bool,
    parse_special: bool,
) -> Result<Vec<i32>> {
    let model = rt.load(model)?;
    let mut out = Vec::with_capacity(text.len() + 2);
    model
        .vocab()
        .tokenize_into(text, &mut out, add_special, parse_special);
    Ok(out.into_iter().map(|t| t.0).collect())
}
