//! Pure-Rust codecs of the K-quant blocks ApiQ calibrates through (Q2_K, Q4_K, Q5_K): the very
//! super-block scales, sub-block codes and weight codes that were trained ([`KQuantized`]), in
//! ggml's byte layouts (`ggml-common.h`, `quantize_row_q*_K_ref`). Decoders evaluate each value
//! with the same f32 operations as ggml's `dequantize_row_q*_K`; the tests hold both to ggml's
//! own `to_float`.

use anyhow::{bail, ensure, Result};
use half::f16;

use crate::ggml::GgmlType;
use crate::quant::kgrid::KQuantized;
use crate::quant::kspec::{KGrid, QK_K};

/// The ggml type that stores grid `k`.
pub fn ggml_type(k: KGrid) -> GgmlType {
    match k {
        KGrid::Q2K => GgmlType::Q2_K,
        KGrid::Q4K => GgmlType::Q4_K,
        KGrid::Q5K => GgmlType::Q5_K,
    }
}

/// The grid a K type is calibrated through, if it is one of ours.
pub fn grid_of(ty: GgmlType) -> Option<KGrid> {
    [KGrid::Q2K, KGrid::Q4K, KGrid::Q5K]
        .into_iter()
        .find(|&k| ggml_type(k) == ty)
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_K / Q5_K: eight 6-bit scales and mins in 12 bytes (ggml's `get_scale_min_k4` order).
fn pack_scales_k4(sc: &[u8], mn: &[u8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j], mn[j]);
        if j < 4 {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    s
}

fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The bytes of `q` in its own K type.
pub fn encode(q: &KQuantized) -> Result<Vec<u8>> {
    let k = q.grid;
    let n_super = q.d.len();
    ensure!(
        q.codes.len() == n_super * QK_K
            && q.sc.len() == n_super * k.subs()
            && q.mn.len() == q.sc.len()
            && q.dmin.len() == n_super,
        "{}: inconsistent super-blocks",
        k.name()
    );
    let (cmax, smax) = (k.code_max() as u8, k.scale_max() as u8);
    if q.codes.iter().any(|&c| c > cmax) || q.sc.iter().chain(&q.mn).any(|&c| c > smax) {
        bail!("{}: a code does not fit the type", k.name());
    }
    let ty = ggml_type(k);
    let mut out = Vec::with_capacity(n_super * ty.type_size);
    for b in 0..n_super {
        let codes = &q.codes[b * QK_K..(b + 1) * QK_K];
        let sc = &q.sc[b * k.subs()..(b + 1) * k.subs()];
        let mn = &q.mn[b * k.subs()..(b + 1) * k.subs()];
        let (d, dmin) = (q.d[b].to_le_bytes(), q.dmin[b].to_le_bytes());
        match k {
            KGrid::Q2K => {
                // scales[16] (sc | mn << 4), qs[64], d, dmin. Per 128 values, four 2-bit planes
                // of 32 bytes: value 32·p + l of the half at bits 2p of byte l.
                out.extend((0..16).map(|j| sc[j] | (mn[j] << 4)));
                let mut qs = [0u8; 64];
                for (e, &c) in codes.iter().enumerate() {
                    let (half, r) = (e / 128, e % 128);
                    qs[32 * half + r % 32] |= c << (2 * (r / 32));
                }
                out.extend_from_slice(&qs);
                out.extend_from_slice(&d);
                out.extend_from_slice(&dmin);
            }
            KGrid::Q4K | KGrid::Q5K => {
                // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]: per 64 values 32 bytes, the
                // first 32 in the low nibbles, the next 32 in the high ones.
                out.extend_from_slice(&d);
                out.extend_from_slice(&dmin);
                out.extend_from_slice(&pack_scales_k4(sc, mn));
                if k == KGrid::Q5K {
                    let mut qh = [0u8; 32];
                    for (e, &c) in codes.iter().enumerate() {
                        let (p, l) = (e / 32, e % 32);
                        qh[l] |= ((c >> 4) & 1) << p;
                    }
                    out.extend_from_slice(&qh);
                }
                for c in codes.chunks_exact(64) {
                    out.extend((0..32).map(|l| (c[l] & 0xF) | ((c[l + 32] & 0xF) << 4)));
                }
            }
        }
    }
    Ok(out)
}

/// Each sub-block's range `(hi, lo)` = `(d·sc·qmax − dmin·mn, −dmin·mn)` in `raw` (whole
/// blocks of `k`'s type), in order.
pub fn sub_ranges(k: KGrid, raw: &[u8]) -> Result<(Vec<f32>, Vec<f32>)> {
    let size = ggml_type(k).type_size;
    ensure!(
        raw.len().is_multiple_of(size),
        "not whole {} blocks",
        k.name()
    );
    let (mut hi, mut lo) = (Vec::new(), Vec::new());
    let qmax = k.code_max() as f32;
    for b in raw.chunks_exact(size) {
        for j in 0..k.subs() {
            let (d, dmin, sc, m) = match k {
                KGrid::Q2K => (h(b, 80), h(b, 82), b[j] & 0xF, b[j] >> 4),
                KGrid::Q4K | KGrid::Q5K => {
                    let (sc, m) = scale_min_k4(j, &b[4..16]);
                    (h(b, 0), h(b, 2), sc, m)
                }
            };
            let big_m = dmin * f32::from(m);
            hi.push(d * f32::from(sc) * qmax - big_m);
            lo.push(-big_m);
        }
    }
    Ok((hi, lo))
}

/// `raw` (whole blocks of `k`'s type) back to f32, as ggml's `dequantize_row_q*_K`.
pub fn decode(k: KGrid, raw: &[u8]) -> Result<Vec<f32>> {
    let size = ggml_type(k).type_size;
    ensure!(
        raw.len().is_multiple_of(size),
        "not whole {} blocks",
        k.name()
    );
    let mut y = Vec::with_capacity(raw.len() / size * QK_K);
    for b in raw.chunks_exact(size) {
        match k {
            KGrid::Q2K => {
                let (d, dmin) = (h(b, 80), h(b, 82));
                for e in 0..QK_K {
                    let (half, r) = (e / 128, e % 128);
                    let sc = b[e / 16];
                    let c = (b[16 + 32 * half + r % 32] >> (2 * (r / 32))) & 3;
                    let dl = d * f32::from(sc & 0xF);
                    let ml = dmin * f32::from(sc >> 4);
                    y.push(dl * f32::from(c) - ml);
                }
            }
            KGrid::Q4K | KGrid::Q5K => {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let scales = &b[4..16];
                let (qh, qs) = if k == KGrid::Q5K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for e in 0..QK_K {
                    let (sc, m) = scale_min_k4(e / 32, scales);
                    let (pair, l) = (e / 64, e % 32);
                    let byte = qs[32 * pair + l];
                    let mut c = if (e / 32) % 2 == 0 {
                        byte & 0xF
                    } else {
                        byte >> 4
                    };
                    if let Some(qh) = qh {
                        c |= ((qh[l] >> (e / 32)) & 1) << 4;
                    }
                    y.push(d * f32::from(sc) * f32::from(c) - dmin * f32::from(m));
                }
            }
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::stock;
    use crate::quant::kgrid::{requantize, rtn};
    use crate::quant::GroupedWeight;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn grouped(k: KGrid, rows: usize, cols: usize, seed: u64) -> (Vec<f32>, GroupedWeight) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut w: Vec<f32> = (0..rows * cols)
            .map(|_| ((0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0) * 0.05)
            .collect();
        let n = k.sub_len();
        w[..n].iter_mut().for_each(|v| *v = v.abs() + 0.01);
        w[n..2 * n].iter_mut().for_each(|v| *v = 0.0);
        w[5 * n] = 1.5;
        let t = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).unwrap();
        (w, GroupedWeight::new(&t, n).unwrap())
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn ggml_dequantizes_the_trained_grid_bit_for_bit() {
        for (k, seed) in [(KGrid::Q2K, 1), (KGrid::Q4K, 2), (KGrid::Q5K, 3)] {
            let (_, gw) = grouped(k, 8, 512, seed);
            let n = gw.n_groups();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 100);
            let mut logit = || -> Tensor {
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..5.0)).collect();
                Tensor::from_slice(&v, (n, 1), &Device::Cpu).unwrap()
            };
            let (g, b) = (logit(), logit());
            for q in [requantize(k, &gw, &g, &b).unwrap(), rtn(k, &gw).unwrap()] {
                let raw = encode(&q).unwrap();
                let ty = ggml_type(k);
                assert_eq!(raw.len(), 8 * 2 * ty.type_size, "{k:?}");
                let theirs = stock::dequantize(ty, &raw).unwrap();
                assert_eq!(bits(&theirs), bits(&q.weight), "{k:?}: ggml vs the grid");
                assert_eq!(bits(&decode(k, &raw).unwrap()), bits(&theirs), "{k:?}");
            }
        }
    }

    #[test]
    fn every_code_reaches_its_place() {
        // Codes that differ everywhere (value = position) survive the layout: ggml must see
        // exactly the code put at each position.
        for k in [KGrid::Q2K, KGrid::Q4K, KGrid::Q5K] {
            let subs = k.subs();
            let q = KQuantized {
                grid: k,
                d: vec![f16::from_f32(1.0).to_bits()],
                dmin: vec![f16::from_f32(0.0).to_bits()],
                sc: (0..subs)
                    .map(|j| 1 + (j as u8 % k.scale_max() as u8))
                    .collect(),
                mn: vec![0; subs],
                codes: (0..QK_K)
                    .map(|e| ((e * 7 + e / 32) % (k.code_max() as usize + 1)) as u8)
                    .collect(),
                weight: Vec::new(),
            };
            let raw = encode(&q).unwrap();
            let theirs = stock::dequantize(ggml_type(k), &raw).unwrap();
            for (e, v) in theirs.iter().enumerate() {
                let want = f32::from(q.sc[e / k.sub_len()]) * f32::from(q.codes[e]);
                assert_eq!(*v, want, "{k:?} position {e}");
            }
        }
    }

    #[test]
    fn codes_beyond_the_type_are_refused() {
        let (_, gw) = grouped(KGrid::Q2K, 1, 256, 5);
        let mut q = rtn(KGrid::Q2K, &gw).unwrap();
        q.codes[3] = 4;
        assert!(encode(&q).is_err());
    }
}
