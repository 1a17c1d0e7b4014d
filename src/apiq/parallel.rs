//! Data parallelism over calibration windows: one rank per device, each holding the current
//! block and its shard of the windows. Each training step every rank sums the losses and
//! gradients of its windows of the step, a [`Collective`] sums those over all ranks, and every
//! rank applies the same update to its copy of the parameters, which so stay identical.
//!
//! [`HostGroup`] sums on the host for ranks that are CPU threads; `parallel_nccl` (CUDA builds
//! with the `nccl` feature) sums on the GPUs through NCCL.

use anyhow::Result;
use candle_core::Device;

use super::collective::{AnotherRankFailed, Collective, HostGroup};

/// Runs one rank per device, joined by the collective their kind takes (NCCL for GPUs, host
/// sums for CPU threads): `first` as rank 0 on this thread, `other` for the rest, each on its
/// own. The first error of any rank (before the "another rank failed" of those it stopped) is
/// the result; else rank 0's value and the others', by rank.
pub fn run_ranks<T: Send>(
    devices: &[Device],
    first: impl FnOnce(&dyn Collective) -> Result<T>,
    other: impl Fn(&dyn Collective, usize) -> Result<T> + Sync,
) -> Result<(T, Vec<T>)> {
    let group = HostGroup::new(devices.len());
    #[cfg(feature = "nccl")]
    let nccl = match devices[0].is_cuda() {
        true => Some(super::parallel_nccl::group_id()?),
        false => None,
    };
    // The rank's collective.
    let join = |rank: usize| -> Result<Box<dyn Collective + '_>> {
        let gate = group.rank(rank);
        #[cfg(feature = "nccl")]
        if let Some(id) = nccl {
            let c = super::parallel_nccl::NcclRank::join(id, gate, &devices[rank])?;
            return Ok(Box::new(c));
        }
        Ok(Box::new(gate))
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..devices.len())
            .map(|rank| {
                let (group, join, other) = (&group, &join, &other);
                s.spawn(move || {
                    let out = join(rank).and_then(|c| other(&*c, rank));
                    if out.is_err() {
                        group.fail();
                    }
                    out
                })
            })
            .collect();
        let zero = join(0).and_then(|c| first(&*c));
        if zero.is_err() {
            group.fail();
        }
        let mut errors = Vec::new();
        let mut values = Vec::new();
        for (rank, out) in std::iter::once(Ok(zero))
            .chain(handles.into_iter().map(|h| h.join()))
            .enumerate()
        {
            match out {
                Ok(Ok(v)) => values.push(v),
                Ok(Err(e)) => errors.push(e.context(format!("device {rank}"))),
                Err(_) => errors.push(anyhow::anyhow!("device {rank}: the thread panicked")),
            }
        }
        errors.sort_by_key(|e| e.downcast_ref::<AnotherRankFailed>().is_some());
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        let mut values = values.into_iter();
        let zero = values.next().expect("rank 0 ran");
        Ok((zero, values.collect()))
    })
}
