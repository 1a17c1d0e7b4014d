//! ApiQ through ggml's asymmetric K-quant grids (Q2_K, Q4_K, Q5_K), exactly as they are stored:
//!
//! ```text
//! super-block: 256 consecutive values of one row = S sub-blocks of n (Q2_K 16 × 16, Q4_K and
//!              Q5_K 8 × 32); f16 d and dmin per super-block, c-bit codes sc_j, mn_j per
//!              sub-block (Q2_K c = 4, Q4_K/Q5_K c = 6); value = d·sc_j·q − dmin·mn_j,
//!              q ∈ 0..=2^b − 1
//! sub-block j (learnable clipping, as LWC):
//!   hi_j = σ(γ_j)·max(x)    lo_j = min(σ(β_j)·min(x), 0)    (a K min is subtracted: ≥ 0)
//!   s_j  = clamp((hi_j − lo_j)/(2^b − 1), 1e-5, 1e4)           m_j = −lo_j
//! super-block, as ggml's quantize_row_q*_K_ref: d = max_j s_j / (2^c − 1), sc_j = round(s_j/d),
//!   dmin = max_j m_j / (2^c − 1), mn_j = round(m_j/dmin) (0 where dmin = 0), d and dmin → f16
//! codes: S_j = f16(d)·sc_j, M_j = f16(dmin)·mn_j, q = clamp(round((x + M_j)/S_j), 0, 2^b − 1)
//!   (0 where S_j = 0), x̂ = S_j·q − M_j
//! ```
//!
//! Every rounding (sc, mn, the f16 super-block scales, the codes) passes its gradient straight
//! through, the clamps pass it on their inclusive range (PyTorch's), and the super-block
//! maximum passes it to its argmax: γ and β see the whole two-level quantizer. The forward in
//! f32 is the very grid the packer writes: [`requantize`] repeats it operation for operation
//! on the host, and S_j·q is exact in f32 (an f16 times a c-bit and a b-bit integer), so
//! ggml's `dequantize_row_q*_K` gives back x̂ bit for bit.
//!
//! Why a clipping pair per sub-block: the sub-block is the finest group the format has a scale
//! and a min for, so it is where LWC's (max, min) clipping maps one to one; the two-level
//! rounding then decides how much of the learned (s, m) survives, and training sees that.

use candle_core::{Result, Tensor};
use half::f16;

use super::kgrid_sym;
use super::kquantized::{host_groups, KQuantized};
use super::kspec::KGrid;
use super::quantizer::{clip_factors, GroupedWeight};
use super::ste::{clamp_inclusive, f16_ste, nonzero_or_one, round_ste};

const S_MIN: f64 = 1e-5;
const S_MAX: f64 = 1e4;

/// The fake-quantized weight `[out, in]` through grid `k`, differentiable in the per-sub-block
/// logits γ, β `[n_sub, 1]`; `gw` is grouped by `k.sub_len()` and rows hold whole super-blocks.
/// The symmetric grids (Q3_K, Q6_K) use γ alone ([`kgrid_sym`]).
pub fn fake_quant(k: KGrid, gw: &GroupedWeight, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    if k.symmetric() {
        return kgrid_sym::fake_quant(k, gw, gamma);
    }
    let n_sub = gw.n_groups();
    let subs = k.subs();
    if gw.w.dim(1)? != k.sub_len() || !n_sub.is_multiple_of(subs) {
        candle_core::bail!(
            "{}: {n_sub} groups of {} are not whole super-blocks",
            k.name(),
            gw.w.dim(1)?
        );
    }
    let hi = candle_nn::ops::sigmoid(gamma)?.mul(&gw.xmax)?;
    let lo = clamp_inclusive(
        &candle_nn::ops::sigmoid(beta)?.mul(&gw.xmin)?,
        f64::NEG_INFINITY,
        0.0,
    )?;
    let s = clamp_inclusive(&((hi - &lo)? * (1.0 / k.code_max()))?, S_MIN, S_MAX)?;
    let m = lo.neg()?;
    let n_super = n_sub / subs;
    let s2 = s.reshape((n_super, subs))?;
    let m2 = m.reshape((n_super, subs))?;
    let inv_c = 1.0 / k.scale_max();
    let d = (s2.max_keepdim(1)? * inv_c)?;
    let dmin = (m2.max_keepdim(1)? * inv_c)?;
    let sc = clamp_inclusive(&round_ste(&s2.broadcast_div(&d)?)?, 0.0, k.scale_max())?;
    let mn = clamp_inclusive(
        &round_ste(&m2.broadcast_div(&nonzero_or_one(&dmin)?)?)?,
        0.0,
        k.scale_max(),
    )?;
    let big_s = sc.broadcast_mul(&f16_ste(&d)?)?.reshape((n_sub, 1))?;
    let big_m = mn.broadcast_mul(&f16_ste(&dmin)?)?.reshape((n_sub, 1))?;
    let u =
        gw.w.broadcast_add(&big_m)?
            .broadcast_div(&nonzero_or_one(&big_s)?)?;
    let q = clamp_inclusive(&round_ste(&u)?, 0.0, k.code_max())?;
    let q = q.broadcast_mul(&big_s.detach().ne(0.0)?.to_dtype(q.dtype())?)?;
    q.broadcast_mul(&big_s)?
        .broadcast_sub(&big_m)?
        .reshape((gw.out_features, gw.in_features))
}

/// The trained grid on the host from the logits: [`fake_quant`]'s forward in f32, operation
/// for operation, with the codes kept.
pub fn requantize(
    k: KGrid,
    gw: &GroupedWeight,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<KQuantized> {
    if k.symmetric() {
        return kgrid_sym::quantize_with_clip(k, gw, &clip_factors(gamma)?);
    }
    quantize_with_clip(k, gw, &clip_factors(gamma)?, &clip_factors(beta)?)
}

/// Round-to-nearest through the grid over each sub-block's full range (no clipping).
pub fn rtn(k: KGrid, gw: &GroupedWeight) -> Result<KQuantized> {
    let ones = vec![1.0f32; gw.n_groups()];
    if k.symmetric() {
        return kgrid_sym::quantize_with_clip(k, gw, &ones);
    }
    quantize_with_clip(k, gw, &ones, &ones)
}

fn quantize_with_clip(
    k: KGrid,
    gw: &GroupedWeight,
    clip_max: &[f32],
    clip_min: &[f32],
) -> Result<KQuantized> {
    let (w, xmax, xmin) = host_groups(k, gw)?;
    let subs = k.subs();
    let (qmax, cmax) = (k.code_max() as f32, k.scale_max() as f32);
    let (inv_q, inv_c) = ((1.0 / k.code_max()) as f32, (1.0 / k.scale_max()) as f32);
    let n = w.len() * k.sub_len();
    let mut out = KQuantized {
        grid: k,
        d: Vec::with_capacity(w.len() / subs),
        dmin: Vec::with_capacity(w.len() / subs),
        sc: Vec::with_capacity(w.len()),
        mn: Vec::with_capacity(w.len()),
        codes: Vec::with_capacity(n),
        weight: Vec::with_capacity(n),
    };
    for (sb, groups) in w.chunks_exact(subs).enumerate() {
        let at = sb * subs;
        let mut s = vec![0f32; subs];
        let mut m = vec![0f32; subs];
        for j in 0..subs {
            let hi = clip_max[at + j] * xmax[at + j];
            let lo = (clip_min[at + j] * xmin[at + j]).min(0.0);
            s[j] = ((hi - lo) * inv_q).clamp(S_MIN as f32, S_MAX as f32);
            m[j] = -lo;
        }
        let d = s.iter().copied().fold(f32::MIN, f32::max) * inv_c;
        let dmin = m.iter().copied().fold(f32::MIN, f32::max) * inv_c;
        let (d16, dmin16) = (f16::from_f32(d), f16::from_f32(dmin));
        out.d.push(d16.to_bits());
        out.dmin.push(dmin16.to_bits());
        let dmin_div = if dmin == 0.0 { 1.0 } else { dmin };
        for (j, group) in groups.iter().enumerate() {
            let sc = (s[j] / d).round_ties_even().clamp(0.0, cmax) as i8;
            let mn = (m[j] / dmin_div).round_ties_even().clamp(0.0, cmax) as u8;
            out.sc.push(sc);
            out.mn.push(mn);
            // From the integer codes, as ggml's dequantization: no −0 from a rounded −0.4.
            let big_s = d16.to_f32() * f32::from(sc);
            let big_m = dmin16.to_f32() * f32::from(mn);
            for &x in group {
                let q = if big_s == 0.0 {
                    0
                } else {
                    ((x + big_m) / big_s).round_ties_even().clamp(0.0, qmax) as u8
                };
                out.codes.push(q);
                out.weight.push(big_s * f32::from(q) - big_m);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::kspec::QK_K;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// Weights of realistic shape: normal-ish, one outlier, one all-positive and one all-zero
    /// sub-block.
    pub(crate) fn weights(rows: usize, cols: usize, sub: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut w: Vec<f32> = (0..rows * cols)
            .map(|_| ((0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0) * 0.05)
            .collect();
        w[..sub].iter_mut().for_each(|v| *v = v.abs() + 0.01);
        w[sub..2 * sub].iter_mut().for_each(|v| *v = 0.0);
        w[3 * sub] = 0.9;
        w
    }

    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..5.0)).collect()
    }

    #[test]
    fn training_forward_is_the_host_grid_bit_for_bit() {
        let dev = Device::Cpu;
        for (k, seed) in KGrid::ALL.into_iter().zip(1..) {
            let (rows, cols) = (6, 512);
            let w = weights(rows, cols, k.sub_len(), seed);
            let t = Tensor::from_slice(&w, (rows, cols), &dev).unwrap();
            let gw = GroupedWeight::new(&t, k.sub_len()).unwrap();
            let n = gw.n_groups();
            let g = Tensor::from_slice(&logits(n, seed + 10), (n, 1), &dev).unwrap();
            let b = Tensor::from_slice(&logits(n, seed + 20), (n, 1), &dev).unwrap();
            let trained: Vec<f32> = fake_quant(k, &gw, &g, &b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let host = requantize(k, &gw, &g, &b).unwrap();
            assert_eq!(host.weight.len(), trained.len());
            for (i, (a, h)) in trained.iter().zip(&host.weight).enumerate() {
                // == : the composed ops may give −0 where the host gives +0.
                assert!(a == h, "{k:?} value {i}: trained {a} vs host {h}");
            }
            let top = k.code_max() - k.code_min();
            assert!(host.codes.iter().all(|&c| f64::from(c) <= top));
            assert!(host.codes.iter().any(|&c| f64::from(c) == top), "{k:?}");
            if k.symmetric() {
                assert!(host.codes.contains(&0), "{k:?}: the longer side is reached");
            }
            // The all-zero sub-block: scale code 0 (its scale is the 1e-5 floor), value 0.
            assert!(host.weight[k.sub_len()..2 * k.sub_len()]
                .iter()
                .all(|&v| v == 0.0));
        }
    }

    #[test]
    fn rtn_error_is_within_half_a_step() {
        // Without clipping every value lies in its sub-block's range, so the code error is at
        // most half the effective step S_j plus what rounding the min adds (≤ dmin/2). The
        // symmetric grids reach one step less on the side opposite the extreme.
        let dev = Device::Cpu;
        for k in KGrid::ALL {
            let w = weights(4, 256, k.sub_len(), 7);
            let t = Tensor::from_slice(&w, (4, 256), &dev).unwrap();
            let gw = GroupedWeight::new(&t, k.sub_len()).unwrap();
            let q = rtn(k, &gw).unwrap();
            for (i, (&x, &y)) in w.iter().zip(&q.weight).enumerate() {
                let (sub, sb) = (i / k.sub_len(), i / QK_K);
                let d = f16::from_bits(q.d[sb]).to_f32();
                let step = (d * f32::from(q.sc[sub])).abs();
                let slack = if k.symmetric() {
                    // Rounding (or clamping) the scale code moves each end by ≤ |d| per step.
                    step + d.abs() * -k.code_min() as f32 + 1e-6
                } else {
                    // The scale code rounding can shrink the range by up to half a unit.
                    let dmin = f16::from_bits(q.dmin[sb]).to_f32();
                    0.5 * step + 0.5 * dmin + 0.5 * d * k.code_max() as f32 + 1e-6
                };
                assert!((x - y).abs() <= slack, "{k:?} {i}: {x} vs {y}");
            }
        }
    }
}
