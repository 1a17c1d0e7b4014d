//! `eval`: the quality-per-byte matrix.

use std::io::Write;

use anyhow::Result;

use super::run::start_runtime;
use crate::cli::EvalCli;
use crate::runtime;

/// Calibrates and scores every row, then prints results.md.
pub fn eval(a: EvalCli, verbose: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let rt = start_runtime(verbose, &a.offload)?;
    let stock = a.llama_bin.clone().map(|bin| crate::eval::StockTools {
        bin,
        calib_files: a.calib.clone(),
        calib_max_bytes: a.calib_max_bytes,
    });
    let stock_types = if stock.is_some() {
        a.stock_types.clone()
    } else {
        Vec::new()
    };
    let args = crate::eval::EvalArgs {
        stock,
        source: a.model.clone(),
        dir: a.dir.clone(),
        texts: a.texts.clone(),
        rows: crate::eval::matrix(&a.bits, &a.formats, &a.recipe(), &stock_types),
        n_ctx: a.ctx,
        n_chunks: a.chunks,
        threads: runtime::threads(a.threads),
    };
    crate::eval::run(&rt, &args)?;
    eprintln!("wrote {}", a.dir.join("results.md").display());
    let md = std::fs::read_to_string(a.dir.join("results.md"))?;
    write!(out, "{md}")?;
    Ok(())
}
