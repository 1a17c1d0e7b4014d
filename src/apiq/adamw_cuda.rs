//! Launcher of `adamw.cu` (the reference is candle-nn's AdamW, see `adamw`).
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{Layout, Result};

use super::adamw_step::AdamWStep;
use crate::cuda::{fatbin, function, Fatbin};

// SAFETY: plain old data, laid out as the kernel's `AdamWStep`.
unsafe impl DeviceRepr for AdamWStep {}

const FATBIN: Fatbin = fatbin!("adamw");

fn whole(l: &Layout) -> Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("AdamW: tensors must be contiguous".into()))
}

pub fn step(
    k: &AdamWStep,
    (theta, lt): (&mut CudaStorage, &Layout),
    (state, ls): (&CudaStorage, &Layout),
    (grad, lg): (&CudaStorage, &Layout),
) -> Result<()> {
    let dev = theta.device().clone();
    let func = function(&dev, &FATBIN, "adamw_f32")?;
    let (t0, t1) = whole(lt)?;
    let (s0, s1) = whole(ls)?;
    let (g0, g1) = whole(lg)?;
    let n = t1 - t0;
    if s1 - s0 != 2 * n || g1 - g0 != n {
        candle_core::bail!("AdamW: parameter, moments and gradient sizes disagree");
    }
    let sv = state.as_cuda_slice::<f32>()?;
    let (m, v) = (sv.slice(s0..s0 + n), sv.slice(s0 + n..s1));
    let gv = grad.as_cuda_slice::<f32>()?.slice(g0..g1);
    let mut tv = theta.as_cuda_slice_mut::<f32>()?.slice_mut(t0..t1);
    let n_arg = n as i64;
    let threads = 256u32;
    let blocks = (n as u32).div_ceil(threads).clamp(1, 4096);
    let stream = dev.cuda_stream();
    let mut l = stream.launch_builder(&func);
    l.arg(&mut tv).arg(&m).arg(&v).arg(&gv).arg(&n_arg).arg(k);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and count match the kernel's signature; the moments are written
    // through their device pointers, and nothing else holds them.
    unsafe { l.launch(cfg) }.w()?;
    Ok(())
}
