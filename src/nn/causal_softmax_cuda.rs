//! Launchers of `causal_softmax.cu` (the reference is the CPU code of `causal_softmax_op`).
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{DType, Result};
use half::{bf16, f16};

use crate::cuda::{fatbin, function, Fatbin};

const FATBIN: Fatbin = fatbin!("causal_softmax");

/// Whether the kernels holding 8 values a thread apply: rows of a multiple of 8, at most 8192
/// long, on 16-byte boundaries.
fn by_eight(n: usize, offsets: &[usize]) -> bool {
    n.is_multiple_of(8) && n <= 8 * 1024 && offsets.iter().all(|o| o.is_multiple_of(8))
}

fn config(n_rows: usize, n: usize, eight: bool) -> LaunchConfig {
    let per_thread = if eight { n / 8 } else { n };
    let threads = per_thread.clamp(32, 1024).div_ceil(32) * 32;
    LaunchConfig {
        grid_dim: (n_rows as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("causal_softmax: no {other:?} kernel"),
    })
}

pub fn forward(
    x: &CudaStorage,
    offset: usize,
    n_rows: usize,
    n: usize,
    scale: f32,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let eight = by_eight(n, &[offset]);
    let kind = if eight { "fwd8" } else { "fwd" };
    let func = function(
        &dev,
        &FATBIN,
        &format!("causal_softmax_{kind}_{}", suffix(x.dtype())?),
    )?;
    let len = n_rows * n;
    let n_arg = n as i32;
    macro_rules! run {
        ($t:ty, $variant:ident) => {{
            let xv = x.as_cuda_slice::<$t>()?.slice(offset..offset + len);
            // SAFETY: the kernel writes every element (zeros above the diagonal).
            let y = unsafe { dev.alloc::<$t>(len)? };
            let stream = dev.cuda_stream();
            let mut l = stream.launch_builder(&func);
            l.arg(&xv).arg(&y).arg(&n_arg).arg(&scale);
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { l.launch(config(n_rows, n, eight)) }.w()?;
            CudaStorageSlice::$variant(y)
        }};
    }
    let slice = match x.dtype() {
        DType::F32 => run!(f32, F32),
        DType::BF16 => run!(bf16, BF16),
        _ => run!(f16, F16),
    };
    Ok(CudaStorage { slice, device: dev })
}

pub fn backward(
    y: &CudaStorage,
    y_offset: usize,
    g: &CudaStorage,
    g_offset: usize,
    n_rows: usize,
    n: usize,
    scale: f32,
) -> Result<CudaStorage> {
    if y.dtype() != g.dtype() {
        candle_core::bail!("causal_softmax: output and gradient types differ");
    }
    let dev = y.device().clone();
    let eight = by_eight(n, &[y_offset, g_offset]);
    let kind = if eight { "bwd8" } else { "bwd" };
    let func = function(
        &dev,
        &FATBIN,
        &format!("causal_softmax_{kind}_{}", suffix(y.dtype())?),
    )?;
    let len = n_rows * n;
    let n_arg = n as i32;
    macro_rules! run {
        ($t:ty, $variant:ident) => {{
            let yv = y.as_cuda_slice::<$t>()?.slice(y_offset..y_offset + len);
            let gv = g.as_cuda_slice::<$t>()?.slice(g_offset..g_offset + len);
            // SAFETY: the kernel writes every element.
            let dx = unsafe { dev.alloc::<$t>(len)? };
            let stream = dev.cuda_stream();
            let mut l = stream.launch_builder(&func);
            l.arg(&yv).arg(&gv).arg(&dx).arg(&n_arg).arg(&scale);
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { l.launch(config(n_rows, n, eight)) }.w()?;
            CudaStorageSlice::$variant(dx)
        }};
    }
    let slice = match y.dtype() {
        DType::F32 => run!(f32, F32),
        DType::BF16 => run!(bf16, BF16),
        _ => run!(f16, F16),
    };
    Ok(CudaStorage { slice, device: dev })
}
