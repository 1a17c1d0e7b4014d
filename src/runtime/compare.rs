//! A model's token distributions against a reference model's on the same text, chunked as
//! `llama-perplexity` chunks it (BOS first where the vocabulary adds it, the second half of
//! each chunk scored): perplexity of both, the mean KL divergence KL(reference ‖ model) and the
//! fraction of positions whose most likely next token agrees, as `llama-perplexity
//! --kl-divergence` reports them. Both models run side by side, one chunk at a time, so no
//! reference distributions are stored.

use std::num::NonZeroU32;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::perplexity::{nll_of, read_tokens};
use super::session::Runtime;

#[derive(Debug, Clone)]
pub struct CompareArgs {
    pub reference: PathBuf,
    pub model: PathBuf,
    pub lora: Option<PathBuf>,
    pub text: PathBuf,
    pub n_ctx: usize,
    pub n_chunks: Option<usize>,
    pub threads: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Comparison {
    pub ppl: f64,
    pub ppl_reference: f64,
    /// Mean over scored positions of KL(reference ‖ model), nats.
    pub kl: f64,
    /// Fraction of scored positions where both models' arg-max agree.
    pub top1: f64,
    pub n_scored: usize,
}

/// log-softmax in f64 of f32 logits (max subtracted first).
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    let lse = sum.ln();
    logits.iter().map(|&v| f64::from(v - max) - lse).collect()
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// One scored position of a chunk.
struct PositionScore {
    nll_reference: f64,
    nll_model: f64,
    kl: f64,
    agree: bool,
}

fn score_position(logits_r: &[f32], logits_m: &[f32], next: usize) -> PositionScore {
    let (lr, lm) = (log_softmax(logits_r), log_softmax(logits_m));
    PositionScore {
        // The perplexities in llama-perplexity's arithmetic, as `perplexity` computes them.
        nll_reference: nll_of(logits_r, next),
        nll_model: nll_of(logits_m, next),
        kl: lr
            .iter()
            .zip(&lm)
            .map(|(r, m)| r.exp() * (r - m))
            .sum::<f64>(),
        agree: argmax(&lr) == argmax(&lm),
    }
}

/// `f` of every item, in order, on up to `workers` threads: the KL divergence costs a few
/// exponentials per vocabulary entry and position, far more than a GPU's forward pass.
fn par_map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let per = items.len().div_ceil(workers.max(1)).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("a scoring thread panicked"))
            .collect()
    })
}

fn decode_chunk(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    chunk: &[LlamaToken],
) -> Result<()> {
    ctx.clear_kv_cache();
    batch.clear();
    let first = chunk.len() / 2;
    for (pos, &tok) in chunk.iter().enumerate() {
        batch.add(tok, pos as i32, &[0], pos >= first)?;
    }
    ctx.decode(batch)
        .map_err(|e| anyhow!("llama.cpp decode failed: {e}"))
}

pub fn run(rt: &Runtime, a: &CompareArgs) -> Result<Comparison> {
    let (reference, _) = rt.load_with_lora(&a.reference, None)?;
    let (model, mut adapter) = rt.load_with_lora(&a.model, a.lora.as_deref())?;
    if reference.n_vocab() != model.n_vocab() {
        bail!(
            "{} and {} have different vocabularies ({} vs {} tokens)",
            a.reference.display(),
            a.model.display(),
            reference.n_vocab(),
            model.n_vocab()
        );
    }
    let vocab = reference.vocab();
    let tokens = read_tokens(&reference, &a.text)?;
    let n_ctx = a.n_ctx;
    if n_ctx < 4 || tokens.len() < 2 * n_ctx {
        bail!(
            "{}: {} tokens, need at least {} for a context of {n_ctx}",
            a.text.display(),
            tokens.len(),
            2 * n_ctx.max(4)
        );
    }
    let n_chunk = a
        .n_chunks
        .map_or(tokens.len() / n_ctx, |c| c.min(tokens.len() / n_ctx));
    let params = || {
        LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx as u32))
            .with_n_batch(n_ctx as u32)
            .with_n_threads(a.threads)
            .with_n_threads_batch(a.threads)
    };
    let mut ctx_r = rt.context(&reference, params(), None, 1.0)?;
    let mut ctx_m = rt.context(&model, params(), adapter.as_mut(), 1.0)?;
    let mut batch = LlamaBatch::new(n_ctx, 1);
    let (bos, add_bos) = (vocab.bos(), vocab.should_add_bos());
    let first = n_ctx / 2;
    let workers = usize::try_from(a.threads).unwrap_or(1).max(1);
    let (mut nll_r, mut nll_m, mut kl, mut agree, mut count) = (0.0, 0.0, 0.0, 0usize, 0usize);
    for i in 0..n_chunk {
        let mut chunk = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
        if add_bos {
            chunk[0] = bos;
        }
        decode_chunk(&mut ctx_r, &mut batch, &chunk)?;
        decode_chunk(&mut ctx_m, &mut batch, &chunk)?;
        let positions: Vec<(&[f32], &[f32], usize)> = (first..n_ctx - 1)
            .map(|pos| {
                (
                    ctx_r.get_logits_ith(pos as i32),
                    ctx_m.get_logits_ith(pos as i32),
                    tokens[i * n_ctx + pos + 1].0 as usize,
                )
            })
            .collect();
        // Summed in position order: the same numbers for any number of workers.
        for s in par_map(&positions, workers, |&(r, m, next)| {
            score_position(r, m, next)
        }) {
            nll_r += s.nll_reference;
            nll_m += s.nll_model;
            kl += s.kl;
            agree += usize::from(s.agree);
            count += 1;
        }
    }
    let n = count as f64;
    Ok(Comparison {
        ppl: (nll_m / n).exp(),
        ppl_reference: (nll_r / n).exp(),
        kl: kl / n,
        top1: agree as f64 / n,
        n_scored: count,
    })
}
