use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use apiq2gguf::cli::{Cli, Command};
use apiq2gguf::report::Progress;
use apiq2gguf::runtime::{self, perplexity, Runtime};
use apiq2gguf::{export, gguf, inspect, source};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let progress = Progress::new(cli.quiet);
    let mut out = std::io::stdout().lock();
    match cli.command {
        None => {
            let a = cli.convert;
            let (Some(model), Some(dest)) = (a.model, a.out) else {
                use clap::CommandFactory;
                Cli::command()
                    .error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "give MODEL and OUT.gguf, or a subcommand",
                    )
                    .exit();
            };
            let src = source::ModelSource::open(&model, a.tokenizer_pre.as_deref())?;
            let w = export::model::convert(&src, &dest, a.out_type, &progress)?;
            eprintln!(
                "wrote {} ({} tensors, {:.1} MiB)",
                dest.display(),
                w.n_tensors,
                w.bytes as f64 / (1 << 20) as f64
            );
        }
        Some(Command::Inspect(a)) => {
            let g = gguf::GgufFile::open(&a.file)?;
            write!(out, "{}", inspect::render(&g))?;
        }
        Some(Command::Perplexity(a)) => {
            let rt = Runtime::init(cli.verbose)?;
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
        }
        Some(Command::Generate(a)) => {
            let rt = Runtime::init(cli.verbose)?;
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
        }
        Some(Command::Tokenize(a)) => {
            let rt = Runtime::init(cli.verbose)?;
            let text = a.text()?;
            let ids =
                runtime::generate::tokenize(&rt, &a.model, &text, !a.no_special, a.parse_special)?;
            writeln!(
                out,
                "{}",
                ids.iter().map(i32::to_string).collect::<Vec<_>>().join(" ")
            )?;
        }
    }
    Ok(())
}
