//! What the ranks of a data-parallel calibration share: the [`Collective`] that sums their
//! losses and gradients, one rank alone ([`Solo`]), and ranks that are threads of this process
//! summing on the host in rank order ([`HostGroup`]; CPU devices, and the tests). The NCCL
//! collective (`parallel_nccl`) implements the same trait; `parallel` starts the ranks.

use std::sync::{Arc, Condvar, Mutex};

use anyhow::Result;
use candle_core::{Device, Tensor};

/// What the ranks of one calibration share.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Replaces each tensor by its sum over all ranks, the same values on every rank. Every
    /// rank passes tensors of the same shapes in the same order.
    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()>;

    /// The mean over all ranks' items of a value whose mean over this rank's `n` items is
    /// `mean`.
    fn mean(&self, mean: f64, n: usize, dev: &Device) -> Result<f64> {
        if self.world() == 1 {
            return Ok(mean);
        }
        let mut t = [Tensor::new(&[mean * n as f64, n as f64], dev)?];
        self.all_reduce_sum(&mut t)?;
        let v = t[0].to_vec1::<f64>()?;
        Ok(v[0] / v[1].max(1.0))
    }
}

/// What a rank reports when another rank's failure stopped it: the other's error is the one
/// to show.
#[derive(Debug, thiserror::Error)]
#[error("another rank of the calibration failed")]
pub struct AnotherRankFailed;

/// One rank alone: sums are the values themselves.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
}

/// Ranks as threads of this process, meeting in [`HostRank::all_reduce_sum`]. A rank that
/// fails calls [`HostGroup::fail`], so the others stop at their next sum instead of waiting
/// for it forever.
pub struct HostGroup {
    world: usize,
    state: Mutex<Round>,
    changed: Condvar,
}

struct Round {
    /// This round's contributions, on the CPU, by rank.
    slots: Vec<Option<Vec<Tensor>>>,
    arrived: usize,
    /// Rounds completed; a waiting rank leaves when it moves on.
    completed: u64,
    /// The last completed round's sums: replaced only when every rank has arrived again, so
    /// after every rank has read it.
    sums: Arc<Vec<Tensor>>,
    failed: bool,
}

impl HostGroup {
    pub fn new(world: usize) -> HostGroup {
        HostGroup {
            world,
            state: Mutex::new(Round {
                slots: vec![None; world],
                arrived: 0,
                completed: 0,
                sums: Arc::new(Vec::new()),
                failed: false,
            }),
            changed: Condvar::new(),
        }
    }

    pub fn rank(&self, rank: usize) -> HostRank<'_> {
        assert!(rank < self.world);
        HostRank { group: self, rank }
    }

    /// Wakes every waiting rank with an error: one rank has failed.
    pub fn fail(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.failed = true;
        self.changed.notify_all();
    }
}

pub struct HostRank<'a> {
    group: &'a HostGroup,
    rank: usize,
}

impl Collective for HostRank<'_> {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.group.world
    }
    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        let g = self.group;
        let mine = tensors
            .iter()
            .map(|t| t.to_device(&Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut s = g.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.failed {
            return Err(AnotherRankFailed.into());
        }
        s.slots[self.rank] = Some(mine);
        s.arrived += 1;
        let round = s.completed;
        if s.arrived == g.world {
            let slots: Vec<Vec<Tensor>> = s.slots.iter_mut().map(|x| x.take().unwrap()).collect();
            let mut sums = Vec::with_capacity(slots[0].len());
            for i in 0..slots[0].len() {
                let mut acc = slots[0][i].clone();
                for other in &slots[1..] {
                    acc = (acc + &other[i])?;
                }
                sums.push(acc);
            }
            s.sums = Arc::new(sums);
            s.arrived = 0;
            s.completed += 1;
            g.changed.notify_all();
        } else {
            while s.completed == round && !s.failed {
                s = g.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.completed == round {
                return Err(AnotherRankFailed.into());
            }
        }
        let sums = s.sums.clone();
        drop(s);
        for (t, sum) in tensors.iter_mut().zip(sums.iter()) {
            *t = sum.to_device(t.device())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ranks_get_the_rank_ordered_sum_every_round() {
        let world = 3;
        let group = HostGroup::new(world);
        let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let c = group.rank(rank);
                    s.spawn(move || {
                        (0..50)
                            .map(|round| {
                                let v = [rank as f32 + 1.0, round as f32 * 0.1 + rank as f32];
                                let mut t = [Tensor::new(&v, &Device::Cpu).unwrap()];
                                c.all_reduce_sum(&mut t).unwrap();
                                t[0].to_vec1::<f32>().unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for round in 0..50 {
            let expect = [
                1.0 + 2.0 + 3.0,
                (round as f32 * 0.1 + 0.0)
                    + (round as f32 * 0.1 + 1.0)
                    + (round as f32 * 0.1 + 2.0),
            ];
            for r in &results {
                assert_eq!(r[round], expect, "round {round}");
            }
        }
    }

    #[test]
    fn a_failed_rank_releases_the_others() {
        let group = HostGroup::new(2);
        let c = group.rank(0);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| {
                let mut t = [Tensor::new(&[1f32], &Device::Cpu).unwrap()];
                c.all_reduce_sum(&mut t)
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            group.fail();
            let err = waiting.join().unwrap().unwrap_err();
            assert!(err.to_string().contains("another rank"), "{err}");
        });
    }
}
