//! ApiQ's grid mapped onto Q2_K (stock, 2.625 bpw; loads in Ollama and older llama.cpp).
//!
//! A Q2_K super-block holds 256 values as 16 sub-blocks of 16: value `d·sc·q − dmin·mn` with
//! f16 `d`, `dmin` per super-block and 4-bit `sc`, `mn` per sub-block. Each sub-block lies in
//! one learned group (groups are multiples of 16), whose scale `s` and offset `−m` must be
//! rounded onto `d·sc` and `dmin·mn`. Per super-block we keep the few `d` (and `dmin`) that
//! best fit the learned scales (offsets), then pick the pair, and for each value the code,
//! that minimise the squared error against the calibrated (fake-quant) weights.

use anyhow::{ensure, Result};
use half::f16;

use crate::quant::quantizer::Quantized;

pub const QK_K: usize = 256;
const BLOCK_BYTES: usize = 84;
const CANDIDATES: usize = 4;

/// Error that the mapping adds to the calibrated weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct MappingError {
    pub sum_sq: f64,
    /// Σ y² of the calibrated weights, for a relative figure.
    pub sum_sq_ref: f64,
    pub max_abs: f64,
    pub n: usize,
}

impl MappingError {
    /// The error of `got` against the calibrated weights `want`.
    pub fn measure(got: &[f32], want: &[f32]) -> MappingError {
        let mut e = MappingError {
            n: want.len(),
            ..MappingError::default()
        };
        for (a, b) in got.iter().zip(want) {
            let d = f64::from(a - b);
            e.sum_sq += d * d;
            e.max_abs = e.max_abs.max(d.abs());
            e.sum_sq_ref += f64::from(*b) * f64::from(*b);
        }
        e
    }

    pub fn add(&mut self, o: &MappingError) {
        self.sum_sq += o.sum_sq;
        self.sum_sq_ref += o.sum_sq_ref;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.n += o.n;
    }

    pub fn rmse(&self) -> f64 {
        (self.sum_sq / self.n.max(1) as f64).sqrt()
    }

    /// ‖added error‖ / ‖calibrated weights‖.
    pub fn relative(&self) -> f64 {
        (self.sum_sq / self.sum_sq_ref.max(f64::MIN_POSITIVE)).sqrt()
    }
}

fn f16r(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The `CANDIDATES` f16 multipliers `u` whose 4-bit multiples `u·n` (n = round(t/u) clamped to
/// 0..=15) fit the targets `t` best. Targets of the wrong sign clamp to n = 0.
fn best_units(t: &[f32; 16]) -> Vec<(f32, [u8; 16])> {
    let (lo, hi) = t
        .iter()
        .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
    let top = if hi > 0.0 { hi } else { lo };
    if top == 0.0 {
        return vec![(0.0, [0; 16])];
    }
    let mut scored: Vec<(f64, f32, [u8; 16])> = (0..=24)
        .map(|i| {
            let u = f16r(top / (15.0 - 0.25 * i as f32));
            let mut n = [0u8; 16];
            let mut err = 0f64;
            for (j, &v) in t.iter().enumerate() {
                n[j] = (v / u).round().clamp(0.0, 15.0) as u8;
                err += f64::from(u * f32::from(n[j]) - v).powi(2);
            }
            (err, u, n)
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(CANDIDATES)
        .map(|(_, u, n)| (u, n))
        .collect()
}

/// One super-block's scales: `d·sc[j]` and `dmin·mn[j]` per sub-block.
struct Grid {
    d: f32,
    sc: [u8; 16],
    dmin: f32,
    mn: [u8; 16],
}

/// Codes and squared error of one super-block for a given grid; values as ggml computes them.
fn fit(y: &[f32], d: f32, sc: &[u8; 16], dmin: f32, mn: &[u8; 16], codes: &mut [u8]) -> f64 {
    let mut err = 0f64;
    for (j, (ys, cs)) in y
        .chunks_exact(16)
        .zip(codes.chunks_exact_mut(16))
        .enumerate()
    {
        let dl = d * f32::from(sc[j]);
        let ml = dmin * f32::from(mn[j]);
        for (&v, c) in ys.iter().zip(cs) {
            *c = if dl == 0.0 {
                0
            } else {
                ((v + ml) / dl).round().clamp(0.0, 3.0) as u8
            };
            err += f64::from(dl * f32::from(*c) - ml - v).powi(2);
        }
    }
    err
}

/// Encodes `q` (rows of a multiple of 256 values; groups of a multiple of 16) as Q2_K.
pub fn encode_q2_k(q: &Quantized, group: usize) -> Result<(Vec<u8>, MappingError)> {
    ensure!(
        q.weight.len().is_multiple_of(QK_K),
        "Q2_K needs rows of a multiple of {QK_K} values"
    );
    ensure!(
        group.is_multiple_of(16),
        "Q2_K sub-blocks of 16 cannot hold groups of {group}"
    );
    let mut out = Vec::with_capacity(q.weight.len() / QK_K * BLOCK_BYTES);
    let mut codes = [0u8; QK_K];
    let mut best_codes = [0u8; QK_K];
    for (sb, y) in q.weight.chunks_exact(QK_K).enumerate() {
        let mut s = [0f32; 16];
        let mut o = [0f32; 16];
        for j in 0..16 {
            let k = (sb * QK_K + 16 * j) / group;
            s[j] = f16::from_bits(q.d[k]).to_f32();
            o[j] = -f16::from_bits(q.m[k]).to_f32();
        }
        let mut best: Option<(f64, Grid)> = None;
        for (d, sc) in best_units(&s) {
            for (dmin, mn) in best_units(&o) {
                let err = fit(y, d, &sc, dmin, &mn, &mut codes);
                if best.as_ref().is_none_or(|b| err < b.0) {
                    best = Some((err, Grid { d, sc, dmin, mn }));
                    best_codes = codes;
                }
            }
        }
        let Grid { d, sc, dmin, mn } = best.expect("at least one candidate").1;
        out.extend((0..16).map(|j| sc[j] | (mn[j] << 4)));
        let mut qs = [0u8; 64];
        for (e, &c) in best_codes.iter().enumerate() {
            let (half, r) = (e / 128, e % 128);
            qs[32 * half + r % 32] |= c << (2 * (r / 32));
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend_from_slice(&f16::from_f32(dmin).to_bits().to_le_bytes());
    }
    let stats = MappingError::measure(&decode_q2_k(&out)?, &q.weight);
    Ok((out, stats))
}

fn decode_block(b: &[u8; BLOCK_BYTES]) -> [f32; QK_K] {
    let d = f16::from_bits(u16::from_le_bytes([b[80], b[81]])).to_f32();
    let dmin = f16::from_bits(u16::from_le_bytes([b[82], b[83]])).to_f32();
    let mut y = [0f32; QK_K];
    for (e, v) in y.iter_mut().enumerate() {
        let (half, r) = (e / 128, e % 128);
        let sc = b[e / 16];
        let c = (b[16 + 32 * half + r % 32] >> (2 * (r / 32))) & 3;
        let dl = d * f32::from(sc & 0xF);
        let ml = dmin * f32::from(sc >> 4);
        *v = dl * f32::from(c) - ml;
    }
    y
}

pub fn decode_q2_k(raw: &[u8]) -> Result<Vec<f32>> {
    ensure!(
        raw.len().is_multiple_of(BLOCK_BYTES),
        "not whole Q2_K blocks"
    );
    Ok(raw
        .chunks_exact(BLOCK_BYTES)
        .flat_map(|b| decode_block(b.try_into().expect("block")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{stock, GgmlType};
    use crate::pack::blocks::tests::random_quantized;
    use crate::quant::QuantSpec;

    fn sq_err(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
    }

    #[test]
    fn decoder_matches_ggml_and_error_is_bounded() {
        for (group, seed) in [(64, 1), (32, 2), (128, 3)] {
            let spec = QuantSpec {
                bits: 2,
                group_size: group,
                symmetric: false,
                zero_range: None,
            };
            let q = random_quantized(16, 512, &spec, seed);
            let (raw, stats) = encode_q2_k(&q, group).unwrap();
            assert_eq!(raw.len(), 16 * 2 * BLOCK_BYTES);
            let ours = decode_q2_k(&raw).unwrap();
            let theirs = stock::dequantize(GgmlType::Q2_K, &raw).unwrap();
            assert!(ours
                .iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let err = sq_err(&ours, &q.weight);
            assert!((err - stats.sum_sq).abs() <= 1e-9 * err.max(1.0));
            // Bound: well under the 2-bit grid's own step (RMS of a uniform rounding error is
            // step/√12): the mapping must not undo the calibration.
            let mean_step: f64 =
                q.d.iter()
                    .map(|&d| f64::from(f16::from_bits(d).to_f32()))
                    .sum::<f64>()
                    / q.d.len() as f64;
            assert!(
                stats.rmse() < 0.1 * mean_step,
                "group {group}: rmse {} vs step {mean_step}",
                stats.rmse()
            );
            // And better than running ggml's own Q2_K quantizer on the calibrated weights
            // (what llama-quantize would do to our F16 output).
            let requant = stock::quantize(GgmlType::Q2_K, &q.weight, 512).unwrap();
            let ggml_err = sq_err(
                &stock::dequantize(GgmlType::Q2_K, &requant).unwrap(),
                &q.weight,
            );
            assert!(
                err < ggml_err,
                "group {group}: ours {err} vs ggml {ggml_err}"
            );
        }
    }
}
