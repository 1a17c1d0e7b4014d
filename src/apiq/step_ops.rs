//! The elementwise and row-wise passes of the written-out step ([`super::step`]): one kernel
//! each on CUDA (`step_ops.cu`), the candle compositions of [`reference`] elsewhere. The
//! compositions are the reference: the CPU tests check them against candle's autograd through
//! the block, `check-kernels` checks the kernels against them on the GPU.
//!
//! A product's output arrives as "parts" (the quantized weight's product and LoRA's, of one or
//! two linears) in the operand type; they are summed in the activations' type where they are
//! read, so no pass only adds them.

use candle_core::{DType, Result, Tensor};

use crate::nn::block::Rope;

/// `[N, H·hd]` (Σ parts, + bias) → `[B, H, L, hd]` in the parts' type, rotated by RoPE when
/// `rope` is given. Arithmetic in `act`.
pub fn heads(
    x: &[Tensor],
    bias: Option<&Tensor>,
    rope: Option<&Rope>,
    (b, l, h, hd): (usize, usize, usize, usize),
    act: DType,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x[0].device().is_cuda() && act == DType::F32 {
        return super::step_ops_cuda::heads(x, bias, rope, (b, l, h, hd));
    }
    reference::heads(x, bias, rope, (b, l, h, hd), act)
}

/// `[B, H·rep, L, hd]` → `[B·L, H·hd]` in `x`'s type, each group of `rep` heads summed (the
/// gradient of GQA's sharing), rotated by −θ (RoPE's backward) when `rope` is given.
pub fn unheads(x: &Tensor, rope: Option<&Rope>, rep: usize, act: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && act == DType::F32 {
        return super::step_ops_cuda::unheads(x, rope, rep);
    }
    reference::unheads(x, rope, rep, act)
}

/// `x2 = x + Σ add`, `h = RMSNorm(x2)·w` in `ty`, and `1/rms` `[N, 1]`. `x` `[N, E]`.
pub fn rms_norm(
    x: &Tensor,
    add: &[Tensor],
    w: &Tensor,
    eps: f32,
    ty: DType,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == DType::F32 {
        return super::step_ops_cuda::rms_norm(x, add, w, eps, ty);
    }
    reference::rms_norm(x, add, w, eps, ty)
}

/// RMSNorm's backward plus the residual's gradient: `dres + ∂/∂x2` from `dh = Σ dh parts`;
/// in `x2`'s type and in the parts' type.
pub fn rms_norm_backward(
    x2: &Tensor,
    rstd: &Tensor,
    w: &Tensor,
    dh: &[Tensor],
    dres: &Tensor,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x2.device().is_cuda() && x2.dtype() == DType::F32 {
        return super::step_ops_cuda::rms_norm_backward(x2, rstd, w, dh, dres);
    }
    reference::rms_norm_backward(x2, rstd, w, dh, dres)
}

/// `silu(Σ g)·Σ u` in the parts' type.
pub fn swiglu(g: &[Tensor], u: &[Tensor], act: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if g[0].device().is_cuda() && act == DType::F32 {
        return super::step_ops_cuda::swiglu(g, u);
    }
    reference::swiglu(g, u, act)
}

/// The gradients of g and u (in the parts' type) from the output's, `Σ da`.
pub fn swiglu_backward(
    g: &[Tensor],
    u: &[Tensor],
    da: &[Tensor],
    act: DType,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if g[0].device().is_cuda() && act == DType::F32 {
        return super::step_ops_cuda::swiglu_backward(g, u, da);
    }
    reference::swiglu_backward(g, u, da, act)
}

/// The block's output `out = x2 + Σ y` against `targets`: `Σ_t Σ (out − t)²` (a scalar), and
/// `k·Σ_t (out − t)` in `x2`'s type and in the parts' type.
pub fn residual_mse(
    x2: &Tensor,
    y: &[Tensor],
    targets: &[&Tensor],
    k: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x2.device().is_cuda() && x2.dtype() == DType::F32 && targets.len() <= 2 {
        return super::step_ops_cuda::residual_mse(x2, y, targets, k);
    }
    reference::residual_mse(x2, y, targets, k)
}

/// The compositions of candle ops each kernel replaces.
pub mod reference {
    use candle_core::{DType, Result, Tensor, D};

    use crate::nn::block::Rope;

    fn sum(parts: &[Tensor], act: DType) -> Result<Tensor> {
        let mut acc = parts[0].to_dtype(act)?;
        for p in &parts[1..] {
            acc = (acc + p.to_dtype(act)?)?;
        }
        Ok(acc)
    }

    pub fn heads(
        x: &[Tensor],
        bias: Option<&Tensor>,
        rope: Option<&Rope>,
        (b, l, h, hd): (usize, usize, usize, usize),
        act: DType,
    ) -> Result<Tensor> {
        let ty = x[0].dtype();
        let mut y = sum(x, act)?;
        if let Some(bias) = bias {
            y = y.broadcast_add(bias)?;
        }
        let y = y.reshape((b, l, h, hd))?.transpose(1, 2)?.contiguous()?;
        match rope {
            Some(r) => r.rotate(&y, false)?.to_dtype(ty),
            None => y.to_dtype(ty),
        }
    }

    pub fn unheads(x: &Tensor, rope: Option<&Rope>, rep: usize, act: DType) -> Result<Tensor> {
        let ty = x.dtype();
        let (b, hr, l, hd) = x.dims4()?;
        let h = hr / rep;
        let mut y = x.to_dtype(act)?;
        if rep > 1 {
            y = y.reshape((b, h, rep, l, hd))?.sum(2)?;
        }
        if let Some(r) = rope {
            y = r.rotate(&y, true)?;
        }
        y.transpose(1, 2)?.reshape((b * l, h * hd))?.to_dtype(ty)
    }

    pub fn rms_norm(
        x: &Tensor,
        add: &[Tensor],
        w: &Tensor,
        eps: f32,
        ty: DType,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let x2 = if add.is_empty() {
            x.clone()
        } else {
            (x + sum(add, x.dtype())?)?
        };
        let ms = x2.sqr()?.mean_keepdim(D::Minus1)?;
        let rstd = (ms + f64::from(eps))?.sqrt()?.recip()?;
        let h = x2.broadcast_mul(&rstd)?.broadcast_mul(w)?.to_dtype(ty)?;
        Ok((x2, h, rstd))
    }

    pub fn rms_norm_backward(
        x2: &Tensor,
        rstd: &Tensor,
        w: &Tensor,
        dh: &[Tensor],
        dres: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let xhat = x2.broadcast_mul(rstd)?;
        let dxhat = sum(dh, x2.dtype())?.broadcast_mul(w)?;
        let proj = (&dxhat * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = ((dxhat - xhat.broadcast_mul(&proj)?)?.broadcast_mul(rstd)? + dres)?;
        let dx_t = dx.to_dtype(dh[0].dtype())?;
        Ok((dx, dx_t))
    }

    pub fn swiglu(g: &[Tensor], u: &[Tensor], act: DType) -> Result<Tensor> {
        crate::nn::block::swiglu(&sum(g, act)?, &sum(u, act)?)?.to_dtype(g[0].dtype())
    }

    pub fn swiglu_backward(
        g: &[Tensor],
        u: &[Tensor],
        da: &[Tensor],
        act: DType,
    ) -> Result<(Tensor, Tensor)> {
        let ty = g[0].dtype();
        let (g, u, da) = (sum(g, act)?, sum(u, act)?, sum(da, act)?);
        let sig = candle_nn::ops::sigmoid(&g)?;
        let du = (&da * g.mul(&sig)?)?;
        // d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g)))
        let dsilu = (&sig * (&g * sig.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
        let dg = (da * u)?.mul(&dsilu)?;
        Ok((dg.to_dtype(ty)?, du.to_dtype(ty)?))
    }

    pub fn residual_mse(
        x2: &Tensor,
        y: &[Tensor],
        targets: &[&Tensor],
        k: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let out = (x2 + sum(y, x2.dtype())?)?;
        let mut sq: Option<Tensor> = None;
        let mut d: Option<Tensor> = None;
        for t in targets {
            let diff = (&out - *t)?;
            // Row sums first: one reduction over everything runs on a single GPU block.
            let s = diff.sqr()?.sum_keepdim(D::Minus1)?.sum_all()?;
            let g = (diff * k)?;
            sq = Some(match sq {
                Some(acc) => (acc + s)?,
                None => s,
            });
            d = Some(match d {
                Some(acc) => (acc + g)?,
                None => g,
            });
        }
        let (Some(sq), Some(d)) = (sq, d) else {
            candle_core::bail!("residual_mse: no targets")
        };
        let d_t = d.to_dtype(y[0].dtype())?;
        Ok((sq, d, d_t))
    }
}
