//! `inspect`: a GGUF file's metadata and tensor table.

use std::io::Write;

use anyhow::Result;

use crate::cli::InspectCli;
use crate::{gguf, inspect};

pub fn inspect(a: InspectCli) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let g = gguf::GgufFile::open(&a.file)?;
    write!(out, "{}", inspect::render(&g))?;
    Ok(())
}
