//! One LLaMA/Qwen2 decoder block, written from differentiable candle primitives only (candle's
//! fused softmax, RMSNorm and RoPE ops have no backward pass). The seven linears are supplied
//! by the caller, so the same forward serves the full-precision and the quantized block.
//!
//! Weights are in GGUF order (q/k rows interleaved for llama), so RoPE rotates what llama.cpp
//! rotates: pairs (2i, 2i+1) for llama, (i, i + hd/2) for qwen2.

use candle_core::{DType, Device, Result, Tensor, D};

use super::causal_softmax_op::causal_softmax;
use super::compute::{Compute, Precision};
use super::hparams::{HParams, RopeKind};

/// The seven linears of a block, in ApiQ's order, with their GGUF names.
pub const LINEARS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Which of [`LINEARS`] a GGUF tensor is (`blk.N.attn_q.weight` → `Some(Q)`): the tensors
/// ApiQ calibrates.
pub fn linear_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?.split_once('.')?.1;
    LINEARS.iter().position(|l| rest == format!("{l}.weight"))
}

pub const Q: usize = 0;
pub const K: usize = 1;
pub const V: usize = 2;
pub const O: usize = 3;
pub const GATE: usize = 4;
pub const UP: usize = 5;
pub const DOWN: usize = 6;

/// Frozen tensors of a block: norms and biases (the linears' weights live with their caller).
pub struct BlockNorms {
    pub attn_norm: Tensor,
    pub ffn_norm: Tensor,
    /// q, k, v biases (qwen2).
    pub bias: [Option<Tensor>; 3],
}

/// cos/sin tables `[L, hd/2]` for positions 0..L, and how the blocks that use them compute
/// (f32 and candle's ops unless [`Rope::with_compute`] says otherwise).
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    kind: RopeKind,
    compute: Compute,
}

impl Rope {
    pub fn new(hp: &HParams, len: usize, dtype: DType, dev: &Device) -> Result<Rope> {
        let half = hp.head_dim / 2;
        // As ggml's rope: theta_i = base^(−2i/hd), divided by the Llama-3.1 factor if any.
        let theta: Vec<f64> = (0..half)
            .map(|i| {
                let t = f64::from(hp.rope_base).powf(-2.0 * i as f64 / hp.head_dim as f64);
                t / hp.rope_factors.as_ref().map_or(1.0, |f| f64::from(f[i]))
            })
            .collect();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for t in &theta {
                let a = p as f64 * t;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (len, half), dev)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (len, half), dev)?.to_dtype(dtype)?,
            kind: hp.rope,
            compute: Compute::REFERENCE,
        })
    }

    pub fn with_compute(self, compute: Compute) -> Rope {
        Rope { compute, ..self }
    }

    pub fn compute(&self) -> Compute {
        self.compute
    }

    /// cos and sin `[len, hd/2]` of positions `0..len`, and which pairs rotate.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn tables(&self, len: usize) -> Result<(Tensor, Tensor, RopeKind)> {
        Ok((
            self.cos.narrow(0, 0, len)?,
            self.sin.narrow(0, 0, len)?,
            self.kind,
        ))
    }

    /// `x`: `[B, H, L, hd]`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.rotate(x, false)
    }

    /// RoPE, or with `inverse` its inverse (the rotation by −θ), which is also its backward.
    pub(crate) fn rotate(&self, x: &Tensor, inverse: bool) -> Result<Tensor> {
        let (b, h, l, hd) = x.dims4()?;
        let cos = self.cos.narrow(0, 0, l)?;
        let sin = self.sin.narrow(0, 0, l)?;
        let sin = if inverse { sin.neg()? } else { sin };
        match self.kind {
            RopeKind::Norm => {
                let x = x.reshape((b, h, l, hd / 2, 2))?;
                let x0 = x.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
                let x1 = x.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
                let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Tensor::stack(&[r0, r1], D::Minus1)?.reshape((b, h, l, hd))
            }
            RopeKind::Neox => {
                let x0 = x.narrow(D::Minus1, 0, hd / 2)?;
                let x1 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
                let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Tensor::cat(&[r0, r1], D::Minus1)
            }
        }
    }
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + f64::from(eps))?.sqrt()?)?
        .broadcast_mul(w)
}

/// Softmax over the last dim; the max is detached (softmax does not depend on the shift).
fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

fn causal_mask(l: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (l, l), dev)?.to_dtype(dtype)
}

/// `x`: `[B, L, E]` → `[B, L, E]`. `linear(i, h)` applies linear `i` (see [`LINEARS`]).
pub fn forward(
    hp: &HParams,
    rope: &Rope,
    norms: &BlockNorms,
    linear: &dyn Fn(usize, &Tensor) -> Result<Tensor>,
    x: &Tensor,
) -> Result<Tensor> {
    let (b, l, _) = x.dims3()?;
    let (nh, nkv, hd) = (hp.n_head, hp.n_head_kv, hp.head_dim);
    let h = rms_norm(x, &norms.attn_norm, hp.rms_eps)?;
    let proj = |i: usize, heads: usize| -> Result<Tensor> {
        let mut y = linear(i, &h)?;
        if let Some(bias) = &norms.bias[i] {
            y = y.broadcast_add(bias)?;
        }
        y.reshape((b, l, heads, hd))?.transpose(1, 2)?.contiguous()
    };
    let q = rope.apply(&proj(Q, nh)?)?;
    let k = rope.apply(&proj(K, nkv)?)?;
    let v = proj(V, nkv)?;
    let (k, v) = (repeat_kv(k, nh / nkv)?, repeat_kv(v, nh / nkv)?);
    let att = attention(rope.compute, &q, &k, &v)?;
    let att = att.transpose(1, 2)?.reshape((b, l, nh * hd))?;
    let x = (x + linear(O, &att)?)?;
    let h = rms_norm(&x, &norms.ffn_norm, hp.rms_eps)?;
    let g = linear(GATE, &h)?;
    let u = linear(UP, &h)?;
    let act = swiglu(&g, &u)?;
    x + linear(DOWN, &act)?
}

/// GQA: each of the `[B, H_kv, L, hd]` heads repeated `rep` times in place, `[B, H_kv·rep, L, hd]`.
pub fn repeat_kv(t: Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(t);
    }
    let (b, nkv, l, hd) = t.dims4()?;
    t.unsqueeze(2)?
        .broadcast_as((b, nkv, rep, l, hd))?
        .reshape((b, nkv * rep, l, hd))
}

/// The MLP's gated activation `silu(g)·u`.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    candle_nn::ops::sigmoid(g)?.mul(g)? * u
}

/// Causal attention `softmax(q·kᵀ/√hd + mask)·v` of `[B, H, L, hd]` tensors, in `x`'s type.
/// Narrow precisions multiply in 16 bits; the softmax arithmetic is f32 either way.
fn attention(c: Compute, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (dtype, l, hd) = (q.dtype(), q.dim(2)?, q.dim(3)?);
    let mm = c.precision.matmul_dtype();
    let narrow = c.precision != Precision::F32 && dtype == DType::F32;
    let cast = |t: &Tensor| {
        if narrow {
            t.to_dtype(mm)
        } else {
            Ok(t.clone())
        }
    };
    let kt = cast(&k.t()?.contiguous()?)?;
    let scores = cast(q)?.matmul(&kt)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let probs = if c.fused {
        causal_softmax(&scores, scale)?
    } else {
        let scores = (scores.to_dtype(dtype)? * scale)?;
        let scores = scores.broadcast_add(&causal_mask(l, dtype, q.device())?)?;
        cast(&softmax(&scores)?)?
    };
    probs.matmul(&cast(v)?)?.to_dtype(dtype)
}

/// `x·Wᵀ` for `x` `[B, L, in]` and `W` `[out, in]`. A narrower `W` (bf16/f16 fake-quantized
/// weights) sets the operand type: `x` is rounded to it, the result returned in `x`'s type.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.dtype() == x.dtype() {
        return x.broadcast_matmul(&w.t()?);
    }
    let (b, l, n) = x.dims3()?;
    let y = x
        .to_dtype(w.dtype())?
        .reshape((b * l, n))?
        .matmul(&w.t()?)?;
    y.to_dtype(x.dtype())?.reshape((b, l, w.dim(0)?))
}

/// Random blocks of [`HParams::tiny`]'s shape for the tests of the passes that compute one.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// `[out, in]` of each of [`LINEARS`] for [`HParams::tiny`] (E 16, kv 8, FF 24).
    pub const TINY_SHAPES: [(usize, usize); 7] = [
        (16, 16),
        (8, 16),
        (8, 16),
        (16, 16),
        (24, 16),
        (24, 16),
        (16, 24),
    ];

    pub fn randn(shape: (usize, usize), scale: f64, dev: &Device) -> Tensor {
        (Tensor::randn(0f64, 1.0, shape, dev).unwrap() * scale).unwrap()
    }

    /// Norm weights near 1 and, with `qkv_bias`, q/k/v biases, in f64.
    pub fn random_norms(qkv_bias: bool, dev: &Device) -> BlockNorms {
        let (e, kv) = (TINY_SHAPES[Q].0, TINY_SHAPES[K].0);
        let norm = || {
            (randn((1, e), 0.3, dev) + 1.0)
                .unwrap()
                .flatten_all()
                .unwrap()
        };
        let bias = |n: usize| qkv_bias.then(|| randn((1, n), 0.2, dev).flatten_all().unwrap());
        BlockNorms {
            attn_norm: norm(),
            ffn_norm: norm(),
            bias: [bias(e), bias(kv), bias(kv)],
        }
    }
}
