//! Device selection: the only place that knows whether CUDA was compiled in.

use anyhow::{bail, Result};
use candle_core::Device;

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("bad device `{s}` (cpu, cuda or cuda:N)"))?,
                None => 0,
            };
            cuda(ordinal)
        }
        other => bail!("bad device `{other}` (cpu, cuda or cuda:N)"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    bail!("this build has no CUDA support (hint: rebuild with `cargo build --release --features cuda`)")
}
