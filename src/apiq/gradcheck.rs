//! Gradient checks: candle's autograd through the quantizer, a linear and a whole block against
//! central finite differences in f64.
//!
//! Rounding has no derivative; the straight-through estimator *defines* the gradient as that
//! of the surrogate in which the rounding offsets, the zero point and the clamp decisions are
//! frozen at the current point (PyTorch: clamp passes the gradient on the inclusive range).
//! The references below evaluate exactly that surrogate, independently of the implementation
//! (plain f64 arithmetic for the quantizer and the linear).

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::qblock::{forward_train, TrainLinear};
use crate::nn::block::{BlockNorms, Rope, LINEARS};
use crate::nn::hparams::{HParams, RopeKind};
use crate::quant::lora::LoraSpec;
use crate::quant::quantizer::fake_quant;
use crate::quant::QuantSpec;

pub(super) fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Frozen STE decisions of one group at the expansion point.
struct Frozen {
    s_in: bool,
    s0: f64,
    z: f64,
    delta: Vec<f64>,
    q_in: Vec<bool>,
    q0: Vec<f64>,
}

fn freeze(spec: &QuantSpec, x: &[f64], g: f64, b: f64) -> Frozen {
    let qmax = spec.qmax();
    let (xmax, xmin) = (
        x.iter().copied().fold(f64::MIN, f64::max),
        x.iter().copied().fold(f64::MAX, f64::min),
    );
    let (s_raw, z) = if spec.symmetric {
        let zs = f64::from((1u32 << (spec.bits - 1)) - 1);
        ((sig(g) * xmax).abs().max((sig(b) * xmin).abs()) / zs, zs)
    } else {
        let s_raw = (sig(g) * xmax - sig(b) * xmin) / qmax;
        let s = s_raw.clamp(1e-5, 1e4);
        (
            s_raw,
            (-(sig(b) * xmin) / s).clamp(-1e4, 1e4).round_ties_even(),
        )
    };
    let s_in = (1e-5..=1e4).contains(&s_raw);
    let s0 = s_raw.clamp(1e-5, 1e4);
    let delta: Vec<f64> = x
        .iter()
        .map(|v| (v / s0).round_ties_even() - v / s0)
        .collect();
    let v: Vec<f64> = x.iter().zip(&delta).map(|(v, d)| v / s0 + d + z).collect();
    Frozen {
        s_in,
        s0,
        z,
        delta,
        q_in: v.iter().map(|v| (0.0..=qmax).contains(v)).collect(),
        q0: v.iter().map(|v| v.clamp(0.0, qmax)).collect(),
    }
}

/// The surrogate dequantized group at (g, b) with decisions frozen at `f`.
fn surrogate(spec: &QuantSpec, x: &[f64], g: f64, b: f64, f: &Frozen) -> Vec<f64> {
    let (xmax, xmin) = (
        x.iter().copied().fold(f64::MIN, f64::max),
        x.iter().copied().fold(f64::MAX, f64::min),
    );
    let s_raw = if spec.symmetric {
        let zs = f64::from((1u32 << (spec.bits - 1)) - 1);
        (sig(g) * xmax).abs().max((sig(b) * xmin).abs()) / zs
    } else {
        (sig(g) * xmax - sig(b) * xmin) / spec.qmax()
    };
    let s = if f.s_in { s_raw } else { f.s0 };
    x.iter()
        .enumerate()
        .map(|(i, v)| {
            let q = if f.q_in[i] {
                v / s + f.delta[i] + f.z
            } else {
                f.q0[i]
            };
            (q - f.z) * s
        })
        .collect()
}

pub(super) fn rand_vec(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub(super) fn assert_close(what: &str, autograd: f64, fd: f64) {
    let tol = 1e-6 * (1.0 + fd.abs().max(autograd.abs()));
    assert!(
        (autograd - fd).abs() <= tol,
        "{what}: autograd {autograd} vs finite difference {fd}"
    );
}

pub(super) const H: f64 = 1e-6;

#[test]
fn quantizer_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    for (bits, symmetric) in [(2, false), (2, true), (3, false), (4, false)] {
        let spec = QuantSpec {
            bits,
            group_size: 16,
            symmetric,
            zero_range: None,
            kgrid: None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from(bits) * 7 + u64::from(symmetric));
        let n_groups = 12;
        let w = rand_vec(&mut rng, n_groups * 16, 1.0);
        let c = rand_vec(&mut rng, n_groups * 16, 1.0);
        let gam = rand_vec(&mut rng, n_groups, 2.0)
            .iter()
            .map(|v| v + 2.0)
            .collect::<Vec<_>>();
        let bet = rand_vec(&mut rng, n_groups, 2.0)
            .iter()
            .map(|v| v + 2.0)
            .collect::<Vec<_>>();

        let wt = Tensor::from_slice(&w, (n_groups, 16), &dev).unwrap();
        let gw = crate::quant::GroupedWeight::new(&wt, 16).unwrap();
        let gv = Var::from_tensor(&Tensor::from_slice(&gam, (n_groups, 1), &dev).unwrap()).unwrap();
        let bv = Var::from_tensor(&Tensor::from_slice(&bet, (n_groups, 1), &dev).unwrap()).unwrap();
        let xh = fake_quant(&spec, &gw, gv.as_tensor(), bv.as_tensor()).unwrap();
        let ct = Tensor::from_slice(&c, (n_groups, 16), &dev).unwrap();
        let grads = (xh * ct).unwrap().sum_all().unwrap().backward().unwrap();
        let dg: Vec<f64> = grads
            .get(gv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let db: Vec<f64> = grads
            .get(bv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();

        let mut on_bounds = 0;
        for k in 0..n_groups {
            let x = &w[k * 16..(k + 1) * 16];
            let cw = &c[k * 16..(k + 1) * 16];
            let f = freeze(&spec, x, gam[k], bet[k]);
            on_bounds += f
                .q_in
                .iter()
                .zip(&f.q0)
                .filter(|(i, q)| **i && (**q == 0.0 || **q == spec.qmax()))
                .count();
            let loss = |g: f64, b: f64| -> f64 {
                surrogate(&spec, x, g, b, &f)
                    .iter()
                    .zip(cw)
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let fd_g = (loss(gam[k] + H, bet[k]) - loss(gam[k] - H, bet[k])) / (2.0 * H);
            let fd_b = (loss(gam[k], bet[k] + H) - loss(gam[k], bet[k] - H)) / (2.0 * H);
            assert_close(&format!("{bits}-bit sym={symmetric} γ[{k}]"), dg[k], fd_g);
            assert_close(&format!("{bits}-bit sym={symmetric} β[{k}]"), db[k], fd_b);
        }
        // Codes exactly on the clamp bounds keep their gradient (PyTorch's inclusive clamp).
        assert!(on_bounds > 0, "test data must hit the clamp bounds");
    }
}

#[test]
fn linear_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let spec = QuantSpec {
        bits: 2,
        group_size: 8,
        symmetric: false,
        zero_range: None,
        kgrid: None,
    };
    let lspec = LoraSpec {
        rank: 3,
        alpha: 16.0,
    };
    let (out_f, in_f, n_tok) = (5usize, 16usize, 4usize);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let w = rand_vec(&mut rng, out_f * in_f, 1.0);
    let x = rand_vec(&mut rng, n_tok * in_f, 1.0);
    let c = rand_vec(&mut rng, n_tok * out_f, 1.0);
    let b0 = rand_vec(&mut rng, out_f * lspec.rank, 0.5);
    let wt = Tensor::from_slice(&w, (out_f, in_f), &dev).unwrap();
    let lin = TrainLinear::new(&wt, &spec, Some((&lspec, 5))).unwrap();
    let lora = lin.lora.as_ref().unwrap();
    lora.b
        .set(&Tensor::from_slice(&b0, (out_f, lspec.rank), &dev).unwrap())
        .unwrap();
    let (_, lwc) = lin.quant.as_ref().unwrap();
    lwc.gamma
        .set(
            &Tensor::from_slice(
                &rand_vec(&mut rng, 10, 1.0)
                    .iter()
                    .map(|v| v + 3.0)
                    .collect::<Vec<_>>(),
                (10, 1),
                &dev,
            )
            .unwrap(),
        )
        .unwrap();
    let xt = Tensor::from_slice(&x, (1, n_tok, in_f), &dev).unwrap();
    let ct = Tensor::from_slice(&c, (1, n_tok, out_f), &dev).unwrap();
    let grads = (lin
        .forward(&spec, crate::nn::compute::Compute::REFERENCE, &xt)
        .unwrap()
        * &ct)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();

    let get = |v: &Var| -> Vec<f64> { v.as_tensor().flatten_all().unwrap().to_vec1().unwrap() };
    let (g0, be0, a0, bb0) = (get(&lwc.gamma), get(&lwc.beta), get(&lora.a), get(&lora.b));
    let frozen: Vec<Frozen> = (0..10)
        .map(|k| freeze(&spec, &w[k * 8..(k + 1) * 8], g0[k], be0[k]))
        .collect();
    // Plain f64 reference: y = x·Ŵᵀ + s·(x·Aᵀ)·Bᵀ, loss = Σ c·y.
    let loss = |g: &[f64], be: &[f64], a: &[f64], b: &[f64]| -> f64 {
        let wh: Vec<f64> = (0..10)
            .flat_map(|k| surrogate(&spec, &w[k * 8..(k + 1) * 8], g[k], be[k], &frozen[k]))
            .collect();
        let mut total = 0.0;
        for t in 0..n_tok {
            let xr = &x[t * in_f..(t + 1) * in_f];
            let h: Vec<f64> = (0..lspec.rank)
                .map(|r| (0..in_f).map(|i| a[r * in_f + i] * xr[i]).sum())
                .collect();
            for o in 0..out_f {
                let base: f64 = (0..in_f).map(|i| wh[o * in_f + i] * xr[i]).sum();
                let lo: f64 = (0..lspec.rank).map(|r| b[o * lspec.rank + r] * h[r]).sum();
                total += c[t * out_f + o] * (base + lspec.scaling() * lo);
            }
        }
        total
    };
    let fd = |which: usize, idx: usize| -> f64 {
        let mut p = [g0.clone(), be0.clone(), a0.clone(), bb0.clone()];
        let mut m = p.clone();
        p[which][idx] += H;
        m[which][idx] -= H;
        (loss(&p[0], &p[1], &p[2], &p[3]) - loss(&m[0], &m[1], &m[2], &m[3])) / (2.0 * H)
    };
    let auto = |v: &Var| -> Vec<f64> {
        grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    for (which, (name, v)) in [
        ("γ", &lwc.gamma),
        ("β", &lwc.beta),
        ("A", &lora.a),
        ("B", &lora.b),
    ]
    .into_iter()
    .enumerate()
    {
        let ag = auto(v);
        for (idx, g) in ag.iter().enumerate() {
            assert_close(&format!("{name}[{idx}]"), *g, fd(which, idx));
        }
    }
}

#[test]
fn block_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let spec = QuantSpec {
        bits: 2,
        group_size: 8,
        symmetric: false,
        zero_range: None,
        kgrid: None,
    };
    let lspec = LoraSpec {
        rank: 2,
        alpha: 16.0,
    };
    let hp = HParams::tiny(RopeKind::Norm, false);
    let l = 5;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let shapes = crate::nn::block::fixtures::TINY_SHAPES;
    let mk = |rng: &mut ChaCha8Rng, shape: (usize, usize), scale: f64| {
        Tensor::from_slice(&rand_vec(rng, shape.0 * shape.1, scale), shape, &dev).unwrap()
    };
    let linears: Vec<TrainLinear> = shapes
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let w = mk(&mut rng, s, 0.5);
            let lin = TrainLinear::new(&w, &spec, Some((&lspec, i as u64))).unwrap();
            lin.lora
                .as_ref()
                .unwrap()
                .b
                .set(&mk(&mut rng, (s.0, lspec.rank), 0.3))
                .unwrap();
            lin
        })
        .collect();
    let norms = BlockNorms {
        attn_norm: Tensor::from_slice(
            &rand_vec(&mut rng, 16, 0.5)
                .iter()
                .map(|v| v + 1.0)
                .collect::<Vec<_>>(),
            16,
            &dev,
        )
        .unwrap(),
        ffn_norm: Tensor::from_slice(
            &rand_vec(&mut rng, 16, 0.5)
                .iter()
                .map(|v| v + 1.0)
                .collect::<Vec<_>>(),
            16,
            &dev,
        )
        .unwrap(),
        bias: [None, None, None],
    };
    let rope = Rope::new(&hp, l, DType::F64, &dev).unwrap();
    let x = mk(&mut rng, (l, 16), 1.0).reshape((1, l, 16)).unwrap();
    let target = mk(&mut rng, (l, 16), 1.0).reshape((1, l, 16)).unwrap();
    let loss_of = |y: &Tensor| (y - &target).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss_of(&forward_train(&hp, &rope, &norms, &spec, &linears, &x).unwrap())
        .backward()
        .unwrap();

    // Frozen surrogate weights for each linear at the expansion point, built from candle ops
    // so the FD loss runs the same block forward with the quantizer replaced by the surrogate.
    let frozen: Vec<Vec<Frozen>> = linears
        .iter()
        .map(|lin| {
            let (gw, lwc) = lin.quant.as_ref().unwrap();
            let w: Vec<Vec<f64>> = gw.w.to_vec2().unwrap();
            let g: Vec<f64> = lwc
                .gamma
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let b: Vec<f64> = lwc
                .beta
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            w.iter()
                .enumerate()
                .map(|(k, x)| freeze(&spec, x, g[k], b[k]))
                .collect()
        })
        .collect();
    let fd_loss = |lin_i: usize, which: usize, idx: usize, h: f64| -> f64 {
        let mut ws = Vec::new();
        for (i, lin) in linears.iter().enumerate() {
            let (gw, lwc) = lin.quant.as_ref().unwrap();
            let w: Vec<Vec<f64>> = gw.w.to_vec2().unwrap();
            let mut g: Vec<f64> = lwc
                .gamma
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut b: Vec<f64> = lwc
                .beta
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let lo = lin.lora.as_ref().unwrap();
            let mut a: Vec<f64> = lo.a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let mut bb: Vec<f64> = lo.b.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            if i == lin_i {
                [&mut g, &mut b, &mut a, &mut bb][which][idx] += h;
            }
            let wh: Vec<f64> = w
                .iter()
                .enumerate()
                .flat_map(|(k, x)| surrogate(&spec, x, g[k], b[k], &frozen[i][k]))
                .collect();
            let (o, inp) = (gw.out_features, gw.in_features);
            ws.push((
                Tensor::from_vec(wh, (o, inp), &dev).unwrap(),
                Tensor::from_vec(a, (lspec.rank, inp), &dev).unwrap(),
                Tensor::from_vec(bb, (o, lspec.rank), &dev).unwrap(),
            ));
        }
        let lin = |i: usize, h: &Tensor| -> candle_core::Result<Tensor> {
            let (w, a, b) = &ws[i];
            let y = crate::nn::block::matmul_t(h, w)?;
            y + (crate::nn::block::matmul_t(&crate::nn::block::matmul_t(h, a)?, b)?
                * lspec.scaling())?
        };
        let y = crate::nn::block::forward(&hp, &rope, &norms, &lin, &x).unwrap();
        loss_of(&y).to_scalar::<f64>().unwrap()
    };
    let mut checked = 0;
    for (i, lin) in linears.iter().enumerate() {
        let (_, lwc) = lin.quant.as_ref().unwrap();
        let lo = lin.lora.as_ref().unwrap();
        for (which, v) in [&lwc.gamma, &lwc.beta, &lo.a, &lo.b]
            .into_iter()
            .enumerate()
        {
            let ag: Vec<f64> = grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for idx in [0, ag.len() / 2, ag.len() - 1] {
                let fd = (fd_loss(i, which, idx, H) - fd_loss(i, which, idx, -H)) / (2.0 * H);
                assert_close(&format!("{} param {which}[{idx}]", LINEARS[i]), ag[idx], fd);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * 4 * 3);
}

/// Frozen STE decisions of one K super-block ([`crate::quant::kgrid`]) at the expansion point.
struct FrozenK {
    lo_in: Vec<bool>,
    s_in: Vec<bool>,
    s0: Vec<f64>,
    /// Argmax of the sub-block scales and mins (the maximum's gradient goes there).
    jd: usize,
    jm: usize,
    dmin_zero: bool,
    /// Rounding offsets and clamp decisions of sc and mn, per sub-block.
    sc: Vec<(f64, bool, f64)>,
    mn: Vec<(f64, bool, f64)>,
    /// f16 rounding offsets of d and dmin.
    dd: f64,
    ddmin: f64,
    s_zero: Vec<bool>,
    /// Per value: rounding offset, clamp decision, clamped code.
    q: Vec<(f64, bool, f64)>,
}

struct KCase {
    sub: usize,
    qmax: f64,
    cmax: f64,
}

fn k_sub_minmax(x: &[f64]) -> (f64, f64) {
    (
        x.iter().copied().fold(f64::MIN, f64::max),
        x.iter().copied().fold(f64::MAX, f64::min),
    )
}

/// Sub-block scales and mins before the super-block level, with the frozen clamps if given.
fn k_scales(
    c: &KCase,
    x: &[f64],
    g: &[f64],
    b: &[f64],
    f: Option<&FrozenK>,
) -> (Vec<f64>, Vec<f64>) {
    let subs = x.len() / c.sub;
    let mut s = vec![0.0; subs];
    let mut m = vec![0.0; subs];
    for j in 0..subs {
        let (xmax, xmin) = k_sub_minmax(&x[j * c.sub..(j + 1) * c.sub]);
        let hi = sig(g[j]) * xmax;
        let lo_raw = sig(b[j]) * xmin;
        let lo = match f {
            Some(f) if !f.lo_in[j] => 0.0,
            Some(_) => lo_raw,
            None => lo_raw.min(0.0),
        };
        let s_raw = (hi - lo) * (1.0 / c.qmax);
        s[j] = match f {
            Some(f) if !f.s_in[j] => f.s0[j],
            Some(_) => s_raw,
            None => s_raw.clamp(1e-5, 1e4),
        };
        m[j] = -lo;
    }
    (s, m)
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |a, i| if v[i] > v[a] { i } else { a })
}

pub(super) fn round_decision_in(u: f64, lo: f64, hi: f64) -> (f64, bool, f64) {
    let r = u.round_ties_even();
    (r - u, (lo..=hi).contains(&r), r.clamp(lo, hi))
}

fn round_decision(u: f64, hi: f64) -> (f64, bool, f64) {
    round_decision_in(u, 0.0, hi)
}

fn freeze_k(c: &KCase, x: &[f64], g: &[f64], b: &[f64]) -> FrozenK {
    let subs = x.len() / c.sub;
    let mut lo_in = vec![true; subs];
    let mut s_in = vec![true; subs];
    let mut s0 = vec![0.0; subs];
    for j in 0..subs {
        let (xmax, xmin) = k_sub_minmax(&x[j * c.sub..(j + 1) * c.sub]);
        let lo = sig(b[j]) * xmin;
        lo_in[j] = lo <= 0.0;
        let s_raw = (sig(g[j]) * xmax - lo.min(0.0)) * (1.0 / c.qmax);
        s_in[j] = (1e-5..=1e4).contains(&s_raw);
        s0[j] = s_raw.clamp(1e-5, 1e4);
    }
    let (s, m) = k_scales(c, x, g, b, None);
    let (jd, jm) = (argmax(&s), argmax(&m));
    let d = s[jd] * (1.0 / c.cmax);
    let dmin = m[jm] * (1.0 / c.cmax);
    let dmin_zero = dmin == 0.0;
    let div = if dmin_zero { 1.0 } else { dmin };
    let sc: Vec<_> = s.iter().map(|v| round_decision(v / d, c.cmax)).collect();
    let mn: Vec<_> = m.iter().map(|v| round_decision(v / div, c.cmax)).collect();
    let d16 = f64::from(half::f16::from_f64(d));
    let dmin16 = f64::from(half::f16::from_f64(dmin));
    let mut s_zero = vec![false; subs];
    let mut q = Vec::with_capacity(x.len());
    for j in 0..subs {
        let big_s = sc[j].2 * d16;
        let big_m = mn[j].2 * dmin16;
        s_zero[j] = big_s == 0.0;
        let div = if s_zero[j] { 1.0 } else { big_s };
        for v in &x[j * c.sub..(j + 1) * c.sub] {
            q.push(round_decision((v + big_m) / div, c.qmax));
        }
    }
    FrozenK {
        lo_in,
        s_in,
        s0,
        jd,
        jm,
        dmin_zero,
        sc,
        mn,
        dd: d16 - d,
        ddmin: dmin16 - dmin,
        s_zero,
        q,
    }
}

fn surrogate_k(c: &KCase, x: &[f64], g: &[f64], b: &[f64], f: &FrozenK) -> Vec<f64> {
    let (s, m) = k_scales(c, x, g, b, Some(f));
    let d = s[f.jd] * (1.0 / c.cmax);
    let dmin = m[f.jm] * (1.0 / c.cmax);
    let div = if f.dmin_zero { dmin + 1.0 } else { dmin };
    let pick = |u: f64, (delta, inside, r): (f64, bool, f64)| if inside { u + delta } else { r };
    let mut out = Vec::with_capacity(x.len());
    for j in 0..s.len() {
        let big_s = pick(s[j] / d, f.sc[j]) * (d + f.dd);
        let big_m = pick(m[j] / div, f.mn[j]) * (dmin + f.ddmin);
        let sdiv = if f.s_zero[j] { big_s + 1.0 } else { big_s };
        for (i, v) in x.iter().enumerate().skip(j * c.sub).take(c.sub) {
            let q = pick((v + big_m) / sdiv, f.q[i]);
            let q = if f.s_zero[j] { 0.0 } else { q };
            out.push(q * big_s - big_m);
        }
    }
    out
}

#[test]
fn kgrid_gradients_match_finite_differences() {
    use crate::quant::kgrid;
    use crate::quant::KGrid;
    let dev = Device::Cpu;
    for (k, seed) in [(KGrid::Q2K, 31u64), (KGrid::Q4K, 32), (KGrid::Q5K, 33)] {
        let c = KCase {
            sub: k.sub_len(),
            qmax: k.code_max(),
            cmax: k.scale_max(),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_super = 2;
        let n = n_super * 256;
        let mut w = rand_vec(&mut rng, n, 1.0);
        // One all-positive sub-block (its min clamps to 0) and one outlier.
        w[..c.sub].iter_mut().for_each(|v| *v = v.abs() + 0.05);
        w[2 * c.sub + 3] = 4.0;
        let cw = rand_vec(&mut rng, n, 1.0);
        let n_sub = n / c.sub;
        let gam: Vec<f64> = rand_vec(&mut rng, n_sub, 2.0)
            .iter()
            .map(|v| v + 2.0)
            .collect();
        let bet: Vec<f64> = rand_vec(&mut rng, n_sub, 2.0)
            .iter()
            .map(|v| v + 2.0)
            .collect();

        let wt = Tensor::from_slice(&w, (n_super, 256), &dev).unwrap();
        let gw = crate::quant::GroupedWeight::new(&wt, c.sub).unwrap();
        let gv = Var::from_tensor(&Tensor::from_slice(&gam, (n_sub, 1), &dev).unwrap()).unwrap();
        let bv = Var::from_tensor(&Tensor::from_slice(&bet, (n_sub, 1), &dev).unwrap()).unwrap();
        let xh = kgrid::fake_quant(k, &gw, gv.as_tensor(), bv.as_tensor()).unwrap();
        let xh_v: Vec<f64> = xh.flatten_all().unwrap().to_vec1().unwrap();
        let ct = Tensor::from_slice(&cw, (n_super, 256), &dev).unwrap();
        let grads = (xh * ct).unwrap().sum_all().unwrap().backward().unwrap();
        let get = |v: &Var| -> Vec<f64> {
            grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (dg, db) = (get(&gv), get(&bv));

        let subs = k.subs();
        let mut clipped_min = 0;
        for sb in 0..n_super {
            let r = sb * 256..(sb + 1) * 256;
            let lr = sb * subs..(sb + 1) * subs;
            let x = &w[r.clone()];
            let (g0, b0) = (gam[lr.clone()].to_vec(), bet[lr.clone()].to_vec());
            let f = freeze_k(&c, x, &g0, &b0);
            clipped_min += f.lo_in.iter().filter(|i| !**i).count();
            // The surrogate at the point is the forward itself.
            let at = surrogate_k(&c, x, &g0, &b0, &f);
            for (i, (a, b)) in at.iter().zip(&xh_v[r.clone()]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + a.abs()),
                    "{k:?} value {i}: {a} vs {b}"
                );
            }
            let loss = |g: &[f64], b: &[f64]| -> f64 {
                surrogate_k(&c, x, g, b, &f)
                    .iter()
                    .zip(&cw[r.clone()])
                    .map(|(a, b)| a * b)
                    .sum()
            };
            for j in 0..subs {
                let bump = |v: &[f64], h: f64| -> Vec<f64> {
                    let mut v = v.to_vec();
                    v[j] += h;
                    v
                };
                let fd_g = (loss(&bump(&g0, H), &b0) - loss(&bump(&g0, -H), &b0)) / (2.0 * H);
                let fd_b = (loss(&g0, &bump(&b0, H)) - loss(&g0, &bump(&b0, -H))) / (2.0 * H);
                assert_close(&format!("{k:?} γ[{sb}.{j}]"), dg[lr.start + j], fd_g);
                assert_close(&format!("{k:?} β[{sb}.{j}]"), db[lr.start + j], fd_b);
            }
        }
        assert!(clipped_min > 0, "test data must clamp a min to 0");
        // The super-block maximum passes the gradient on: the argmax's logit moves every scale.
        assert!(dg.iter().all(|v| v.is_finite()) && dg.iter().any(|v| *v != 0.0));
    }
}
