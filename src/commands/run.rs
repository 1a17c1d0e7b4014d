//! The commands that run a GGUF file with llama.cpp: perplexity, generate, bench, tokenize.

use std::io::Write;

use anyhow::Result;

use crate::cli::{BenchCli, GenerateCli, Offload, PerplexityCli, TokenizeCli};
use crate::runtime::{self, perplexity, Runtime};

/// llama.cpp for perplexity, generate, bench and eval, placed as `offload` says.
pub fn start_runtime(verbose: bool, offload: &Offload) -> Result<Runtime> {
    Runtime::init(verbose)?
        .with_gpu_layers(offload.gpu_layers)?
        .with_no_repack(offload.no_repack)
}

/// `perplexity`: llama-perplexity's score, chunk by chunk.
pub fn perplexity(a: PerplexityCli, verbose: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let rt = start_runtime(verbose, &a.offload)?;
    let args = perplexity::PerplexityArgs {
        model: a.model,
        text: a.text,
        n_ctx: a.ctx,
        n_chunks: a.chunks,
        n_batch: a.batch,
        threads: runtime::threads(a.threads),
        lora: a.lora,
        lora_scale: a.lora_scale,
    };
    let r = perplexity::run(&rt, &args, |i, ppl| {
        print!("[{i}]{ppl:.4} ");
        let _ = std::io::stdout().flush();
    })?;
    println!();
    writeln!(out, "Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.err)?;
    eprintln!("{} tokens, {} scored", r.n_tokens, r.n_scored);
    Ok(())
}

/// `generate`: greedy text (and token ids with `--ids`).
pub fn generate(a: GenerateCli, verbose: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let rt = start_runtime(verbose, &a.offload)?;
    let g = runtime::generate::generate(
        &rt,
        &runtime::generate::GenerateArgs {
            model: a.model,
            prompt: a.prompt.clone(),
            n_predict: a.n_predict,
            threads: runtime::threads(a.threads),
            lora: a.lora,
            lora_scale: a.lora_scale,
        },
    )?;
    writeln!(out, "{}{}", a.prompt, g.text)?;
    if a.ids {
        let join = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(" ");
        writeln!(out, "prompt ids: {}", join(&g.prompt_ids))?;
        writeln!(out, "generated ids: {}", join(&g.ids))?;
    }
    Ok(())
}

/// `bench`: llama-bench's pp/tg table with the CPU paths.
pub fn bench(a: BenchCli, verbose: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let rt = start_runtime(verbose, &a.offload)?;
    let threads = runtime::threads(a.threads);
    let r = runtime::bench::run(
        &rt,
        &runtime::bench::BenchArgs {
            model: a.model,
            lora: a.lora,
            threads,
            n_prompt: a.n_prompt,
            n_gen: a.n_gen,
            reps: a.reps as usize,
        },
    )?;
    writeln!(out, "system_info: {}", Runtime::system_info())?;
    writeln!(out, "cpu paths: {}", Runtime::cpu_paths())?;
    writeln!(out, "apiq2 kernels: {}", Runtime::apiq2_kernels())?;
    writeln!(out, "| model | size | params | threads | test | t/s |")?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    for row in &r.rows {
        writeln!(
            out,
            "| {} | {:.2} MiB | {:.2} M | {threads} | {} | {:.2} ± {:.2} |",
            r.description,
            r.size_bytes as f64 / (1024.0 * 1024.0),
            r.n_params as f64 / 1e6,
            row.test,
            row.mean,
            row.sd
        )?;
    }
    Ok(())
}

/// `tokenize`: llama.cpp's token ids, one line.
pub fn tokenize(a: TokenizeCli, verbose: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let rt = Runtime::init(verbose)?;
    let text = a.text()?;
    let ids = runtime::generate::tokenize(&rt, &a.model, &text, !a.no_special, a.parse_special)?;
    writeln!(
        out,
        "{}",
        ids.iter().map(i32::to_string).collect::<Vec<_>>().join(" ")
    )?;
    Ok(())
}
