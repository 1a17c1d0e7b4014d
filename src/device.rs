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

/// The devices of a data-parallel calibration: `cpu`, `cuda:N` or a bare CUDA ordinal `N`,
/// all of one kind, none twice (CPU ranks are threads: for tests of the parallel path).
pub fn parse_list(specs: &[String], matmul: CudaMatmul) -> Result<Vec<Device>> {
    let names: Vec<String> = specs
        .iter()
        .map(|s| match s.trim() {
            "cuda" => "cuda:0".to_string(),
            s => match s.parse::<usize>() {
                Ok(n) => format!("cuda:{n}"),
                Err(_) => s.to_string(),
            },
        })
        .collect();
    let mut gpus: Vec<&String> = names.iter().filter(|n| n.starts_with("cuda")).collect();
    if !gpus.is_empty() && gpus.len() != names.len() {
        bail!("--devices mixes the CPU and CUDA devices");
    }
    gpus.sort();
    if gpus.windows(2).any(|w| w[0] == w[1]) {
        bail!("--devices names a GPU twice (NCCL needs one rank per GPU)");
    }
    if gpus.len() > 1 && !cfg!(feature = "nccl") {
        bail!("calibrating on several GPUs needs a build with NCCL (hint: `cargo build --release --features nccl`)");
    }
    names.iter().map(|n| parse(n, matmul)).collect()
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
