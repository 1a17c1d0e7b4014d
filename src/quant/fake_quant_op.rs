//! The LWC fake quantizer of [`super::quantizer::fake_quant`] as a single candle op: one pass
//! over the weight forward, one pass backward (the gradient of the per-group logits, reduced
//! per group). On the GPU the passes are the kernels of `fake_quant.cu`; the CPU code here is
//! their reference and follows the composed candle function operation for operation (same
//! rounding, same clamps, the scale multiplied by the reciprocal of its divisor as candle's
//! affine does), so in f32 the forward is bit-identical to it.
//!
//! The output can be stored narrower than the weight (bf16/f16 for tensor-core products); the
//! arithmetic stays in the weight's type.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

use super::qparams::divisor;
#[cfg(feature = "cuda")]
use super::qparams::QParams;
use super::quantizer::{GroupedWeight, QuantSpec};

/// `ŵ = (clamp(round(w/s) + z, 0, qmax) − z)·s` per group, `[out, in]`, stored as `out_dtype`;
/// differentiable in γ and β (straight-through rounding, PyTorch's clamp gradient).
pub fn fake_quant_fused(
    spec: &QuantSpec,
    gw: &GroupedWeight,
    gamma: &Tensor,
    beta: &Tensor,
    out_dtype: DType,
) -> Result<Tensor> {
    gw.w.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        FakeQuant {
            spec: *spec,
            out_dtype,
        },
    )?
    .reshape((gw.out_features, gw.in_features))
}

/// Arithmetic of the CPU reference, in f32 or f64 (the weight's type).
trait Real:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
    fn exp(self) -> Self;
    fn rint(self) -> Self;
    fn abs(self) -> Self;
    fn clamp_to(self, lo: Self, hi: Self) -> Self {
        let v = if self < lo { lo } else { self };
        if v > hi {
            hi
        } else {
            v
        }
    }
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn of(v: f64) -> Self {
                v as $t
            }
            fn f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn rint(self) -> Self {
                self.round_ties_even()
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
        }
    };
}
real!(f32);
real!(f64);

struct GroupScale<T> {
    sg: T,
    sb: T,
    hi: T,
    lo: T,
    s_raw: T,
    s: T,
    z: T,
    xmax: T,
    xmin: T,
}

fn sigmoid<T: Real>(x: T) -> T {
    T::of(1.0) / (T::of(1.0) + (-x).exp())
}

fn group_scale<T: Real>(spec: &QuantSpec, x: &[T], gamma: T, beta: T) -> GroupScale<T> {
    let mut xmax = x[0];
    let mut xmin = x[0];
    for &v in x {
        if v > xmax {
            xmax = v;
        }
        if v < xmin {
            xmin = v;
        }
    }
    let (sg, sb) = (sigmoid(gamma), sigmoid(beta));
    let (hi, lo) = (sg * xmax, sb * xmin);
    let inv = T::of(1.0 / divisor(spec));
    let (s_lo, s_hi) = (T::of(1e-5), T::of(1e4));
    let (s_raw, z) = if spec.symmetric {
        let absmax = if hi.abs() >= lo.abs() {
            hi.abs()
        } else {
            lo.abs()
        };
        (absmax * inv, T::of(spec.sym_zero()))
    } else {
        let s_raw = (hi - lo) * inv;
        let s = s_raw.clamp_to(s_lo, s_hi);
        let z = ((-lo) / s).clamp_to(T::of(-1e4), T::of(1e4)).rint();
        let z = match spec.zero_range {
            Some((zl, zh)) => z.clamp_to(T::of(f64::from(zl)), T::of(f64::from(zh))),
            None => z,
        };
        (s_raw, z)
    };
    GroupScale {
        sg,
        sb,
        hi,
        lo,
        s_raw,
        s: s_raw.clamp_to(s_lo, s_hi),
        z,
        xmax,
        xmin,
    }
}

fn forward<T: Real>(spec: &QuantSpec, w: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
    let g_size = w.len() / gamma.len();
    let qmax = T::of(spec.qmax());
    let mut out = Vec::with_capacity(w.len());
    for (k, x) in w.chunks_exact(g_size).enumerate() {
        let g = group_scale(spec, x, gamma[k], beta[k]);
        for &v in x {
            let q = ((v / g.s).rint() + g.z).clamp_to(T::of(0.0), qmax);
            out.push((q - g.z) * g.s);
        }
    }
    out
}

/// `[n_groups, 2]`: dL/dγ, dL/dβ per group, from dL/dŵ.
fn backward<T: Real>(spec: &QuantSpec, grad: &[f64], w: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
    let g_size = w.len() / gamma.len();
    let qmax = T::of(spec.qmax());
    let zero = T::of(0.0);
    let one = T::of(1.0);
    let mut out = Vec::with_capacity(2 * gamma.len());
    for (k, x) in w.chunks_exact(g_size).enumerate() {
        let g = group_scale(spec, x, gamma[k], beta[k]);
        let mut acc = zero;
        for (i, &v) in x.iter().enumerate() {
            let u = v / g.s;
            let r = u.rint();
            let pre = r + g.z;
            let d = if pre >= zero && pre <= qmax {
                r - u
            } else {
                pre.clamp_to(zero, qmax) - g.z
            };
            acc = acc + T::of(grad[k * g_size + i]) * d;
        }
        let s_in = g.s_raw >= T::of(1e-5) && g.s_raw <= T::of(1e4);
        let ds = if s_in {
            acc * T::of(1.0 / divisor(spec))
        } else {
            zero
        };
        let dsg = g.sg * (one - g.sg);
        let dsb = g.sb * (one - g.sb);
        let (dg, db) = if spec.symmetric {
            let (a, b) = (g.hi.abs(), g.lo.abs());
            let wa = if a > b {
                one
            } else if a < b {
                zero
            } else {
                T::of(0.5)
            };
            let sign = |v: T| if v >= zero { one } else { -one };
            (
                ds * wa * sign(g.hi) * dsg * g.xmax,
                ds * (one - wa) * sign(g.lo) * dsb * g.xmin,
            )
        } else {
            (ds * dsg * g.xmax, -(ds * dsb * g.xmin))
        };
        out.push(dg);
        out.push(db);
    }
    out
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("fake_quant: {what} must be contiguous"),
    }
}

/// Converts the reference's result into the requested storage type.
fn store<T: Real>(v: Vec<T>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v.into_iter().map(|x| x.f64() as f32).collect()),
        DType::F64 => CpuStorage::F64(v.into_iter().map(Real::f64).collect()),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(|x| bf16::from_f64(x.f64())).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(|x| f16::from_f64(x.f64())).collect()),
        other => candle_core::bail!("fake_quant: no {other:?} output"),
    })
}

fn as_f64(s: &CpuStorage, l: &Layout) -> Result<Vec<f64>> {
    Ok(match s {
        CpuStorage::F32(v) => contiguous(v, l, "grad")?
            .iter()
            .map(|&x| f64::from(x))
            .collect(),
        CpuStorage::F64(v) => contiguous(v, l, "grad")?.to_vec(),
        CpuStorage::BF16(v) => contiguous(v, l, "grad")?
            .iter()
            .map(|x| x.to_f64())
            .collect(),
        CpuStorage::F16(v) => contiguous(v, l, "grad")?
            .iter()
            .map(|x| x.to_f64())
            .collect(),
        _ => candle_core::bail!("fake_quant: unsupported gradient type"),
    })
}

pub(crate) struct FakeQuant {
    pub spec: QuantSpec,
    pub out_dtype: DType,
}

impl FakeQuant {
    /// The CPU forward in the weight's arithmetic type, stored as `out_dtype`.
    fn reference<T: Real>(
        &self,
        (w, lw): (&[T], &Layout),
        (g, lg): (&[T], &Layout),
        (b, lb): (&[T], &Layout),
    ) -> Result<CpuStorage> {
        let out = forward(
            &self.spec,
            contiguous(w, lw, "w")?,
            contiguous(g, lg, "γ")?,
            contiguous(b, lb, "β")?,
        );
        store(out, self.out_dtype)
    }
}

impl CustomOp3 for FakeQuant {
    fn name(&self) -> &'static str {
        "apiq-fake-quant"
    }

    fn cpu_fwd(
        &self,
        w: &CpuStorage,
        lw: &Layout,
        g: &CpuStorage,
        lg: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (w, g, b) {
            (CpuStorage::F32(w), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                self.reference((w, lw), (g, lg), (b, lb))?
            }
            (CpuStorage::F64(w), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                self.reference((w, lw), (g, lg), (b, lb))?
            }
            _ => candle_core::bail!("fake_quant: w, γ, β must all be f32 or all f64"),
        };
        Ok((out, lw.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = super::fake_quant_cuda::forward(
            &QParams::of(&self.spec),
            (w, lw),
            (g, lg),
            (b, lb),
            self.out_dtype,
        )?;
        Ok((out, lw.shape().clone()))
    }

    fn bwd(
        &self,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dg, db) = grad_logits(&self.spec, w, gamma, beta, grad)?;
        Ok((None, Some(dg), Some(db)))
    }
}

/// The gradient of the clipping logits (γ, β) `[n, 1]` each from that of the fake-quantized
/// weight (`[out, in]` or `[n, G]`, any float type) on grouped weights `w` `[n, G]`.
pub fn grad_logits(
    spec: &QuantSpec,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let gb = Tensor::cat(&[gamma, beta], 1)?;
    let grad = grad.reshape(w.shape())?.contiguous()?;
    let d = grad.apply_op3_no_bwd(w, &gb, &FakeQuantGrad { spec: *spec })?;
    Ok((d.narrow(1, 0, 1)?, d.narrow(1, 1, 1)?))
}

/// Backward of [`FakeQuant`]: (dL/dŵ `[n, G]`, w `[n, G]`, (γ, β) `[n, 2]`) → `[n, 2]`.
struct FakeQuantGrad {
    spec: QuantSpec,
}

impl FakeQuantGrad {
    /// The CPU backward; `gb` holds (γ, β) interleaved.
    fn reference<T: Real>(&self, grad: &[f64], w: &[T], gb: &[T]) -> Vec<T> {
        let g: Vec<T> = gb.iter().step_by(2).copied().collect();
        let b: Vec<T> = gb.iter().skip(1).step_by(2).copied().collect();
        backward(&self.spec, grad, w, &g, &b)
    }
}

impl CustomOp3 for FakeQuantGrad {
    fn name(&self) -> &'static str {
        "apiq-fake-quant-grad"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        lgr: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        gb: &CpuStorage,
        lgb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let grad = as_f64(grad, lgr)?;
        let n = lgb.shape().dims()[0];
        let out = match (w, gb) {
            (CpuStorage::F32(w), CpuStorage::F32(gb)) => CpuStorage::F32(self.reference(
                &grad,
                contiguous(w, lw, "w")?,
                contiguous(gb, lgb, "γβ")?,
            )),
            (CpuStorage::F64(w), CpuStorage::F64(gb)) => CpuStorage::F64(self.reference(
                &grad,
                contiguous(w, lw, "w")?,
                contiguous(gb, lgb, "γβ")?,
            )),
            _ => candle_core::bail!("fake_quant grad: w and γβ must both be f32 or f64"),
        };
        Ok((out, Shape::from((n, 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        grad: &candle_core::CudaStorage,
        lgr: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        gb: &candle_core::CudaStorage,
        lgb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let n = lgb.shape().dims()[0];
        let out = super::fake_quant_cuda::backward(
            &QParams::of(&self.spec),
            (grad, lgr),
            (w, lw),
            (gb, lgb),
        )?;
        Ok((out, Shape::from((n, 2))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantizer::{fake_quant, Lwc};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn spec(bits: u32, symmetric: bool, zero_range: Option<(u32, u32)>) -> QuantSpec {
        QuantSpec {
            bits,
            group_size: 64,
            symmetric,
            zero_range,
            kgrid: None,
        }
    }

    /// Random weights and logits spread around the init, so clamps and ties of every kind occur.
    fn case(dtype: DType, seed: u64) -> (GroupedWeight, Var, Var) {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (out, inp) = (24, 192);
        let w: Vec<f64> = (0..out * inp)
            .map(|i| {
                let v: f64 = rng.random_range(-1.0..1.0);
                // a few groups of identical values (zero range) and exact grid values
                if i % 997 < 64 && i < 64 * 3 {
                    0.25
                } else {
                    v * v * v
                }
            })
            .collect();
        let w = Tensor::from_vec(w, (out, inp), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let gw = GroupedWeight::new(&w, 64).unwrap();
        let n = gw.n_groups();
        let logits = |rng: &mut ChaCha8Rng| -> Var {
            let v: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..6.0)).collect();
            Var::from_tensor(
                &Tensor::from_vec(v, (n, 1), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap()
        };
        let g = logits(&mut rng);
        let b = logits(&mut rng);
        (gw, g, b)
    }

    fn specs() -> Vec<QuantSpec> {
        vec![
            spec(2, false, None),
            spec(3, false, None),
            spec(4, false, None),
            spec(2, true, None),
            spec(3, true, None),
            spec(2, false, Some((1, 2))),
        ]
    }

    #[test]
    fn forward_is_bit_identical_to_the_composed_quantizer_in_f32() {
        for (i, s) in specs().iter().enumerate() {
            let (gw, g, b) = case(DType::F32, i as u64);
            let a: Vec<f32> = fake_quant(s, &gw, g.as_tensor(), b.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let f: Vec<f32> = fake_quant_fused(s, &gw, g.as_tensor(), b.as_tensor(), DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(a, f, "{s:?}");
        }
    }

    #[test]
    fn gradients_match_the_composed_quantizer() {
        for (i, s) in specs().iter().enumerate() {
            let (gw, g, b) = case(DType::F64, 100 + i as u64);
            let n = gw.out_features * gw.in_features;
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let up: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let up = Tensor::from_vec(up, (gw.out_features, gw.in_features), &Device::Cpu).unwrap();
            let grads = |fused: bool| -> (Vec<f64>, Vec<f64>) {
                let wq = if fused {
                    fake_quant_fused(s, &gw, g.as_tensor(), b.as_tensor(), DType::F64).unwrap()
                } else {
                    fake_quant(s, &gw, g.as_tensor(), b.as_tensor()).unwrap()
                };
                let gs = (wq * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let v = |x: &Var| {
                    gs.get(x.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                };
                (v(&g), v(&b))
            };
            let (ga, ba) = grads(false);
            let (gf, bf) = grads(true);
            for (x, y) in ga.iter().zip(&gf).chain(ba.iter().zip(&bf)) {
                assert!(
                    (x - y).abs() <= 1e-12 * (1.0 + x.abs()),
                    "{s:?}: {x} vs {y}"
                );
            }
            assert!(ga.iter().any(|v| *v != 0.0), "{s:?}: no gradient reached γ");
        }
    }

    #[test]
    fn narrow_outputs_round_the_f32_result_once() {
        let s = spec(2, false, None);
        let (gw, g, b) = case(DType::F32, 42);
        let f32s = fake_quant_fused(&s, &gw, g.as_tensor(), b.as_tensor(), DType::F32).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let narrow = fake_quant_fused(&s, &gw, g.as_tensor(), b.as_tensor(), dt).unwrap();
            assert_eq!(narrow.dtype(), dt);
            let want: Vec<f32> = f32s
                .to_dtype(dt)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got: Vec<f32> = narrow
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(want, got, "{dt:?}");
        }
    }

    #[test]
    fn lwc_init_logits_work_too() {
        let s = spec(2, false, None);
        let (gw, _, _) = case(DType::F32, 3);
        let lwc = Lwc::new(gw.n_groups(), DType::F32, &Device::Cpu).unwrap();
        let a = fake_quant(&s, &gw, lwc.gamma.as_tensor(), lwc.beta.as_tensor()).unwrap();
        let f = fake_quant_fused(
            &s,
            &gw,
            lwc.gamma.as_tensor(),
            lwc.beta.as_tensor(),
            DType::F32,
        )
        .unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            f.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
