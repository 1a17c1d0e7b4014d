//! Device selection: the only place that knows whether CUDA was compiled in.

use anyhow::{bail, Result};
use candle_core::Device;

/// How CUDA runs f32 matrix products. The released ApiQ code runs them in fp16 under autocast,
/// so TF32 (10-bit mantissa inputs, f32 accumulation) is no less precise than the reference.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaMatmul {
    Tf32,
    F32,
}

/// Parses `cpu`, `cuda` or `cuda:N`; `matmul` applies to CUDA only.
pub fn parse(spec: &str, matmul: CudaMatmul) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("bad device `{s}` (cpu, cuda or cuda:N)"))?,
                None => 0,
            };
            cuda(ordinal, matmul)
        }
        other => bail!("bad device `{other}` (cpu, cuda or cuda:N)"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize, matmul: CudaMatmul) -> Result<Device> {
    // candle's kernels are PTX, compiled by the driver when a process first loads them (about
    // 20 s) and then kept in the driver's cache; the default cache can be too small to keep
    // them all, and every process would pay again. Set before the driver starts.
    if std::env::var_os("CUDA_CACHE_MAXSIZE").is_none() {
        std::env::set_var("CUDA_CACHE_MAXSIZE", (4u64 << 30).to_string());
    }
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(matmul == CudaMatmul::Tf32);
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize, _matmul: CudaMatmul) -> Result<Device> {
    bail!("this build has no CUDA support (hint: rebuild with `cargo build --release --features cuda`)")
}
