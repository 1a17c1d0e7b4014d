//! Perplexity exactly as `llama-perplexity` scores it (tools/perplexity/perplexity.cpp,
//! non-strided path): the text tokenized once (BOS only if the vocab adds it, special-token
//! text not parsed), chunk i = tokens [i*n_ctx, (i+1)*n_ctx) with its first token replaced by
//! BOS when the vocab adds BOS, only the second half of each chunk scored, `n_batch / n_ctx`
//! chunks decoded side by side, and the same log-softmax (f32 max, f64 sum).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::session::Runtime;

#[derive(Debug, Clone)]
pub struct PerplexityArgs {
    pub model: PathBuf,
    pub text: PathBuf,
    pub n_ctx: usize,
    pub n_chunks: Option<usize>,
    pub n_batch: usize,
    pub threads: i32,
    pub lora: Option<PathBuf>,
    pub lora_scale: f32,
}

#[derive(Debug, Clone)]
pub struct PerplexityResult {
    /// Running perplexity after each chunk, as llama-perplexity prints it.
    pub running: Vec<f64>,
    pub ppl: f64,
    pub err: f64,
    pub n_tokens: usize,
    pub n_scored: usize,
}

/// -log p(tok) as llama-perplexity's `log_softmax`: f32 max, expf terms summed in f64.
pub(super) fn nll_of(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
    -(f64::from(logits[tok] - max) - sum.ln())
}

/// `path` tokenized as llama-perplexity's `-f` reads it: the whole file less one trailing
/// newline, BOS added where the vocabulary adds it, special-token text not parsed.
pub(super) fn read_tokens(model: &LlamaModel, path: &Path) -> Result<Vec<LlamaToken>> {
    let mut text =
        std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    let mut tokens: Vec<LlamaToken> = Vec::with_capacity(text.len() + 2);
    model.vocab().tokenize_into(&text, &mut tokens, true, false);
    Ok(tokens)
}

pub fn run(
    rt: &Runtime,
    a: &PerplexityArgs,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<PerplexityResult> {
    let (model, mut adapter) = rt.load_with_lora(&a.model, a.lora.as_deref())?;
    let vocab = model.vocab();
    let add_bos = vocab.should_add_bos();
    if vocab.should_add_eos() {
        bail!(
            "{}: the vocabulary adds EOS; llama-perplexity refuses such models too",
            a.model.display()
        );
    }
    let tokens = read_tokens(&model, &a.text)?;
    let bos = vocab.bos();
    let n_ctx = a.n_ctx;
    if n_ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    if tokens.len() < 2 * n_ctx {
        bail!(
            "{}: {} tokens, need at least {} for --ctx {n_ctx}",
            a.text.display(),
            tokens.len(),
            2 * n_ctx
        );
    }
    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunk = a.n_chunks.map_or(n_chunk_max, |c| c.min(n_chunk_max));
    let n_seq = (a.n_batch / n_ctx).max(1);
    let n_batch = a.n_batch.min(n_seq * n_ctx);
    if !(n_batch < n_ctx || n_batch.is_multiple_of(n_ctx)) {
        bail!("--batch must be below --ctx or a multiple of it");
    }
    let num_batches = n_ctx.div_ceil(n_batch);
    let first = n_ctx / 2;

    let cparams = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new((n_seq * n_ctx) as u32))
        .with_n_batch(n_batch as u32)
        .with_n_seq_max(n_seq as u32)
        .with_n_threads(a.threads)
        .with_n_threads_batch(a.threads);
    let mut ctx = rt.context(&model, cparams, adapter.as_mut(), a.lora_scale)?;

    let mut batch = LlamaBatch::new(n_batch, n_seq as i32);
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::with_capacity(n_chunk);
    let mut i = 0;
    while i < n_chunk {
        let start = i * n_ctx;
        let n_seq_batch = n_seq.min(n_chunk - i);
        ctx.clear_kv_cache();
        let mut chunk_nll = vec![0.0f64; n_seq_batch];
        let mut chunk_nll2 = vec![0.0f64; n_seq_batch];
        for j in 0..num_batches {
            let batch_start = start + j * n_batch;
            let batch_size = (start + n_ctx - batch_start).min(n_batch);
            batch.clear();
            let mut wanted: Vec<(i32, usize, usize)> = Vec::new();
            for seq in 0..n_seq_batch {
                let seq_start = batch_start + seq * n_ctx;
                for k in 0..batch_size {
                    let pos = j * n_batch + k;
                    let tok = if add_bos && j == 0 && k == 0 {
                        bos
                    } else {
                        tokens[seq_start + k]
                    };
                    let bidx = batch.n_tokens();
                    batch.add(tok, pos as i32, &[seq as i32], pos >= first)?;
                    if pos >= first && pos + 1 < n_ctx {
                        wanted.push((bidx, tokens[seq_start + k + 1].0 as usize, seq));
                    }
                }
            }
            ctx.decode(&mut batch)
                .map_err(|e| anyhow!("llama.cpp decode failed: {e}"))?;
            for (b, t, s) in wanted {
                let v = nll_of(ctx.get_logits_ith(b), t);
                chunk_nll[s] += v;
                chunk_nll2[s] += v * v;
            }
        }
        for s in 0..n_seq_batch {
            nll += chunk_nll[s];
            nll2 += chunk_nll2[s];
            count += n_ctx - 1 - first;
            let ppl = (nll / count as f64).exp();
            running.push(ppl);
            on_chunk(i + s + 1, ppl);
        }
        i += n_seq;
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let err = if var > 0.0 {
        (var / (count as f64 - 1.0)).sqrt() * ppl
    } else {
        f64::NAN
    };
    Ok(PerplexityResult {
        running,
        ppl,
        err,
        n_tokens: tokens.len(),
        n_scored: count,
    })
}
