//! Where a calibration's wall time goes, phase by phase (summed over blocks): what the block
//! loop does besides the training steps is measured before it is made faster.
//!
//! On a GPU the work is queued: a phase's time ends at its last synchronisation with the host
//! (the MSE read back, the block copied out to be packed, the state saved), so queued work of
//! one phase can show in the next; the sum is the wall time either way.

use std::time::Instant;

/// The phases of one block, in the order the block loop runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Wait for the reader thread's block (read and dequantized while the previous block
    /// ran), upload it, and quantize a frozen base or take an imatrix.
    Load,
    /// The full-precision block's outputs, the training targets.
    Targets,
    Train,
    /// Requantize the learned grid into the final linears.
    Finalize,
    /// The quantized chain's forward through the final block, and its MSE.
    Chain,
    /// The RTN (and `--baselines` LWC-only) MSE of the per-block line.
    Diagnostics,
    /// Hand the block to the writer thread, which saves its resume state and packs and
    /// writes it while the next block runs: the time the loop waits for it.
    Write,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Load,
        Phase::Targets,
        Phase::Train,
        Phase::Finalize,
        Phase::Chain,
        Phase::Diagnostics,
        Phase::Write,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Targets => "FP targets",
            Phase::Train => "train",
            Phase::Finalize => "finalize",
            Phase::Chain => "chain + MSE",
            Phase::Diagnostics => "RTN/LWC MSE",
            Phase::Write => "writer wait",
        }
    }
}

/// Seconds per phase, and the clock that fills them in.
#[derive(Debug, Clone)]
pub struct Phases {
    pub seconds: [f64; 7],
    last: Instant,
}

impl Default for Phases {
    fn default() -> Self {
        Phases {
            seconds: [0.0; 7],
            last: Instant::now(),
        }
    }
}

impl Phases {
    /// Charges the time since the last lap (or the start) to `p`.
    pub fn lap(&mut self, p: Phase) {
        let now = Instant::now();
        self.seconds[p as usize] += (now - self.last).as_secs_f64();
        self.last = now;
    }

    pub fn add(&mut self, o: &Phases) {
        for (a, b) in self.seconds.iter_mut().zip(o.seconds) {
            *a += b;
        }
    }

    /// `load 1.2 s, FP targets 0.4 s, …` (phases that took no time are left out).
    pub fn line(&self) -> String {
        Phase::ALL
            .iter()
            .zip(self.seconds)
            .filter(|(_, s)| *s >= 0.05)
            .map(|(p, s)| format!("{} {s:.1} s", p.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_go_to_their_phase_and_sum_to_the_wall_time() {
        let start = Instant::now();
        let mut p = Phases::default();
        std::thread::sleep(std::time::Duration::from_millis(60));
        p.lap(Phase::Load);
        std::thread::sleep(std::time::Duration::from_millis(120));
        p.lap(Phase::Train);
        p.lap(Phase::Write);
        let wall = start.elapsed().as_secs_f64();
        let s = p.seconds;
        assert!(s[Phase::Load as usize] >= 0.06 && s[Phase::Train as usize] >= 0.12);
        assert!(s[Phase::Write as usize] < 0.01);
        assert!(
            (s.iter().sum::<f64>() - wall).abs() < 0.01,
            "{s:?} vs {wall}"
        );
        let line = p.line();
        assert!(
            line.starts_with("load 0.") && line.contains("train 0.1") && !line.contains("writer")
        );
    }
}
