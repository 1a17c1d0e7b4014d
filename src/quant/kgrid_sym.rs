//! ApiQ through ggml's symmetric K-quant grids (Q3_K, Q6_K), exactly as they are stored:
//!
//! ```text
//! super-block: 256 consecutive values of one row = 16 sub-blocks of 16; an f16 d per
//!              super-block, a signed scale code sc_j per sub-block (Q3_K −32..=31, Q6_K
//!              −128..=127); value = d·sc_j·q, q ∈ −2^(b−1)..=2^(b−1)−1 (Q3_K −4..=3,
//!              Q6_K −32..=31)
//! sub-block j (one learnable clipping factor):
//!   e_j = the value of largest magnitude (max(x) where max(x) ≥ −min(x), else min(x))
//!   s_j = −σ(γ_j)·e_j / 2^(b−1)           (the extreme lands on the code −2^(b−1))
//! super-block, as ggml's quantize_row_q3_K_ref / q6_K_ref: m = s_j* of the largest |s_j|
//!   (the first), sc_j = clamp(round(s_j/m·(−c)), −c, c − 1), d = f16(m·(−1/c)); c = 32, 128
//! codes: S_j = d·sc_j, q = clamp(round(x/S_j), −2^(b−1), 2^(b−1) − 1) (0 where S_j = 0),
//!   x̂ = S_j·q
//! ```
//!
//! Why one factor per sub-block and that sign: the signed grid has one scale per sub-block
//! and one more code below zero than above it. ggml (`make_q3_quants`, `make_qx_quants`) puts
//! the extreme value on that longer side by the sign of the scale; the other side then reaches
//! 2^(b−1) − 1 steps, so its range is tied to the extreme's and a second factor (LWC's β) would
//! have nothing of its own to set. γ clips the extreme inwards, as OmniQuant's symmetric LWC
//! clips max |x|; β is not read, gets no gradient and is not stored.
//!
//! Roundings pass their gradient straight through, the clamps on their inclusive range, and
//! the super-block's scale m passes it to its sub-block. The host quantizer
//! [`quantize_with_clip`] repeats the forward operation for operation in f32; d·sc·q is exact
//! in f32 (an f16 times an 8-bit and a 6-bit integer), so ggml's `dequantize_row_q3_K` /
//! `q6_K` give back x̂ bit for bit.

use candle_core::{Result, Tensor};
use half::f16;

use super::kquantized::{host_groups, KQuantized};
use super::kspec::KGrid;
use super::quantizer::GroupedWeight;
use super::ste::{clamp_inclusive, f16_ste, nonzero_or_one, round_ste};

/// The fake-quantized weight `[out, in]` through symmetric grid `k`, differentiable in the
/// per-sub-block logits γ `[n_sub, 1]`.
pub fn fake_quant(k: KGrid, gw: &GroupedWeight, gamma: &Tensor) -> Result<Tensor> {
    let n_sub = gw.n_groups();
    let subs = k.subs();
    if gw.w.dim(1)? != k.sub_len() || !n_sub.is_multiple_of(subs) {
        candle_core::bail!("{}: {n_sub} groups are not whole super-blocks", k.name());
    }
    let neg = -k.code_min();
    let c = -k.scale_min();
    let extreme = gw
        .xmax
        .ge(&gw.xmin.neg()?)?
        .where_cond(&gw.xmax, &gw.xmin)?;
    let s = (candle_nn::ops::sigmoid(gamma)?.mul(&extreme)? * (-1.0 / neg))?;
    let n_super = n_sub / subs;
    let s2 = s.reshape((n_super, subs))?;
    let at = s2.abs()?.argmax_keepdim(1)?;
    let m = s2.gather(&at, 1)?;
    let sc = clamp_inclusive(
        &round_ste(&(s2.broadcast_div(&nonzero_or_one(&m)?)? * (-c))?)?,
        -c,
        c - 1.0,
    )?;
    let d = f16_ste(&(m * (-1.0 / c))?)?;
    let big_s = sc.broadcast_mul(&d)?.reshape((n_sub, 1))?;
    let u = gw.w.broadcast_div(&nonzero_or_one(&big_s)?)?;
    let q = clamp_inclusive(&round_ste(&u)?, k.code_min(), k.code_max())?;
    // Code 0 where S_j = 0, as on the host: no gradient through a sub-block that holds zeros.
    let q = q.broadcast_mul(&big_s.detach().ne(0.0)?.to_dtype(q.dtype())?)?;
    q.broadcast_mul(&big_s)?
        .reshape((gw.out_features, gw.in_features))
}

/// [`fake_quant`]'s forward on the host in f32 with the clipping factors σ(γ) given, codes kept.
pub fn quantize_with_clip(k: KGrid, gw: &GroupedWeight, clip: &[f32]) -> Result<KQuantized> {
    let (w, xmax, xmin) = host_groups(k, gw)?;
    let subs = k.subs();
    let (qmin, qmax) = (k.code_min() as f32, k.code_max() as f32);
    let neg = -qmin;
    let c = -k.scale_min() as f32;
    let n = w.len() * k.sub_len();
    let mut out = KQuantized {
        grid: k,
        d: Vec::with_capacity(w.len() / subs),
        dmin: Vec::new(),
        sc: Vec::with_capacity(w.len()),
        mn: Vec::new(),
        codes: Vec::with_capacity(n),
        weight: Vec::with_capacity(n),
    };
    for (sb, groups) in w.chunks_exact(subs).enumerate() {
        let at = sb * subs;
        let s: Vec<f32> = (0..subs)
            .map(|j| {
                let (hi, lo) = (xmax[at + j], xmin[at + j]);
                let extreme = if hi >= -lo { hi } else { lo };
                clip[at + j] * extreme * (-1.0 / neg)
            })
            .collect();
        // The first of the largest magnitudes, as candle's argmax picks it.
        let top = (0..subs).fold(0, |a, j| if s[j].abs() > s[a].abs() { j } else { a });
        let m = s[top];
        let m_div = if m == 0.0 { 1.0 } else { m };
        let d16 = f16::from_f32(m * (-1.0 / c));
        out.d.push(d16.to_bits());
        for (j, group) in groups.iter().enumerate() {
            let sc = ((s[j] / m_div) * -c).round_ties_even().clamp(-c, c - 1.0) as i8;
            out.sc.push(sc);
            let big_s = f32::from(sc) * d16.to_f32();
            for &x in group {
                // An integer code, as ggml's dequantization: no −0 from a rounded −0.4.
                let q = if big_s == 0.0 {
                    0
                } else {
                    (x / big_s).round_ties_even().clamp(qmin, qmax) as i8
                };
                out.codes.push((i16::from(q) - qmin as i16) as u8);
                out.weight.push(big_s * f32::from(q));
            }
        }
    }
    Ok(out)
}
