//! The uniform affine group quantizer with learnable weight clipping (LWC), exactly as ApiQ's
//! released code (= OmniQuant's `UniformAffineQuantizer` with `lwc=True`; apiq.md §1):
//!
//! ```text
//! groups: G consecutive input-dimension values of one output row (group k = o·(in/G) + g)
//! xmax' = σ(γ)·max(x)    xmin' = σ(β)·min(x)           γ = β = 4 at the start
//! s = clamp((xmax' − xmin') / (2^b − 1), 1e-5, 1e4)   z = round(clamp(−xmin'/s, ±1e4))  (no gradient)
//! q = clamp(round_ste(x/s) + z, 0, 2^b − 1)           x̂ = (q − z)·s
//! ```
//! Symmetric: s from max(|xmax'|, |xmin'|) / (2^(b−1) − 1) and the constant z = 2^(b−1) − 1.
//!
//! After training the weights are requantized once with the scale rounded to f16 (`d`) and
//! `m = f16(−d·z)`, so every weight is `d·q + m`: the parametrisation the packed formats store.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::kspec::KGrid;
use super::ste::{clamp_inclusive, round_ste, round_ties_even};

/// ApiQ's LWC logits start at 4.0 (σ(4) = 0.982).
pub const LWC_INIT: f64 = 4.0;
const S_MIN: f64 = 1e-5;
const S_MAX: f64 = 1e4;
const Z_LIM: f64 = 1e4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QuantSpec {
    pub bits: u32,
    pub group_size: usize,
    pub symmetric: bool,
    /// Asymmetric zero points clamped to this inclusive range (Q2_0's grid needs z ∈ {1, 2}).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_range: Option<(u32, u32)>,
    /// Linears whose rows hold whole 256-value super-blocks train through this K-quant grid
    /// (per sub-block clipping, [`super::kgrid`]); the others through the groups above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kgrid: Option<KGrid>,
}

impl QuantSpec {
    pub fn qmax(&self) -> f64 {
        f64::from((1u32 << self.bits) - 1)
    }

    /// Symmetric zero point `2^(b−1) − 1` (also the divisor of absmax).
    pub(crate) fn sym_zero(&self) -> f64 {
        f64::from((1u32 << (self.bits - 1)) - 1)
    }

    /// The K grid a linear of `in_features` inputs trains through, if any.
    pub fn kgrid_for(&self, in_features: usize) -> Option<KGrid> {
        self.kgrid.filter(|_| KGrid::fits(in_features))
    }
}

/// One linear's frozen weight as groups, with the per-group extremes.
#[derive(Debug, Clone)]
pub struct GroupedWeight {
    /// `[n_groups, G]`.
    pub w: Tensor,
    /// `[n_groups, 1]` each.
    pub xmax: Tensor,
    pub xmin: Tensor,
    pub out_features: usize,
    pub in_features: usize,
}

impl GroupedWeight {
    /// `w` is `[out, in]`; `in` must be a multiple of the group size.
    pub fn new(w: &Tensor, group_size: usize) -> Result<GroupedWeight> {
        let (out_features, in_features) = w.dims2()?;
        if !in_features.is_multiple_of(group_size) {
            candle_core::bail!(
                "in_features {in_features} is not a multiple of the group size {group_size}"
            );
        }
        let g = w.reshape((out_features * in_features / group_size, group_size))?;
        Ok(GroupedWeight {
            xmax: g.max_keepdim(1)?,
            xmin: g.min_keepdim(1)?,
            w: g,
            out_features,
            in_features,
        })
    }

    pub fn n_groups(&self) -> usize {
        self.w.dim(0).expect("2-D")
    }
}

/// The learnable clipping logits of one linear.
pub struct Lwc {
    pub gamma: Var,
    pub beta: Var,
}

impl Lwc {
    /// Logits given per group (`[n_groups]` each).
    pub fn from_logits(gamma: &[f32], beta: &[f32], dtype: DType, device: &Device) -> Result<Lwc> {
        let var = |v: &[f32]| -> Result<Var> {
            Var::from_tensor(&Tensor::from_slice(v, (v.len(), 1), device)?.to_dtype(dtype)?)
        };
        Ok(Lwc {
            gamma: var(gamma)?,
            beta: var(beta)?,
        })
    }

    pub fn new(n_groups: usize, dtype: DType, device: &Device) -> Result<Lwc> {
        let init = Tensor::full(LWC_INIT, (n_groups, 1), device)?.to_dtype(dtype)?;
        Ok(Lwc {
            gamma: Var::from_tensor(&init)?,
            beta: Var::from_tensor(&init)?,
        })
    }
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::sigmoid(x)
}

/// Scale and (detached) zero point per group, differentiable in γ, β.
pub fn scale_zero(
    spec: &QuantSpec,
    gw: &GroupedWeight,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let xmax = sigmoid(gamma)?.mul(&gw.xmax)?;
    let xmin = sigmoid(beta)?.mul(&gw.xmin)?;
    if spec.symmetric {
        let absmax = xmax.abs()?.maximum(&xmin.abs()?)?;
        let s = clamp_inclusive(&(absmax / spec.sym_zero())?, S_MIN, S_MAX)?;
        let z = s.zeros_like()?.affine(0.0, spec.sym_zero())?;
        Ok((s, z))
    } else {
        let s = clamp_inclusive(&((xmax - &xmin)? / spec.qmax())?, S_MIN, S_MAX)?;
        let z = round_ties_even(&xmin.neg()?.div(&s)?.clamp(-Z_LIM, Z_LIM)?)?;
        let z = match spec.zero_range {
            Some((lo, hi)) => z.clamp(f64::from(lo), f64::from(hi))?,
            None => z,
        };
        Ok((s, z))
    }
}

/// The fake-quantized weight `[out, in]`, differentiable in γ and β (straight-through rounding).
pub fn fake_quant(
    spec: &QuantSpec,
    gw: &GroupedWeight,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<Tensor> {
    let (s, z) = scale_zero(spec, gw, gamma, beta)?;
    let u = gw.w.broadcast_div(&s)?;
    let q = clamp_inclusive(&round_ste(&u)?.broadcast_add(&z)?, 0.0, spec.qmax())?;
    q.broadcast_sub(&z)?
        .broadcast_mul(&s)?
        .reshape((gw.out_features, gw.in_features))
}

/// The final requantization: per group f16 `d` and `m`, codes `q`, and weights `d·q + m` (f32).
#[derive(Debug, Clone)]
pub struct Quantized {
    /// f16 bits of the scale per group.
    pub d: Vec<u16>,
    /// f16 bits of `m = −d·z` per group.
    pub m: Vec<u16>,
    /// Zero point per group (an integer in 0..=qmax after the clamp of codes).
    pub z: Vec<f32>,
    /// One code per weight, row-major `[out, in]`.
    pub codes: Vec<u8>,
    /// `d·q + m` in f32, row-major `[out, in]`.
    pub weight: Vec<f32>,
}

fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// σ of the logits, in f32 on the host, as the forward computes them (candle's sigmoid).
pub(crate) fn clip_factors(logits: &Tensor) -> Result<Vec<f32>> {
    sigmoid(&logits.to_dtype(DType::F32)?)?
        .flatten_all()?
        .to_vec1()
}

/// Requantizes with the scale rounded to f16, from the trained logits. All arithmetic in f32
/// on the host: this is the format's reference, so it must not depend on the device.
pub fn requantize(
    spec: &QuantSpec,
    gw: &GroupedWeight,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<Quantized> {
    quantize_with_clip(spec, gw, &clip_factors(gamma)?, &clip_factors(beta)?)
}

/// Plain round-to-nearest over each group's full range (the RTN baseline: no clipping).
pub fn rtn(spec: &QuantSpec, gw: &GroupedWeight) -> Result<Quantized> {
    let ones = vec![1.0f32; gw.n_groups()];
    quantize_with_clip(spec, gw, &ones, &ones)
}

/// Quantizes each group with its max and min scaled by the given clipping factors, on every
/// core: at 7B a block holds 3 M groups, and one thread took 3 s per block (measured on the
/// GPU machine), longer than the block's training steps.
fn quantize_with_clip(
    spec: &QuantSpec,
    gw: &GroupedWeight,
    clip_max: &[f32],
    clip_min: &[f32],
) -> Result<Quantized> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    quantize_with_clip_on(spec, gw, clip_max, clip_min, threads)
}

/// [`quantize_with_clip`] on `threads` threads, each over a run of whole groups: every group's
/// arithmetic is the same whatever the split, so the result is too.
fn quantize_with_clip_on(
    spec: &QuantSpec,
    gw: &GroupedWeight,
    clip_max: &[f32],
    clip_min: &[f32],
    threads: usize,
) -> Result<Quantized> {
    let w: Vec<f32> = gw.w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let xmax: Vec<f32> = gw.xmax.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let xmin: Vec<f32> = gw.xmin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let g = spec.group_size;
    let groups = xmax.len();
    let mut out = Quantized {
        d: vec![0; groups],
        m: vec![0; groups],
        z: vec![0.0; groups],
        codes: vec![0; w.len()],
        weight: vec![0.0; w.len()],
    };
    // Small linears stay on one thread: a thread costs more than a few thousand groups.
    let per = groups.div_ceil(threads.max(1)).max(1 << 12);
    std::thread::scope(|scope| {
        let runs = out
            .d
            .chunks_mut(per)
            .zip(out.m.chunks_mut(per))
            .zip(out.z.chunks_mut(per))
            .zip(out.codes.chunks_mut(per * g))
            .zip(out.weight.chunks_mut(per * g))
            .enumerate();
        for (t, ((((d, m), z), codes), weight)) in runs {
            let first = t * per;
            let (w, xmax, xmin) = (&w[first * g..], &xmax[first..], &xmin[first..]);
            let (clip_max, clip_min) = (&clip_max[first..], &clip_min[first..]);
            scope.spawn(move || {
                let qmax = spec.qmax() as f32;
                for k in 0..d.len() {
                    let hi = clip_max[k] * xmax[k];
                    let lo = clip_min[k] * xmin[k];
                    let (s, zk) = scale_and_zero(spec, hi, lo);
                    let mk = f16_round(-s * zk);
                    d[k] = half::f16::from_f32(s).to_bits();
                    m[k] = half::f16::from_f32(mk).to_bits();
                    z[k] = zk;
                    let span = k * g..(k + 1) * g;
                    for ((&x, c), v) in w[span.clone()]
                        .iter()
                        .zip(&mut codes[span.clone()])
                        .zip(&mut weight[span])
                    {
                        let q = ((x / s).round_ties_even() + zk).clamp(0.0, qmax);
                        *c = q as u8;
                        *v = s * q + mk;
                    }
                }
            });
        }
    });
    Ok(out)
}

/// A group's f16-rounded scale and its zero point from its clipped max `hi` and min `lo`.
fn scale_and_zero(spec: &QuantSpec, hi: f32, lo: f32) -> (f32, f32) {
    if spec.symmetric {
        let s = (hi.abs().max(lo.abs()) / spec.sym_zero() as f32).clamp(S_MIN as f32, S_MAX as f32);
        return (f16_round(s), spec.sym_zero() as f32);
    }
    let qmax = spec.qmax() as f32;
    let s = f16_round(((hi - lo) / qmax).clamp(S_MIN as f32, S_MAX as f32));
    let z = (-lo / s)
        .clamp(-Z_LIM as f32, Z_LIM as f32)
        .round_ties_even();
    let z = match spec.zero_range {
        Some((zlo, zhi)) => z.clamp(zlo as f32, zhi as f32),
        None => z,
    };
    (s, z)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split over threads (runs of whole groups, the last one short) or not, the same bits.
    #[test]
    fn requantization_on_threads_equals_one_thread() {
        let dev = Device::Cpu;
        let spec = QuantSpec {
            bits: 2,
            group_size: 8,
            symmetric: false,
            zero_range: None,
            kgrid: None,
        };
        // 9,001 groups: 3 threads get runs of 4,096, 4,096 and 809.
        let w = Tensor::randn(0f32, 1.0, (9001, 8), &dev).unwrap();
        let gw = GroupedWeight::new(&w, 8).unwrap();
        let clip: Vec<f32> = (0..9001).map(|k| 0.5 + (k % 7) as f32 / 14.0).collect();
        let one = quantize_with_clip_on(&spec, &gw, &clip, &clip, 1).unwrap();
        let three = quantize_with_clip_on(&spec, &gw, &clip, &clip, 3).unwrap();
        assert_eq!((one.d.len(), one.codes.len()), (9001, 9001 * 8));
        assert_eq!(one.d, three.d);
        assert_eq!(one.m, three.m);
        assert_eq!(one.z, three.z);
        assert_eq!(one.codes, three.codes);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one.weight), bits(&three.weight));
        assert!(one.codes.contains(&3) && one.codes.contains(&0));
    }

    /// apiq.md §1.7: group of 8, γ = β = 4, fp64, half-to-even.
    const X: [f64; 8] = [0.12, -0.53, 0.07, 0.91, -0.20, 0.33, -0.05, 0.48];

    fn example(bits: u32, symmetric: bool) -> (f64, f64, Vec<f64>) {
        let dev = Device::Cpu;
        let spec = QuantSpec {
            bits,
            group_size: 8,
            symmetric,
            zero_range: None,
            kgrid: None,
        };
        let w = Tensor::new(&X, &dev).unwrap().reshape((1, 8)).unwrap();
        let gw = GroupedWeight::new(&w, 8).unwrap();
        let lwc = Lwc::new(1, DType::F64, &dev).unwrap();
        let (s, z) = scale_zero(&spec, &gw, lwc.gamma.as_tensor(), lwc.beta.as_tensor()).unwrap();
        let xh = fake_quant(&spec, &gw, lwc.gamma.as_tensor(), lwc.beta.as_tensor()).unwrap();
        (
            s.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0],
            z.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0],
            xh.flatten_all().unwrap().to_vec1().unwrap(),
        )
    }

    #[test]
    fn worked_examples_of_apiq_md() {
        // (bits, symmetric, s, z, q) from the table in apiq.md §1.7.
        let table: [(u32, bool, f64, f64, [f64; 8]); 6] = [
            (2, false, 0.471367, 1.0, [1., 0., 1., 3., 1., 2., 1., 2.]),
            (2, true, 0.893633, 1.0, [1., 0., 1., 2., 1., 1., 1., 2.]),
            (3, false, 0.202014, 3.0, [4., 0., 3., 7., 2., 5., 3., 5.]),
            (3, true, 0.297878, 3.0, [3., 1., 3., 6., 2., 4., 3., 5.]),
            (4, false, 0.094273, 6.0, [7., 0., 7., 15., 4., 10., 5., 11.]),
            (4, true, 0.127662, 7.0, [8., 3., 8., 14., 5., 10., 7., 11.]),
        ];
        for (bits, sym, s_ref, z_ref, q_ref) in table {
            let (s, z, xh) = example(bits, sym);
            assert!((s - s_ref).abs() < 1e-6, "{bits} {sym}: s {s} vs {s_ref}");
            assert_eq!(z, z_ref, "{bits} {sym}");
            for (i, q) in q_ref.iter().enumerate() {
                // x̂ = (q − z)·s exactly, so the codes are recovered without rounding error.
                assert!(
                    (xh[i] - (q - z) * s).abs() < 1e-12,
                    "{bits} {sym} elem {i}: {} vs q {q}",
                    xh[i]
                );
            }
        }
    }

    #[test]
    fn requantize_reproduces_the_worked_example_codes() {
        let dev = Device::Cpu;
        let spec = QuantSpec {
            bits: 2,
            group_size: 8,
            symmetric: false,
            zero_range: None,
            kgrid: None,
        };
        let w = Tensor::new(&X.map(|v| v as f32), &dev)
            .unwrap()
            .reshape((1, 8))
            .unwrap();
        let gw = GroupedWeight::new(&w, 8).unwrap();
        let init = Tensor::full(LWC_INIT as f32, (1, 1), &dev).unwrap();
        let q = requantize(&spec, &gw, &init, &init).unwrap();
        assert_eq!(q.codes, vec![1, 0, 1, 3, 1, 2, 1, 2]);
        let d = half::f16::from_bits(q.d[0]).to_f32();
        assert_eq!(d, half::f16::from_f32(0.471367).to_f32());
        assert_eq!(half::f16::from_bits(q.m[0]).to_f32(), -d);
        for (i, c) in q.codes.iter().enumerate() {
            assert_eq!(q.weight[i], d * f32::from(*c) - d);
        }
    }
}
