//! Scaled causal softmax of attention scores as a single candle op (one pass forward, one pass
//! backward): `softmax(scale·x + mask)` over the last dimension of `[..., L, L]`, where row `i`
//! of each `L × L` matrix sees columns `0..=i`. On the GPU the passes are the kernels of
//! `causal_softmax.cu`; the CPU code here is their reference, and the composed candle forward
//! of [`super::block`] (scale, −inf mask, softmax less its detached max) is the reference of both.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

pub fn causal_softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(CausalSoftmax { scale })
}

/// The gradient of the scores from the probabilities `y` of [`causal_softmax`] and their
/// gradient `g` (same shape), in `y`'s type.
pub fn causal_softmax_grad(y: &Tensor, g: &Tensor, scale: f64) -> Result<Tensor> {
    y.contiguous()?
        .apply_op2_no_bwd(&g.contiguous()?, &CausalSoftmaxGrad { scale })
}

fn rows(l: &Layout) -> Result<(usize, usize, usize)> {
    let dims = l.shape().dims();
    let n = dims[dims.len() - 1];
    if dims.len() < 2 || dims[dims.len() - 2] != n {
        candle_core::bail!("causal_softmax: scores must be [..., L, L], got {:?}", dims);
    }
    match l.contiguous_offsets() {
        Some((a, _)) => Ok((a, l.shape().elem_count() / n, n)),
        None => candle_core::bail!("causal_softmax: scores must be contiguous"),
    }
}

/// Values as f64 for the reference arithmetic, which runs in f32 for every storage type as the
/// kernels do (f64 storage: in f64).
fn values(s: &CpuStorage) -> Result<Vec<f64>> {
    Ok(match s {
        CpuStorage::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        CpuStorage::F64(v) => v.clone(),
        CpuStorage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        CpuStorage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        _ => candle_core::bail!("causal_softmax: float scores only"),
    })
}

fn like(s: &CpuStorage, v: Vec<f64>) -> CpuStorage {
    match s {
        CpuStorage::F64(_) => CpuStorage::F64(v),
        CpuStorage::BF16(_) => CpuStorage::BF16(v.into_iter().map(bf16::from_f64).collect()),
        CpuStorage::F16(_) => CpuStorage::F16(v.into_iter().map(f16::from_f64).collect()),
        _ => CpuStorage::F32(v.into_iter().map(|x| x as f32).collect()),
    }
}

/// Rounds to the arithmetic type: f32 unless the storage is f64.
fn arith(s: &CpuStorage) -> fn(f64) -> f64 {
    match s {
        CpuStorage::F64(_) => |x| x,
        _ => |x| f64::from(x as f32),
    }
}

struct CausalSoftmax {
    scale: f64,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "apiq-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (off, n_rows, n) = rows(l)?;
        let r = arith(s);
        let x = values(s)?;
        let scale = r(self.scale);
        let mut y = vec![0.0; n_rows * n];
        for row in 0..n_rows {
            let pos = row % n;
            let xr = &x[off + row * n..off + row * n + pos + 1];
            let t: Vec<f64> = xr.iter().map(|&v| r(v * scale)).collect();
            let m = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = t.iter().map(|&v| r(r(v - m).exp())).collect();
            let sum = e.iter().fold(0.0, |a, &b| r(a + b));
            for (j, ej) in e.iter().enumerate() {
                y[row * n + j] = r(ej / sum);
            }
        }
        Ok((like(s, y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (off, n_rows, n) = rows(l)?;
        let out = super::causal_softmax_cuda::forward(s, off, n_rows, n, self.scale as f32)?;
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(causal_softmax_grad(y, grad, self.scale)?))
    }
}

/// `dx_j = scale·y_j·(g_j − Σ_k g_k·y_k)` from the output y and its gradient g.
struct CausalSoftmaxGrad {
    scale: f64,
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "apiq-causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        ly: &Layout,
        gs: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (oy, n_rows, n) = rows(ly)?;
        let (og, _, _) = rows(lg)?;
        let r = arith(ys);
        let (y, g) = (values(ys)?, values(gs)?);
        let scale = r(self.scale);
        let mut dx = vec![0.0; n_rows * n];
        for row in 0..n_rows {
            let pos = row % n;
            let yr = &y[oy + row * n..];
            let gr = &g[og + row * n..];
            let dot = (0..=pos).fold(0.0, |a, j| r(a + r(gr[j] * yr[j])));
            for j in 0..=pos {
                dx[row * n + j] = r(r(scale * yr[j]) * r(gr[j] - dot));
            }
        }
        Ok((like(ys, dx), ly.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &candle_core::CudaStorage,
        ly: &Layout,
        gs: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (oy, n_rows, n) = rows(ly)?;
        let (og, _, _) = rows(lg)?;
        let out =
            super::causal_softmax_cuda::backward(ys, oy, gs, og, n_rows, n, self.scale as f32)?;
        Ok((out, ly.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// The composed forward of `nn::block`: scale, additive −inf mask, softmax.
    fn composed(x: &Tensor, scale: f64) -> Tensor {
        let l = x.dim(D::Minus1).unwrap();
        let mask: Vec<f64> = (0..l)
            .flat_map(|i| (0..l).map(move |j| if j > i { f64::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (l, l), x.device())
            .unwrap()
            .to_dtype(x.dtype())
            .unwrap();
        let s = (x * scale).unwrap().broadcast_add(&mask).unwrap();
        let m = s.max_keepdim(D::Minus1).unwrap().detach();
        let e = s.broadcast_sub(&m).unwrap().exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    }

    #[test]
    fn forward_and_gradient_match_the_composed_softmax() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 3.0, (2, 3, 7, 7), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f64, 1.0, (2, 3, 7, 7), &dev).unwrap();
        let scale = 0.35;
        let a = composed(x.as_tensor(), scale);
        let f = causal_softmax(x.as_tensor(), scale).unwrap();
        let diff = (&a - &f)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-14, "forward differs by {diff}");
        let ga = (a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = (f * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gf) = (
            ga.get(x.as_tensor()).unwrap(),
            gf.get(x.as_tensor()).unwrap(),
        );
        let diff = (ga - gf)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-13, "gradient differs by {diff}");
    }

    #[test]
    fn f32_and_bf16_storage_stay_close_to_f64() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 3.0, (1, 2, 9, 9), &dev).unwrap();
        let want = composed(&x, 0.5);
        for (dt, tol) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
            let got = causal_softmax(&x.to_dtype(dt).unwrap(), 0.5)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let diff = (&want - got)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(diff < tol, "{dt:?}: {diff}");
        }
    }
}
