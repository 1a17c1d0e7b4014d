//! NCCL sums for a data-parallel calibration on GPUs: one rank per GPU, each a thread of this
//! process with its own communicator on the stream candle computes on, so a sum runs after the
//! kernels that made its inputs and before those that read it, with no host synchronization.
//!
//! Before each sum the ranks meet on the host ([`HostRank`] with nothing to add): a rank that
//! failed has then stopped the others there, rather than leaving them inside a collective that
//! would wait for it on the GPU forever.

use anyhow::{anyhow, bail, Result};
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};

use super::collective::{Collective, HostRank};

/// The group's identity: made once, handed to every rank's thread. NVLink multicast (NVLS)
/// stays off unless the environment asks for it: on shared hosts a program using it can take
/// the GPUs out of service, and a sum of a few MB per step gains nothing from it.
pub fn group_id() -> Result<Id> {
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        std::env::set_var("NCCL_NVLS_ENABLE", "0");
    }
    Id::new().map_err(|e| {
        anyhow!("NCCL: cannot create a group: {e:?} (is libnccl.so.2 on the loader path?)")
    })
}

pub struct NcclRank<'a> {
    comm: Comm,
    dev: CudaDevice,
    gate: HostRank<'a>,
}

impl<'a> NcclRank<'a> {
    /// Joins group `id` as `gate`'s rank on `dev`; returns once every rank has joined.
    pub fn join(id: Id, gate: HostRank<'a>, dev: &Device) -> Result<NcclRank<'a>> {
        let Device::Cuda(d) = dev else {
            bail!("NCCL ranks run on CUDA devices");
        };
        let (rank, world) = (gate.rank(), gate.world());
        // ncclCommInitRank takes the calling thread's current device, not the stream's.
        let stream = d.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| anyhow!("CUDA: {e:?}"))?;
        let comm = Comm::from_rank(stream, rank, world, id)
            .map_err(|e| anyhow!("NCCL: rank {rank} of {world} cannot join: {e:?}"))?;
        Ok(NcclRank {
            comm,
            dev: d.clone(),
            gate,
        })
    }

    fn sum<T: CudaDType + NcclType + DeviceRepr + ValidAsZeroBits>(
        &self,
        t: &Tensor,
    ) -> Result<Tensor> {
        let sum = {
            let (s, l) = t.storage_and_layout();
            let Storage::Cuda(cs) = &*s else {
                bail!("NCCL sums tensors on the GPU");
            };
            let Some((a, b)) = l.contiguous_offsets() else {
                bail!("NCCL sums contiguous tensors");
            };
            let src = cs.as_cuda_slice::<T>()?.slice(a..b);
            let mut dst = self.dev.alloc_zeros::<T>(b - a)?;
            self.comm
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| anyhow!("NCCL all-reduce: {e:?}"))?;
            CudaStorage::wrap_cuda_slice(dst, self.dev.clone())
        };
        Ok(Tensor::from_storage(
            Storage::Cuda(sum),
            t.shape().clone(),
            BackpropOp::none(),
            false,
        ))
    }
}

impl Collective for NcclRank<'_> {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn world(&self) -> usize {
        self.comm.world_size()
    }
    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.gate.all_reduce_sum(&mut [])?;
        for t in tensors.iter_mut() {
            let c = t.contiguous()?;
            *t = match c.dtype() {
                DType::F32 => self.sum::<f32>(&c)?,
                DType::F64 => self.sum::<f64>(&c)?,
                other => bail!("NCCL sums of {other:?} tensors are not wired up"),
            };
        }
        Ok(())
    }
}
