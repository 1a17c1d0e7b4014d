//! Prompt-processing and generation speed, measured the way llama-bench does: pp = one batch of
//! N random tokens from an empty cache, tg = N single-token decodes from an empty cache, each
//! repeated and reported as mean ± standard deviation of tokens per second, after one warm-up.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use rand::{Rng, SeedableRng};

use super::session::Runtime;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub model: PathBuf,
    pub lora: Option<PathBuf>,
    pub threads: i32,
    /// Prompt tokens of the pp test (0 skips it).
    pub n_prompt: usize,
    /// Generated tokens of the tg test (0 skips it).
    pub n_gen: usize,
    pub reps: usize,
}

#[derive(Debug, Clone)]
pub struct BenchRow {
    /// `pp512`, `tg128`, …
    pub test: String,
    pub mean: f64,
    pub sd: f64,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub description: String,
    pub size_bytes: u64,
    pub n_params: u64,
    pub rows: Vec<BenchRow>,
}

fn stats(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn decode_prompt(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    tokens: &[LlamaToken],
) -> Result<()> {
    ctx.clear_kv_cache();
    batch.clear();
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], i + 1 == tokens.len())?;
    }
    ctx.decode(batch)
        .map_err(|e| anyhow!("llama.cpp decode failed: {e}"))
}

fn decode_one_by_one(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    tokens: &[LlamaToken],
) -> Result<()> {
    ctx.clear_kv_cache();
    for (i, &t) in tokens.iter().enumerate() {
        batch.clear();
        batch.add(t, i as i32, &[0], true)?;
        ctx.decode(batch)
            .map_err(|e| anyhow!("llama.cpp decode failed: {e}"))?;
    }
    Ok(())
}

pub fn run(rt: &Runtime, a: &BenchArgs) -> Result<BenchReport> {
    let (model, mut adapter) = rt.load_with_lora(&a.model, a.lora.as_deref())?;
    let n_vocab = model.n_vocab().max(1);
    let n_ctx = a.n_prompt.max(a.n_gen).max(16);
    let n_batch = a.n_prompt.max(1);
    let cparams = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx as u32))
        .with_n_batch(n_batch as u32)
        .with_n_ubatch(n_batch as u32)
        .with_n_threads(a.threads)
        .with_n_threads_batch(a.threads);
    let mut ctx = rt.context(&model, cparams, adapter.as_mut(), 1.0)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut random_tokens = |n: usize| -> Vec<LlamaToken> {
        (0..n)
            .map(|_| LlamaToken(rng.random_range(0..n_vocab)))
            .collect()
    };
    let mut batch = LlamaBatch::new(n_batch, 1);
    let mut rows = Vec::new();

    // (name, tokens, warm-up tokens, how they are decoded)
    type Decode = fn(&mut LlamaContext, &mut LlamaBatch, &[LlamaToken]) -> Result<()>;
    let tests: [(&str, usize, usize, Decode); 2] = [
        ("pp", a.n_prompt, a.n_prompt, decode_prompt),
        ("tg", a.n_gen, 1, decode_one_by_one),
    ];
    for (name, n, n_warm, decode) in tests {
        if n == 0 {
            continue;
        }
        decode(&mut ctx, &mut batch, &random_tokens(n_warm))?;
        let mut speeds = Vec::with_capacity(a.reps);
        for _ in 0..a.reps {
            let tokens = random_tokens(n);
            let t0 = Instant::now();
            decode(&mut ctx, &mut batch, &tokens)?;
            speeds.push(n as f64 / t0.elapsed().as_secs_f64());
        }
        let (mean, sd) = stats(&speeds);
        rows.push(BenchRow {
            test: format!("{name}{n}"),
            mean,
            sd,
        });
    }
    Ok(BenchReport {
        description: a
            .model
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        size_bytes: model.size(),
        n_params: model.n_params(),
        rows,
    })
}
