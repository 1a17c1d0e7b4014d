//! Pure-Rust codecs between ApiQ's requantized weights ([`Quantized`]: per group f16 `d`,
//! f16 `m = −d·z`, codes `q`, value `d·q + m`) and the block formats that hold them:
//! APIQ2 (ours), Q2_0, Q4_1 (exact) and Q4_0 (Q2_K's fallback, exact up to `m`'s f16
//! rounding). Decoders evaluate each value with the same f32 operations as ggml's
//! `dequantize_row_*`, so they are the reference the tests hold the files to.
//!
//! Groups run along the input dimension and never straddle rows, so every codec works on the
//! flat row-major array: value `i` belongs to group `i / group`.

use anyhow::{bail, ensure, Result};
use half::f16;

use crate::quant::quantizer::Quantized;

fn h(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

fn push_h(out: &mut Vec<u8>, bits: u16) {
    out.extend_from_slice(&bits.to_le_bytes());
}

fn read_h(b: &[u8], at: usize) -> f32 {
    h(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Four 2-bit codes per byte, element `j` at bits `2·(j % 4)` of byte `j / 4` (Q2_0's order).
fn pack2(codes: &[u8], out: &mut Vec<u8>) {
    out.extend(
        codes
            .chunks_exact(4)
            .map(|c| c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6)),
    );
}

fn unpack2(b: u8, j: usize) -> u8 {
    (b >> (2 * (j % 4))) & 3
}

fn check(q: &Quantized, group: usize, block: usize, max_code: u8, what: &str) -> Result<()> {
    ensure!(
        group.is_multiple_of(block) || block.is_multiple_of(group),
        "{what} blocks of {block} cannot hold groups of {group}"
    );
    ensure!(
        q.codes.len().is_multiple_of(block.max(group)),
        "{} values are not whole {what} blocks",
        q.codes.len()
    );
    if let Some(c) = q.codes.iter().find(|&&c| c > max_code) {
        bail!("code {c} does not fit {what} (codes 0..={max_code})");
    }
    Ok(())
}

/// APIQ2: per 64 values f16 `d`, f16 `m`, 16 bytes of codes; value `d·q + m`.
pub const APIQ2_BLOCK: usize = 64;

pub fn encode_apiq2(q: &Quantized, group: usize) -> Result<Vec<u8>> {
    ensure!(
        group == APIQ2_BLOCK,
        "APIQ2 holds groups of 64, not {group}"
    );
    check(q, group, APIQ2_BLOCK, 3, "APIQ2")?;
    let mut out = Vec::with_capacity(q.codes.len() / 64 * 20);
    for (k, codes) in q.codes.chunks_exact(64).enumerate() {
        push_h(&mut out, q.d[k]);
        push_h(&mut out, q.m[k]);
        pack2(codes, &mut out);
    }
    Ok(out)
}

pub fn decode_apiq2(raw: &[u8]) -> Result<Vec<f32>> {
    ensure!(raw.len().is_multiple_of(20), "not whole APIQ2 blocks");
    let mut y = Vec::with_capacity(raw.len() / 20 * 64);
    for b in raw.chunks_exact(20) {
        let (d, m) = (read_h(b, 0), read_h(b, 2));
        y.extend((0..64).map(|j| d * f32::from(unpack2(b[4 + j / 4], j)) + m));
    }
    Ok(y)
}

/// Q2_0 (stock, 2.25 bpw): per 64 values f16 `d` and codes; value `(q − 1)·d`. ApiQ's grid
/// fits when `z = 1` (codes as they are) or `z = 2` (`d` negated, codes `3 − q`).
pub fn encode_q2_0(q: &Quantized, group: usize) -> Result<Vec<u8>> {
    ensure!(group == 64, "Q2_0 holds groups of 64, not {group}");
    check(q, group, 64, 3, "Q2_0")?;
    let mut out = Vec::with_capacity(q.codes.len() / 64 * 18);
    let mut flipped = [0u8; 64];
    for (k, codes) in q.codes.chunks_exact(64).enumerate() {
        let d = f16::from_bits(q.d[k]);
        let (z, m) = (q.z[k], h(q.m[k]));
        ensure!(
            m == -d.to_f32() * z,
            "group {k}: m = {m} is not −d·z (d = {d}, z = {z})"
        );
        match z as i32 {
            1 => {
                push_h(&mut out, d.to_bits());
                pack2(codes, &mut out);
            }
            2 => {
                push_h(&mut out, (-d).to_bits());
                for (f, c) in flipped.iter_mut().zip(codes) {
                    *f = 3 - c;
                }
                pack2(&flipped, &mut out);
            }
            _ => bail!(
                "group {k} has zero point {z}; Q2_0 holds only z = 1 or 2 \
                 (calibrate with --format q2_0, which restricts it)"
            ),
        }
    }
    Ok(out)
}

pub fn decode_q2_0(raw: &[u8]) -> Result<Vec<f32>> {
    ensure!(raw.len().is_multiple_of(18), "not whole Q2_0 blocks");
    let mut y = Vec::with_capacity(raw.len() / 18 * 64);
    for b in raw.chunks_exact(18) {
        let d = read_h(b, 0);
        y.extend((0..64).map(|j| (i32::from(unpack2(b[2 + j / 4], j)) - 1) as f32 * d));
    }
    Ok(y)
}

/// Q4_1 (stock, 5 bpw): per 32 values f16 `d`, f16 `m`, nibbles (low = first 16 values);
/// value `d·q + m`. Holds any grid of up to 4 bits whose groups are multiples of 32.
pub fn encode_q4_1(q: &Quantized, group: usize) -> Result<Vec<u8>> {
    ensure!(
        group.is_multiple_of(32),
        "Q4_1 holds groups of a multiple of 32, not {group}"
    );
    check(q, group, 32, 15, "Q4_1")?;
    let mut out = Vec::with_capacity(q.codes.len() / 32 * 20);
    for (b, codes) in q.codes.chunks_exact(32).enumerate() {
        let k = b * 32 / group;
        push_h(&mut out, q.d[k]);
        push_h(&mut out, q.m[k]);
        out.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
    }
    Ok(out)
}

pub fn decode_q4_1(raw: &[u8]) -> Result<Vec<f32>> {
    ensure!(raw.len().is_multiple_of(20), "not whole Q4_1 blocks");
    let mut y = vec![0f32; raw.len() / 20 * 32];
    for (b, out) in raw.chunks_exact(20).zip(y.chunks_exact_mut(32)) {
        let (d, m) = (read_h(b, 0), read_h(b, 2));
        for j in 0..16 {
            out[j] = f32::from(b[4 + j] & 0xF) * d + m;
            out[j + 16] = f32::from(b[4 + j] >> 4) * d + m;
        }
    }
    Ok(y)
}

/// Q4_0 (stock, 4.5 bpw): per 32 values f16 `d` and nibbles; value `(q − 8)·d`. ApiQ's grid
/// maps to `q − z + 8`, which is `d·q + m` except where `m = f16(−d·z)` was rounded.
pub fn encode_q4_0(q: &Quantized, group: usize) -> Result<Vec<u8>> {
    ensure!(
        group.is_multiple_of(32),
        "Q4_0 holds groups of a multiple of 32, not {group}"
    );
    check(q, group, 32, 15, "Q4_0")?;
    let mut out = Vec::with_capacity(q.codes.len() / 32 * 18);
    for (b, codes) in q.codes.chunks_exact(32).enumerate() {
        let k = b * 32 / group;
        let z = q.z[k] as i32;
        let code = |c: u8| -> Result<u8> {
            let v = i32::from(c) - z + 8;
            ensure!(
                (0..16).contains(&v),
                "group {k}: zero point {z} puts code {c} outside Q4_0's range"
            );
            Ok(v as u8)
        };
        push_h(&mut out, q.d[k]);
        for j in 0..16 {
            out.push(code(codes[j])? | (code(codes[j + 16])? << 4));
        }
    }
    Ok(out)
}

pub fn decode_q4_0(raw: &[u8]) -> Result<Vec<f32>> {
    ensure!(raw.len().is_multiple_of(18), "not whole Q4_0 blocks");
    let mut y = vec![0f32; raw.len() / 18 * 32];
    for (b, out) in raw.chunks_exact(18).zip(y.chunks_exact_mut(32)) {
        let d = read_h(b, 0);
        for j in 0..16 {
            out[j] = (i32::from(b[2 + j] & 0xF) - 8) as f32 * d;
            out[j + 16] = (i32::from(b[2 + j] >> 4) - 8) as f32 * d;
        }
    }
    Ok(y)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ggml::stock;
    use crate::ggml::GgmlType;
    use crate::quant::{GroupedWeight, QuantSpec};
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    /// Random weights (normal-ish, with outlier groups and an all-positive group) requantized
    /// with random clipping factors, as a calibration would leave them.
    pub(crate) fn random_quantized(
        rows: usize,
        cols: usize,
        spec: &QuantSpec,
        seed: u64,
    ) -> Quantized {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut w: Vec<f32> = (0..rows * cols)
            .map(|_| {
                let u: f32 = (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0;
                u * 0.05
            })
            .collect();
        w[..spec.group_size]
            .iter_mut()
            .for_each(|v| *v = v.abs() + 0.01);
        w[spec.group_size * 2] = 0.9;
        let t = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).unwrap();
        let gw = GroupedWeight::new(&t, spec.group_size).unwrap();
        let n = gw.n_groups();
        let logit = |rng: &mut rand_chacha::ChaCha8Rng| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-1.0f32..5.0)).collect()
        };
        let (g, b) = (logit(&mut rng), logit(&mut rng));
        crate::quant::quantizer::requantize(
            spec,
            &gw,
            &Tensor::from_slice(&g, (n, 1), &Device::Cpu).unwrap(),
            &Tensor::from_slice(&b, (n, 1), &Device::Cpu).unwrap(),
        )
        .unwrap()
    }

    fn spec(bits: u32, group_size: usize, zero_range: Option<(u32, u32)>) -> QuantSpec {
        QuantSpec {
            bits,
            group_size,
            symmetric: false,
            zero_range,
            kgrid: None,
        }
    }

    /// Bit-identical, except that −0 equals +0: Q2_0's negated `d` gives `0·(−d) = −0` where
    /// the grid `d·q + m` gives +0.
    pub(crate) fn bits_eq(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits() == y.to_bits() || (*x == 0.0 && *y == 0.0))
    }

    #[test]
    fn apiq2_round_trips_bit_exactly() {
        for seed in 0..4 {
            let q = random_quantized(24, 192, &spec(2, 64, None), seed);
            let raw = encode_apiq2(&q, 64).unwrap();
            assert_eq!(raw.len(), 24 * 192 / 64 * 20);
            assert!(bits_eq(&decode_apiq2(&raw).unwrap(), &q.weight));
        }
        let q = random_quantized(4, 128, &spec(3, 64, None), 9);
        assert!(encode_apiq2(&q, 64).is_err(), "3-bit codes do not fit");
    }

    #[test]
    fn q2_0_round_trips_and_matches_ggml() {
        let mut seen = [false; 2];
        for seed in 0..4 {
            let q = random_quantized(16, 256, &spec(2, 64, Some((1, 2))), seed);
            q.z.iter().for_each(|&z| seen[z as usize - 1] = true);
            let raw = encode_q2_0(&q, 64).unwrap();
            assert!(bits_eq(&decode_q2_0(&raw).unwrap(), &q.weight));
            assert!(bits_eq(
                &stock::dequantize(GgmlType::Q2_0, &raw).unwrap(),
                &q.weight
            ));
        }
        assert_eq!(seen, [true, true], "both zero points exercised");
        let free = random_quantized(16, 256, &spec(2, 64, None), 1);
        assert!(free.z.iter().any(|&z| z == 0.0 || z == 3.0));
        assert!(encode_q2_0(&free, 64).is_err(), "z outside {{1,2}} refused");
    }

    #[test]
    fn q4_1_round_trips_and_matches_ggml() {
        for (bits, group) in [(4, 32), (2, 64), (3, 128)] {
            let q = random_quantized(8, 256, &spec(bits, group, None), u64::from(bits));
            let raw = encode_q4_1(&q, group).unwrap();
            assert!(
                bits_eq(&decode_q4_1(&raw).unwrap(), &q.weight),
                "{bits} {group}"
            );
            assert!(bits_eq(
                &stock::dequantize(GgmlType::Q4_1, &raw).unwrap(),
                &q.weight
            ));
        }
    }

    #[test]
    fn q4_0_matches_ggml_and_is_exact_where_m_is() {
        let q = random_quantized(8, 256, &spec(2, 64, None), 5);
        let raw = encode_q4_0(&q, 64).unwrap();
        let ours = decode_q4_0(&raw).unwrap();
        assert!(bits_eq(
            &ours,
            &stock::dequantize(GgmlType::Q4_0, &raw).unwrap()
        ));
        for (i, (a, b)) in ours.iter().zip(&q.weight).enumerate() {
            let k = i / 64;
            let d = h(q.d[k]);
            if h(q.m[k]) == -d * q.z[k] {
                assert_eq!(a.to_bits(), b.to_bits(), "value {i}");
            } else {
                assert!((a - b).abs() <= d * 1e-3, "value {i}: {a} vs {b}");
            }
        }
    }
}
