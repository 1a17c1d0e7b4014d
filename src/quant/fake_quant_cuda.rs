//! Launchers of `fake_quant.cu` (the reference is the CPU code of `fake_quant_op`).
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{DType, Layout, Result};
use half::{bf16, f16};

use super::qparams::QParams;
use crate::cuda::{fatbin, function, Fatbin};

// SAFETY: plain old data, laid out as the kernels' `QParams`.
unsafe impl DeviceRepr for QParams {}

const FATBIN: Fatbin = fatbin!("fake_quant");
/// Groups per 256-thread block of the one-warp-per-group kernels.
const GROUPS_PER_BLOCK: u32 = 8;

fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => candle_core::bail!("fake_quant: inputs must be contiguous"),
    }
}

/// Whether the eight-lanes-per-group kernels apply: groups of 32, 64 or 128 starting on
/// 16-byte boundaries.
fn lanes_kernel(group: usize, layouts: &[&Layout]) -> bool {
    matches!(group, 32 | 64 | 128) && layouts.iter().all(|l| l.start_offset() % 8 == 0)
}

/// One warp per group, or eight lanes per group (`lanes`), 256 threads a block.
fn config(n_groups: usize, lanes: bool) -> LaunchConfig {
    let per_block = if lanes { 32 } else { GROUPS_PER_BLOCK };
    LaunchConfig {
        grid_dim: ((n_groups as u32).div_ceil(per_block), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub fn forward(
    p: &QParams,
    (w, lw): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    out_dtype: DType,
) -> Result<CudaStorage> {
    let dev = w.device().clone();
    let (n_groups, group) = lw.shape().dims2()?;
    let wv = view(w.as_cuda_slice::<f32>()?, lw)?;
    let gv = view(g.as_cuda_slice::<f32>()?, lg)?;
    let bv = view(b.as_cuda_slice::<f32>()?, lb)?;
    let n = n_groups * group;
    let (n_groups_arg, group_arg) = (n_groups as i64, group as i32);
    let lanes = lanes_kernel(group, &[lw]);
    macro_rules! launch {
        ($t:ty, $suffix:literal, $variant:ident) => {{
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<$t>(n)? };
            let stream = dev.cuda_stream();
            let func;
            let mut l = if lanes {
                func = function(
                    &dev,
                    &FATBIN,
                    &format!("fake_quant_fwd_g{group}_{}", $suffix),
                )?;
                stream.launch_builder(&func)
            } else {
                func = function(&dev, &FATBIN, &format!("fake_quant_fwd_{}", $suffix))?;
                stream.launch_builder(&func)
            };
            l.arg(&wv).arg(&gv).arg(&bv).arg(&out).arg(&n_groups_arg);
            if !lanes {
                l.arg(&group_arg);
            }
            l.arg(p);
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { l.launch(config(n_groups, lanes)) }.w()?;
            CudaStorageSlice::$variant(out)
        }};
    }
    let slice = match out_dtype {
        DType::F32 => launch!(f32, "f32", F32),
        DType::BF16 => launch!(bf16, "bf16", BF16),
        DType::F16 => launch!(f16, "f16", F16),
        other => candle_core::bail!("fake_quant: no {other:?} output on CUDA"),
    };
    Ok(CudaStorage { slice, device: dev })
}

pub fn backward(
    p: &QParams,
    (grad, lgr): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (gb, lgb): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = w.device().clone();
    let (n_groups, group) = lw.shape().dims2()?;
    let wv = view(w.as_cuda_slice::<f32>()?, lw)?;
    // (γ, β) interleaved, [n, 2].
    let gbv = view(gb.as_cuda_slice::<f32>()?, lgb)?;
    let (n_groups_arg, group_arg) = (n_groups as i64, group as i32);
    // SAFETY: every element is written by the kernel.
    let out = unsafe { dev.alloc::<f32>(2 * n_groups)? };
    let stream = dev.cuda_stream();
    let lanes = lanes_kernel(group, &[lw, lgr]);
    macro_rules! launch {
        ($t:ty, $suffix:literal) => {{
            let name = if lanes {
                format!("fake_quant_bwd_g{group}_{}", $suffix)
            } else {
                format!("fake_quant_bwd_{}", $suffix)
            };
            let func = function(&dev, &FATBIN, &name)?;
            let gv = view(grad.as_cuda_slice::<$t>()?, lgr)?;
            let mut l = stream.launch_builder(&func);
            l.arg(&gv).arg(&wv).arg(&gbv).arg(&out).arg(&n_groups_arg);
            if !lanes {
                l.arg(&group_arg);
            }
            l.arg(p);
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { l.launch(config(n_groups, lanes)) }.w()?;
        }};
    }
    match grad.dtype() {
        DType::F32 => launch!(f32, "f32"),
        DType::BF16 => launch!(bf16, "bf16"),
        DType::F16 => launch!(f16, "f16"),
        other => candle_core::bail!("fake_quant: no {other:?} gradient on CUDA"),
    }
    Ok(CudaStorage {
        slice: CudaStorageSlice::F32(out),
        device: dev,
    })
}
