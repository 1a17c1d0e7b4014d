//! The loss and the gradients of one ApiQ-bw step with the block's backward pass written out,
//! instead of recorded and replayed by candle's autograd.
//!
//! Why: candle's backprop starts every gradient as a zero tensor and adds into it (a fill and an
//! add per node), keeps every intermediate of the forward alive, and hands the weight gradient
//! of `x·Wᵀ` over as a transposed view that must be copied before the quantizer's backward can
//! reduce it. Here each gradient is computed once, in the layout its consumer reads (the weight
//! gradient `[out, in]` straight out of one product), only what the backward reads is kept, and
//! the inputs of q/k/v get no gradient (nothing upstream is trained).
//!
//! The arithmetic is that of [`super::qblock::forward_train`] at the same [`Compute`]: products
//! take operands in the compute type (the weights' own type at f32), everything else is in the
//! activations' type. Autograd through `forward_train` is the reference: the tests compare
//! both in f64, `check-kernels` on the GPU.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};

use super::qblock::TrainLinear;
use super::step_ops as ops;
use crate::nn::block::{self, BlockNorms, Rope};
use crate::nn::causal_softmax_op::{causal_softmax, causal_softmax_grad};
use crate::nn::compute::Precision;
use crate::nn::hparams::HParams;
use crate::quant::fake_quant_op::{fake_quant_fused, grad_logits};
use crate::quant::QuantSpec;

/// What a linear's forward keeps for its backward; products' operands in the compute type.
struct Saved {
    /// The input `[N, in]`.
    x: Tensor,
    /// The fake-quantized (or frozen) weight `[out, in]`, kept where the input's gradient is
    /// needed.
    w: Option<Tensor>,
    /// LoRA: `z = x·Aᵀ` `[N, r]`, A `[r, in]` and `scaling·B` `[out, r]`.
    lora: Option<(Tensor, Tensor, Tensor)>,
}

/// A linear with its operands in the products' type: the weight `[out, in]` and LoRA's A
/// `[r, in]` and `scaling·B` `[out, r]`.
pub struct OperandLinear {
    pub w: Tensor,
    pub lora: Option<(Tensor, Tensor)>,
}

impl OperandLinear {
    /// `x` `[N, in]` → the output's parts (the weight's product, LoRA's) and LoRA's `z = x·Aᵀ`.
    fn products(&self, x: &Tensor) -> Result<(Vec<Tensor>, Option<Tensor>)> {
        let mut parts = vec![x.matmul(&self.w.t()?)?];
        let z = match &self.lora {
            Some((a, b)) => {
                let z = x.matmul(&a.t()?)?;
                parts.push(z.matmul(&b.t()?)?);
                Some(z)
            }
            None => None,
        };
        Ok((parts, z))
    }
}

struct Linear<'a> {
    lin: &'a TrainLinear,
    spec: &'a QuantSpec,
    /// Operand type of the products.
    ty: DType,
}

impl Linear<'_> {
    fn weight(&self) -> Result<Tensor> {
        match &self.lin.quant {
            // A K grid has no fused kernel yet: candle's ops, then the operand type.
            Some(_) if self.lin.kgrid.is_some() => self
                .lin
                .fake_quant(self.spec)?
                .expect("quantized")
                .to_dtype(self.ty),
            Some((gw, lwc)) => fake_quant_fused(
                self.spec,
                gw,
                lwc.gamma.as_tensor(),
                lwc.beta.as_tensor(),
                self.ty,
            ),
            None => self.lin.w.to_dtype(self.ty),
        }
    }

    /// `x` `[N, in]` → the output `[N, out]` as parts in the operand type: the weight's
    /// product, and LoRA's.
    fn forward(&self, x: &Tensor, keep_w: bool) -> Result<(Vec<Tensor>, Saved)> {
        let op = OperandLinear {
            w: self.weight()?,
            lora: match &self.lin.lora {
                Some(l) => Some((
                    l.a.as_tensor().to_dtype(self.ty)?,
                    (l.b.as_tensor() * l.scaling)?.to_dtype(self.ty)?,
                )),
                None => None,
            },
        };
        let (parts, z) = op.products(x)?;
        let saved = Saved {
            x: x.clone(),
            w: keep_w.then_some(op.w),
            lora: z.zip(op.lora).map(|(z, (a, b))| (z, a, b)),
        };
        Ok((parts, saved))
    }

    /// From `dy` `[N, out]` in the operand type: the gradients of the clipping logits and the
    /// LoRA pair into `grads`, and the input's gradient as parts where the forward kept `w`.
    fn backward(&self, s: &Saved, dy: &Tensor, grads: &mut GradStore) -> Result<Vec<Tensor>> {
        if let Some((gw, lwc)) = &self.lin.quant {
            let dw = dy.t()?.matmul(&s.x)?;
            let (g, b) = (lwc.gamma.as_tensor(), lwc.beta.as_tensor());
            let (dg, db) = if self.lin.kgrid.is_some() {
                // ∂(Σ ŵ·dW)/∂(γ, β) by candle's autograd through the composed K grid.
                let wq = self.lin.fake_quant(self.spec)?.expect("quantized");
                let gs = (wq * dw.to_dtype(gw.w.dtype())?)?.sum_all()?.backward()?;
                let pick = |v: &Tensor| -> Result<Tensor> {
                    match gs.get(v) {
                        Some(d) => Ok(d.clone()),
                        None => v.zeros_like(),
                    }
                };
                (pick(g)?, pick(b)?)
            } else {
                grad_logits(self.spec, &gw.w, g, b, &dw)?
            };
            grads.insert(g, dg);
            grads.insert(b, db);
        }
        let mut dz = None;
        if let (Some(l), Some((z, _, b))) = (&self.lin.lora, &s.lora) {
            let pdtype = l.b.as_tensor().dtype();
            let db = (dy.t()?.matmul(z)?.to_dtype(pdtype)? * l.scaling)?;
            let d = dy.matmul(b)?;
            grads.insert(l.a.as_tensor(), d.t()?.matmul(&s.x)?.to_dtype(pdtype)?);
            grads.insert(l.b.as_tensor(), db);
            dz = Some(d);
        }
        let Some(w) = &s.w else {
            return Ok(Vec::new());
        };
        let mut dx = vec![dy.matmul(w)?];
        if let (Some(d), Some((_, a, _))) = (dz, &s.lora) {
            dx.push(d.matmul(a)?);
        }
        Ok(dx)
    }
}

/// What the backward reads of a block's forward, `N = B·L` rows.
struct Forward {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    probs: Tensor,
    /// The residual after attention, `1/rms` of its norm.
    x2: Tensor,
    rstd2: Tensor,
    g: Vec<Tensor>,
    u: Vec<Tensor>,
    /// ffn_down's output parts: the block's output is `x2 + Σ yd`.
    yd: Vec<Tensor>,
}

/// The products' operand type of a step whose activations are `act`.
pub fn operand_type(rope: &Rope, act: DType) -> DType {
    match rope.compute().precision {
        Precision::F32 => act,
        p => p.matmul_dtype(),
    }
}

/// A block's forward on the step's passes; `product(i, h)` is linear `i`'s output parts for
/// its input `h` `[N, in]` in the operand type `ty`.
fn forward_parts(
    hp: &HParams,
    rope: &Rope,
    norms: &BlockNorms,
    x: &Tensor,
    ty: DType,
    product: &mut dyn FnMut(usize, &Tensor) -> Result<Vec<Tensor>>,
) -> Result<Forward> {
    let (b, l, e) = x.dims3()?;
    let (nh, nkv, hd) = (hp.n_head, hp.n_head_kv, hp.head_dim);
    let act = x.dtype();
    let x = x.reshape((b * l, e))?;

    // Attention half.
    let (_, h1, _) = ops::rms_norm(&x, &[], &norms.attn_norm, hp.rms_eps, ty)?;
    let yq = product(block::Q, &h1)?;
    let yk = product(block::K, &h1)?;
    let yv = product(block::V, &h1)?;
    let bias = |i: usize| norms.bias[i].as_ref();
    let q = ops::heads(&yq, bias(block::Q), Some(rope), (b, l, nh, hd), act)?;
    let k = ops::heads(&yk, bias(block::K), Some(rope), (b, l, nkv, hd), act)?;
    let v = ops::heads(&yv, bias(block::V), None, (b, l, nkv, hd), act)?;
    let (k, v) = (
        block::repeat_kv(k, nh / nkv)?,
        block::repeat_kv(v, nh / nkv)?,
    );
    let scale = 1.0 / (hd as f64).sqrt();
    let probs = causal_softmax(&q.matmul(&k.t()?)?, scale)?;
    let att = ops::unheads(&probs.matmul(&v)?, None, 1, act)?;
    let yo = product(block::O, &att)?;

    // MLP half.
    let (x2, h2, rstd2) = ops::rms_norm(&x, &yo, &norms.ffn_norm, hp.rms_eps, ty)?;
    let g = product(block::GATE, &h2)?;
    let u = product(block::UP, &h2)?;
    let a = ops::swiglu(&g, &u, act)?;
    let yd = product(block::DOWN, &a)?;
    Ok(Forward {
        q,
        k,
        v,
        probs,
        x2,
        rstd2,
        g,
        u,
        yd,
    })
}

/// The block's output `[B, L, E]` for `x` `[B, L, E]` on the step's passes and operand type,
/// with no backward: `linears` hold their operands in that type ([`operand_type`]).
pub fn forward(
    hp: &HParams,
    rope: &Rope,
    norms: &BlockNorms,
    linears: &[OperandLinear],
    x: &Tensor,
) -> Result<Tensor> {
    let act = x.dtype();
    let f = forward_parts(hp, rope, norms, x, operand_type(rope, act), &mut |i, h| {
        Ok(linears[i].products(h)?.0)
    })?;
    let mut y = f.x2;
    for p in &f.yd {
        y = (y + p.to_dtype(act)?)?;
    }
    y.reshape(x.shape())
}

/// The loss `Σ_t MSE(block(x), t)` over `targets` and the gradients of every trained tensor of
/// `linears` (clipping logits, LoRA pairs) of `loss_scale · loss`.
#[allow(clippy::too_many_arguments)]
pub fn loss_and_grads(
    hp: &HParams,
    rope: &Rope,
    norms: &BlockNorms,
    spec: &QuantSpec,
    linears: &[TrainLinear],
    x: &Tensor,
    targets: &[&Tensor],
    loss_scale: f64,
) -> Result<(Tensor, GradStore)> {
    let (b, l, e) = x.dims3()?;
    let n = b * l;
    let (nh, nkv, hd) = (hp.n_head, hp.n_head_kv, hp.head_dim);
    let rep = nh / nkv;
    let act = x.dtype();
    let ty = operand_type(rope, act);
    let lin = |i: usize| Linear {
        lin: &linears[i],
        spec,
        ty,
    };
    // The backward needs the weights of the linears whose input gets a gradient (all but q,
    // k, v: nothing upstream is trained).
    let mut saved: [Option<Saved>; 7] = Default::default();
    let Forward {
        q,
        k,
        v,
        probs,
        x2,
        rstd2,
        g,
        u,
        yd,
    } = forward_parts(hp, rope, norms, x, ty, &mut |i, h| {
        let (parts, s) = lin(i).forward(h, i >= block::O)?;
        saved[i] = Some(s);
        Ok(parts)
    })?;
    let [sq, sk, sv, so, sg, su, sd] = saved.map(|s| s.expect("every linear ran"));
    let scale = 1.0 / (hd as f64).sqrt();

    // Loss and its gradient.
    let targets = targets
        .iter()
        .map(|t| t.reshape((n, e)))
        .collect::<Result<Vec<_>>>()?;
    let targets: Vec<&Tensor> = targets.iter().collect();
    let k_mse = 2.0 * loss_scale / (n * e) as f64;
    let (sq_sum, dout, dout_t) = ops::residual_mse(&x2, &yd, &targets, k_mse)?;
    let loss = (sq_sum / (n * e) as f64)?;

    // Backward, MLP half.
    let mut grads = GradStore::default();
    let da = lin(block::DOWN).backward(&sd, &dout_t, &mut grads)?;
    let (dg, du) = ops::swiglu_backward(&g, &u, &da, act)?;
    let mut dh2 = lin(block::GATE).backward(&sg, &dg, &mut grads)?;
    dh2.extend(lin(block::UP).backward(&su, &du, &mut grads)?);
    let (_, dx2) = ops::rms_norm_backward(&x2, &rstd2, &norms.ffn_norm, &dh2, &dout)?;

    // Backward, attention half.
    let datt = lin(block::O).backward(&so, &dx2, &mut grads)?;
    let dctx = ops::heads(&datt, None, None, (b, l, nh, hd), act)?;
    let dscores = causal_softmax_grad(&probs, &dctx.matmul(&v.t()?)?, scale)?;
    // k and v are shared by `rep` query heads: `unheads` sums their gradients.
    let dq = ops::unheads(&dscores.matmul(&k)?, Some(rope), 1, act)?;
    let dk = ops::unheads(&dscores.t()?.matmul(&q)?, Some(rope), rep, act)?;
    let dv = ops::unheads(&probs.t()?.matmul(&dctx)?, None, rep, act)?;
    lin(block::Q).backward(&sq, &dq, &mut grads)?;
    lin(block::K).backward(&sk, &dk, &mut grads)?;
    lin(block::V).backward(&sv, &dv, &mut grads)?;
    Ok((loss, grads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiq::qblock::forward_train;
    use crate::nn::block::fixtures::{randn, random_norms, TINY_SHAPES};
    use crate::nn::compute::Compute;
    use crate::nn::hparams::RopeKind;
    use crate::quant::lora::LoraSpec;
    use candle_core::Device;

    /// The written-out gradients against candle's autograd through `forward_train`, in f64,
    /// with logits away from their initial value and LoRA B non-zero so every term counts.
    fn compare(rope_kind: RopeKind, qkv_bias: bool, group_size: usize) {
        let dev = Device::Cpu;
        let hp = HParams::tiny(rope_kind, qkv_bias);
        let spec = QuantSpec {
            bits: 2,
            group_size,
            symmetric: false,
            zero_range: None,
            kgrid: None,
        };
        let lspec = LoraSpec {
            rank: 3,
            alpha: 16.0,
        };
        let e = TINY_SHAPES[0].0;
        let linears: Vec<TrainLinear> = TINY_SHAPES
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let lin = TrainLinear::new(&randn(s, 0.5, &dev), &spec, Some((&lspec, i as u64)))
                    .unwrap();
                if let Some((gw, lwc)) = &lin.quant {
                    let n = gw.n_groups();
                    lwc.gamma.set(&randn((n, 1), 1.0, &dev)).unwrap();
                    lwc.beta.set(&randn((n, 1), 1.0, &dev)).unwrap();
                }
                let lo = lin.lora.as_ref().unwrap();
                lo.b.set(&randn((s.0, lspec.rank), 0.3, &dev)).unwrap();
                lin
            })
            .collect();
        let norms = random_norms(qkv_bias, &dev);
        let (b, l) = (2, 5);
        let x = randn((b * l, e), 1.0, &dev).reshape((b, l, e)).unwrap();
        let t1 = randn((b * l, e), 1.0, &dev).reshape((b, l, e)).unwrap();
        let t2 = randn((b * l, e), 1.0, &dev).reshape((b, l, e)).unwrap();
        let rope = Rope::new(&hp, l, DType::F64, &dev).unwrap();
        let y = forward_train(&hp, &rope, &norms, &spec, &linears, &x).unwrap();
        let mse = |t: &Tensor| (&y - t).unwrap().sqr().unwrap().mean_all().unwrap();
        let loss = (mse(&t1) + mse(&t2)).unwrap();
        let reference = loss.backward().unwrap();

        let rope = rope.with_compute(Compute {
            precision: Precision::F32,
            fused: true,
        });
        let scale = 8.0;
        let (ours_loss, ours) =
            loss_and_grads(&hp, &rope, &norms, &spec, &linears, &x, &[&t1, &t2], scale).unwrap();
        let (a, o) = (
            loss.to_scalar::<f64>().unwrap(),
            ours_loss.to_scalar::<f64>().unwrap(),
        );
        assert!((a - o).abs() <= 1e-12 * a.abs(), "loss {o} vs {a}");
        let mut checked = 0;
        for (i, lin) in linears.iter().enumerate() {
            let lo = lin.lora.as_ref().unwrap();
            let mut vars = vec![("A", &lo.a), ("B", &lo.b)];
            if let Some((_, lwc)) = &lin.quant {
                vars.extend([("gamma", &lwc.gamma), ("beta", &lwc.beta)]);
            }
            for (name, v) in vars {
                let r = reference.get(v.as_tensor()).unwrap();
                let g = (ours.get(v.as_tensor()).unwrap() / scale).unwrap();
                assert_eq!(r.dims(), g.dims(), "{} {name}", block::LINEARS[i]);
                let err = (r - &g).unwrap().abs().unwrap().max_all().unwrap();
                let size = r
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                let err = err.to_scalar::<f64>().unwrap();
                assert!(
                    size > 1e-6 && err <= 1e-10 * size,
                    "{} {name}: max |Δ| {err:e} of max |g| {size:e}",
                    block::LINEARS[i]
                );
                checked += 1;
            }
        }
        let quantized = linears.iter().filter(|l| l.quant.is_some()).count();
        assert_eq!(checked, 7 * 2 + quantized * 2);
    }

    #[test]
    fn gradients_match_autograd_llama() {
        compare(RopeKind::Norm, false, 8);
    }

    #[test]
    fn gradients_match_autograd_qwen2_with_bias_and_an_unquantizable_linear() {
        // Group 16: ffn_down (24 inputs) stays full precision with its LoRA.
        compare(RopeKind::Neox, true, 16);
    }
}
