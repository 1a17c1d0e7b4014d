//! Pure-Rust codecs of the K-quant blocks ApiQ calibrates through (Q2_K..Q6_K): the very
//! super-block scales, sub-block codes and weight codes that were trained ([`KQuantized`]), in
//! ggml's byte layouts (`ggml-common.h`, `quantize_row_q*_K_ref`). Decoders evaluate each value
//! with the same f32 operations as ggml's `dequantize_row_q*_K`; the tests hold both to ggml's
//! own `to_float`.

use anyhow::{bail, ensure, Result};
use half::f16;

use crate::ggml::GgmlType;
use crate::quant::kquantized::KQuantized;
use crate::quant::kspec::{KGrid, QK_K};

/// The ggml type that stores grid `k`.
pub fn ggml_type(k: KGrid) -> GgmlType {
    match k {
        KGrid::Q2K => GgmlType::Q2_K,
        KGrid::Q3K => GgmlType::Q3_K,
        KGrid::Q4K => GgmlType::Q4_K,
        KGrid::Q5K => GgmlType::Q5_K,
        KGrid::Q6K => GgmlType::Q6_K,
    }
}

/// The grid a K type is calibrated through, if it is one of ours.
pub fn grid_of(ty: GgmlType) -> Option<KGrid> {
    KGrid::ALL.into_iter().find(|&k| ggml_type(k) == ty)
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

/// Q3_K: sixteen 6-bit scale codes (stored `sc + 32`) in 12 bytes: the low nibbles of 0..8 in
/// bytes 0..8 (8..16 in their high nibbles), the top two bits of j in byte 8 + j % 4 at bit
/// 2·(j / 4), as `quantize_row_q3_K_ref` packs them.
fn pack_scales_q3(sc: &[i8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &v) in sc.iter().enumerate() {
        let l = (i16::from(v) + 32) as u8;
        if j < 8 {
            s[j] = l & 0xF;
        } else {
            s[j - 8] |= (l & 0xF) << 4;
        }
        s[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    s
}

fn scale_q3(j: usize, s: &[u8]) -> i8 {
    let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    ((low | (high << 4)) as i8) - 32
}

/// The bytes of `q` in its own K type.
pub fn encode(q: &KQuantized) -> Result<Vec<u8>> {
    let k = q.grid;
    let n_super = q.d.len();
    let (n_mins, n_dmin) = if k.symmetric() {
        (0, 0)
    } else {
        (n_super * k.subs(), n_super)
    };
    ensure!(
        q.codes.len() == n_super * QK_K
            && q.sc.len() == n_super * k.subs()
            && q.mn.len() == n_mins
            && q.dmin.len() == n_dmin,
        "{}: inconsistent super-blocks",
        k.name()
    );
    let top = (k.code_max() - k.code_min()) as u8;
    let (smin, smax) = (k.scale_min() as i8, k.scale_max() as i8);
    if q.codes.iter().any(|&c| c > top)
        || q.sc.iter().any(|&c| c < smin || c > smax)
        || q.mn.iter().any(|&c| c > smax as u8)
    {
        bail!("{}: a code does not fit the type", k.name());
    }
    let ty = ggml_type(k);
    let mut out = Vec::with_capacity(n_super * ty.type_size);
    for b in 0..n_super {
        let codes = &q.codes[b * QK_K..(b + 1) * QK_K];
        let sc = &q.sc[b * k.subs()..(b + 1) * k.subs()];
        let mn = &q.mn[(b * k.subs()).min(n_mins)..((b + 1) * k.subs()).min(n_mins)];
        let d = q.d[b].to_le_bytes();
        let dmin = q.dmin.get(b).map_or([0; 2], |v| v.to_le_bytes());
        let unsigned = |v: i8| v as u8;
        match k {
            KGrid::Q2K => {
                // scales[16] (sc | mn << 4), qs[64], d, dmin.
                out.extend((0..16).map(|j| unsigned(sc[j]) | (mn[j] << 4)));
                out.extend_from_slice(&planes_2bit(codes));
                out.extend_from_slice(&d);
                out.extend_from_slice(&dmin);
            }
            KGrid::Q3K => {
                // hmask[32] (bit 2 of value 32·p + l at bit p of byte l), qs[64] (the low two
                // bits as Q2_K's), scales[12], d.
                let mut hmask = [0u8; 32];
                for (e, &c) in codes.iter().enumerate() {
                    hmask[e % 32] |= ((c >> 2) & 1) << (e / 32);
                }
                out.extend_from_slice(&hmask);
                let low: Vec<u8> = codes.iter().map(|&c| c & 3).collect();
                out.extend_from_slice(&planes_2bit(&low));
                out.extend_from_slice(&pack_scales_q3(sc));
                out.extend_from_slice(&d);
            }
            KGrid::Q4K | KGrid::Q5K => {
                // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]: per 64 values 32 bytes, the
                // first 32 in the low nibbles, the next 32 in the high ones.
                out.extend_from_slice(&d);
                out.extend_from_slice(&dmin);
                let sc: Vec<u8> = sc.iter().map(|&v| unsigned(v)).collect();
                out.extend_from_slice(&pack_scales_k4(&sc, mn));
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
            KGrid::Q6K => {
                // ql[128], qh[64], scales[16] (int8), d. Per 128 values: ql[l] holds the low
                // nibbles of values l and l + 64, ql[l + 32] of l + 32 and l + 96; qh[l] the
                // top two bits of l, l + 32, l + 64, l + 96 at bits 0, 2, 4, 6.
                let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
                for (e, &c) in codes.iter().enumerate() {
                    let (half, r) = (e / 128, e % 128);
                    let (p, l) = (r / 32, r % 32);
                    ql[64 * half + l + 32 * (p % 2)] |= (c & 0xF) << (4 * (p / 2));
                    qh[32 * half + l] |= (c >> 4) << (2 * p);
                }
                out.extend_from_slice(&ql);
                out.extend_from_slice(&qh);
                out.extend(sc.iter().map(|&v| unsigned(v)));
                out.extend_from_slice(&d);
            }
        }
    }
    Ok(out)
}

/// Q2_K's (and Q3_K's low) 2-bit planes: per 128 values four planes of 32 bytes, value
/// 32·p + l at bits 2p of byte l.
fn planes_2bit(codes: &[u8]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for (e, &c) in codes.iter().enumerate() {
        let (half, r) = (e / 128, e % 128);
        qs[32 * half + r % 32] |= c << (2 * (r / 32));
    }
    qs
}

/// Each symmetric sub-block's signed step `d·sc` in `raw` (whole blocks of `k`'s type).
pub fn sub_steps(k: KGrid, raw: &[u8]) -> Result<Vec<f32>> {
    let size = ggml_type(k).type_size;
    ensure!(
        k.symmetric() && raw.len().is_multiple_of(size),
        "not whole {} blocks",
        k.name()
    );
    let mut steps = Vec::new();
    for b in raw.chunks_exact(size) {
        for j in 0..k.subs() {
            steps.push(match k {
                KGrid::Q3K => h(b, 108) * f32::from(scale_q3(j, &b[96..108])),
                _ => h(b, 208) * f32::from(b[192 + j] as i8),
            });
        }
    }
    Ok(steps)
}

/// Each asymmetric sub-block's range `(hi, lo)` = `(d·sc·qmax − dmin·mn, −dmin·mn)` in `raw`
/// (whole blocks of `k`'s type), in order.
pub fn sub_ranges(k: KGrid, raw: &[u8]) -> Result<(Vec<f32>, Vec<f32>)> {
    let size = ggml_type(k).type_size;
    ensure!(
        !k.symmetric() && raw.len().is_multiple_of(size),
        "not whole {} blocks",
        k.name()
    );
    let (mut hi, mut lo) = (Vec::new(), Vec::new());
    let qmax = k.code_max() as f32;
    for b in raw.chunks_exact(size) {
        for j in 0..k.subs() {
            let (d, dmin, sc, m) = match k {
                KGrid::Q2K => (h(b, 80), h(b, 82), b[j] & 0xF, b[j] >> 4),
                _ => {
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
            KGrid::Q3K => {
                // As dequantize_row_q3_K: d·(sc − 32)·(low2 + 4·high − 4).
                let d = h(b, 108);
                for e in 0..QK_K {
                    let (half, r) = (e / 128, e % 128);
                    let low = (b[32 + 32 * half + r % 32] >> (2 * (r / 32))) & 3;
                    let high = (b[e % 32] >> (e / 32)) & 1;
                    let dl = d * f32::from(scale_q3(e / 16, &b[96..108]));
                    y.push(dl * f32::from((low | (high << 2)) as i8 - 4));
                }
            }
            KGrid::Q6K => {
                // As dequantize_row_q6_K: d·sc·(q − 32).
                let d = h(b, 208);
                for e in 0..QK_K {
                    let (half, r) = (e / 128, e % 128);
                    let (p, l) = (r / 32, r % 32);
                    let low = (b[64 * half + l + 32 * (p % 2)] >> (4 * (p / 2))) & 0xF;
                    let high = (b[128 + 32 * half + l] >> (2 * p)) & 3;
                    let sc = f32::from(b[192 + e / 16] as i8);
                    y.push(d * sc * f32::from((low | (high << 4)) as i8 - 32));
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
        for (k, seed) in KGrid::ALL.into_iter().zip(1..) {
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
        // Scale codes run over the whole signed range too, both ends included.
        for k in KGrid::ALL {
            let subs = k.subs();
            let span = (k.scale_max() - k.scale_min()) as usize;
            let asym = !k.symmetric();
            let q = KQuantized {
                grid: k,
                d: vec![f16::from_f32(1.0).to_bits()],
                dmin: if asym { vec![0] } else { Vec::new() },
                sc: (0..subs)
                    .map(|j| match j {
                        0 => k.scale_max() as i8,
                        1 => k.scale_min() as i8,
                        _ => (k.scale_min() as i64 + (j * 5 % (span + 1)) as i64) as i8,
                    })
                    .collect(),
                mn: if asym { vec![0; subs] } else { Vec::new() },
                codes: (0..QK_K)
                    .map(|e| ((e * 7 + e / 32) % (1 << k.bits())) as u8)
                    .collect(),
                weight: Vec::new(),
            };
            assert_eq!(q.sc.len(), subs);
            let raw = encode(&q).unwrap();
            let theirs = stock::dequantize(ggml_type(k), &raw).unwrap();
            let off = f32::from(k.code_offset());
            for (e, v) in theirs.iter().enumerate() {
                let want = f32::from(q.sc[e / k.sub_len()]) * (f32::from(q.codes[e]) - off);
                assert_eq!(*v, want, "{k:?} position {e}");
            }
            assert_eq!(bits(&decode(k, &raw).unwrap()), bits(&theirs), "{k:?}");
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
