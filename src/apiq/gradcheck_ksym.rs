//! Gradient check of the symmetric K grids (Q3_K, Q6_K, [`crate::quant::kgrid_sym`]): candle's
//! autograd against central finite differences in f64 of the surrogate whose rounding offsets,
//! clamp decisions and super-block argmax are frozen at the point (see `gradcheck`).

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::gradcheck::{assert_close, rand_vec, round_decision_in, sig, H};
use crate::quant::{kgrid, GroupedWeight, KGrid};

/// Decisions of one super-block at the expansion point.
struct FrozenSym {
    /// The sub-block whose scale is the super-block's.
    top: usize,
    /// Per sub-block: the scale code's rounding offset, clamp decision and clamped value.
    sc: Vec<(f64, bool, f64)>,
    /// f16 rounding offset of d.
    dd: f64,
    s_zero: Vec<bool>,
    /// Per value: the code's rounding offset, clamp decision and clamped value.
    q: Vec<(f64, bool, f64)>,
}

fn scales(k: KGrid, x: &[f64], g: &[f64]) -> Vec<f64> {
    let n = k.sub_len();
    (0..k.subs())
        .map(|j| {
            let sub = &x[j * n..(j + 1) * n];
            let hi = sub.iter().copied().fold(f64::MIN, f64::max);
            let lo = sub.iter().copied().fold(f64::MAX, f64::min);
            let extreme = if hi >= -lo { hi } else { lo };
            -sig(g[j]) * extreme / -k.code_min()
        })
        .collect()
}

fn freeze(k: KGrid, x: &[f64], g: &[f64]) -> FrozenSym {
    let s = scales(k, x, g);
    let top = (0..s.len()).fold(0, |a, j| if s[j].abs() > s[a].abs() { j } else { a });
    let c = -k.scale_min();
    let sc: Vec<_> = s
        .iter()
        .map(|v| round_decision_in(v / s[top] * -c, -c, c - 1.0))
        .collect();
    let d = s[top] * (-1.0 / c);
    let d16 = f64::from(half::f16::from_f64(d));
    let mut s_zero = Vec::new();
    let mut q = Vec::new();
    for (j, sub) in x.chunks_exact(k.sub_len()).enumerate() {
        let big_s = sc[j].2 * d16;
        s_zero.push(big_s == 0.0);
        let div = if big_s == 0.0 { 1.0 } else { big_s };
        q.extend(
            sub.iter()
                .map(|v| round_decision_in(v / div, k.code_min(), k.code_max())),
        );
    }
    FrozenSym {
        top,
        sc,
        dd: d16 - d,
        s_zero,
        q,
    }
}

fn surrogate(k: KGrid, x: &[f64], g: &[f64], f: &FrozenSym) -> Vec<f64> {
    let s = scales(k, x, g);
    let c = -k.scale_min();
    let m = s[f.top];
    let d = m * (-1.0 / c) + f.dd;
    let pick = |u: f64, (delta, inside, r): (f64, bool, f64)| if inside { u + delta } else { r };
    let mut out = Vec::with_capacity(x.len());
    for (j, sub) in x.chunks_exact(k.sub_len()).enumerate() {
        let big_s = pick(s[j] / m * -c, f.sc[j]) * d;
        for (i, v) in sub.iter().enumerate() {
            let q = if f.s_zero[j] {
                0.0
            } else {
                pick(v / big_s, f.q[j * k.sub_len() + i])
            };
            out.push(q * big_s);
        }
    }
    out
}

#[test]
fn symmetric_kgrid_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    for (k, seed) in [(KGrid::Q3K, 41u64), (KGrid::Q6K, 42)] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (n_super, n) = (2, 512);
        let mut w = rand_vec(&mut rng, n, 1.0);
        // A negative outlier (that sub-block's scale is positive, the super-block's sign flips
        // relative to the others) and an all-zero sub-block (scale code 0, no gradient).
        w[3 * k.sub_len() + 5] = -4.0;
        w[256 + 16..256 + 32].iter_mut().for_each(|v| *v = 0.0);
        let cw = rand_vec(&mut rng, n, 1.0);
        let n_sub = n / k.sub_len();
        let gam: Vec<f64> = rand_vec(&mut rng, n_sub, 2.0)
            .iter()
            .map(|v| v + 2.0)
            .collect();
        let wt = Tensor::from_slice(&w, (n_super, 256), &dev).unwrap();
        let gw = GroupedWeight::new(&wt, k.sub_len()).unwrap();
        let gv = Var::from_tensor(&Tensor::from_slice(&gam, (n_sub, 1), &dev).unwrap()).unwrap();
        let beta = Tensor::zeros((n_sub, 1), candle_core::DType::F64, &dev).unwrap();
        let xh = kgrid::fake_quant(k, &gw, gv.as_tensor(), &beta).unwrap();
        let xh_v: Vec<f64> = xh.flatten_all().unwrap().to_vec1().unwrap();
        let ct = Tensor::from_slice(&cw, (n_super, 256), &dev).unwrap();
        let grads = (xh * ct).unwrap().sum_all().unwrap().backward().unwrap();
        let dg: Vec<f64> = grads
            .get(gv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(grads.get(&beta).is_none(), "β is not read");
        let subs = k.subs();
        for sb in 0..n_super {
            let r = sb * 256..(sb + 1) * 256;
            let x = &w[r.clone()];
            let g0 = gam[sb * subs..(sb + 1) * subs].to_vec();
            let f = freeze(k, x, &g0);
            for (i, (a, b)) in surrogate(k, x, &g0, &f)
                .iter()
                .zip(&xh_v[r.clone()])
                .enumerate()
            {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + a.abs()),
                    "{k:?} value {i}: {a} vs {b}"
                );
            }
            let loss = |g: &[f64]| -> f64 {
                surrogate(k, x, g, &f)
                    .iter()
                    .zip(&cw[r.clone()])
                    .map(|(a, b)| a * b)
                    .sum()
            };
            for j in 0..subs {
                let bump = |h: f64| -> Vec<f64> {
                    let mut v = g0.clone();
                    v[j] += h;
                    v
                };
                let fd = (loss(&bump(H)) - loss(&bump(-H))) / (2.0 * H);
                assert_close(&format!("{k:?} γ[{sb}.{j}]"), dg[sb * subs + j], fd);
            }
            assert!(
                f.s_zero.iter().any(|z| *z) == (sb == 1),
                "{k:?}: the zero sub-block"
            );
        }
        // The super-block's scale passes the gradient on: its logit moves every sub-block.
        assert!(dg.iter().all(|v| v.is_finite()) && dg.iter().any(|v| *v != 0.0));
    }
}
