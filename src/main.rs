use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use apiq2gguf::cli::{Cli, Command};
use apiq2gguf::commands::{dev, eval, inspect, main_job, run};
use apiq2gguf::report::Progress;

fn main() -> ExitCode {
    // candle puts a captured backtrace into its error text when RUST_BACKTRACE is set; errors
    // here are for users and stay one line.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let v = cli.verbose;
    match cli.command {
        None => main_job::run(cli.convert, &Progress::new(cli.quiet)),
        Some(Command::Perplexity(a)) => run::perplexity(a, v),
        Some(Command::Generate(a)) => run::generate(a, v),
        Some(Command::Bench(a)) => run::bench(a, v),
        Some(Command::Tokenize(a)) => run::tokenize(a, v),
        Some(Command::Inspect(a)) => inspect::inspect(a),
        Some(Command::Eval(a)) => eval::eval(a, v),
        Some(Command::BenchStep(a)) => dev::bench_step(a),
        Some(Command::TraceBlock(a)) => dev::trace_block(a),
        Some(Command::CheckKernels(a)) => dev::check_kernels(a),
    }
}
