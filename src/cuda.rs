//! Our own CUDA kernels (`src/**/*.cu`): build.rs compiles each file with nvcc to a fatbin
//! holding machine code (SASS) for the target architectures, so loading one costs no JIT; this
//! module loads each fatbin once per device and looks its functions up.
//!
//! Why our own kernels: candle composes the LWC quantizer, the masked softmax and AdamW from
//! 10–25 elementwise launches each (every one a pass over the tensor), and candle's fused
//! softmax has no backward pass. The f32 candle compositions stay the reference for each kernel
//! (see the `*_op` modules beside the `.cu` files).
//!
//! Launching a kernel is FFI, so this module and the `*_cuda` launchers allow `unsafe`.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaModule};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
use candle_core::Result;

/// One compiled `.cu` file.
pub struct Fatbin {
    pub name: &'static str,
    pub image: &'static [u8],
}

macro_rules! fatbin {
    ($name:literal) => {
        $crate::cuda::Fatbin {
            name: $name,
            image: include_bytes!(concat!(env!("OUT_DIR"), "/cuda/", $name, ".fatbin")),
        }
    };
}
pub(crate) use fatbin;

type Modules = HashMap<(DeviceId, &'static str), Arc<CudaModule>>;

/// The function `name` of `bin` on `dev` (module loaded on first use).
pub fn function(dev: &CudaDevice, bin: &Fatbin, name: &str) -> Result<CudaFunction> {
    static MODULES: OnceLock<Mutex<Modules>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .expect("CUDA module cache poisoned");
    let module = match modules.get(&(dev.id(), bin.name)) {
        Some(m) => m.clone(),
        None => {
            let m = dev
                .cuda_stream()
                .context()
                .load_module(Ptx::from_binary(bin.image.to_vec()))
                .w()?;
            modules.insert((dev.id(), bin.name), m.clone());
            m
        }
    };
    module.load_function(name).w()
}

/// The stream-ordered pool candle allocates from (the device's default pool).
fn default_pool(dev: &CudaDevice) -> Result<sys::CUmemoryPool> {
    let mut pool = std::ptr::null_mut();
    let cu_dev = dev.cuda_stream().context().cu_device();
    // SAFETY: FFI with a valid device handle and out-pointer.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, cu_dev) };
    check(r)?;
    Ok(pool)
}

fn check(r: sys::CUresult) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        candle_core::bail!("CUDA memory pool query failed: {r:?}")
    }
}

/// Highest bytes in use from the device's allocation pool since the last reset.
pub fn peak_memory(dev: &CudaDevice) -> Result<u64> {
    let pool = default_pool(dev)?;
    let mut v: u64 = 0;
    // SAFETY: FFI; USED_MEM_HIGH is a cuuint64_t.
    let r = unsafe {
        sys::cuMemPoolGetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut v as *mut u64).cast(),
        )
    };
    check(r)?;
    Ok(v)
}

/// Starts a new high-water mark for [`peak_memory`].
pub fn reset_peak_memory(dev: &CudaDevice) -> Result<()> {
    let pool = default_pool(dev)?;
    let mut zero: u64 = 0;
    // SAFETY: FFI; resetting USED_MEM_HIGH takes a zero cuuint64_t.
    let r = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut zero as *mut u64).cast(),
        )
    };
    check(r)
}
