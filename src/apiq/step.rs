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
        let w = self.weight()?;
        let mut parts = vec![x.matmul(&w.t()?)?];
        let lora = match &self.lin.lora {
            Some(l) => {
                let a = l.a.as_tensor().to_dtype(self.ty)?;
                let b = (l.b.as_tensor() * l.scaling)?.to_dtype(self.ty)?;
                let z = x.matmul(&a.t()?)?;
                parts.push(z.matmul(&b.t()?)?);
                Some((z, a, b))
            }
            None => None,
        };
        let saved = Saved {
            x: x.clone(),
            w: keep_w.then_some(w),
            lora,
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
    let ty = match rope.compute().precision {
        Precision::F32 => act,
        p => p.matmul_dtype(),
    };
    let lin = |i: usize| Linear {
        lin: &linears[i],
        spec,
        ty,
    };
    let x = x.reshape((n, e))?;

    // Forward, attention half.
    let (_, h1, _) = ops::rms_norm(&x, &[], &norms.attn_norm, hp.rms_eps, ty)?;
    let (yq, sq) = lin(block::Q).forward(&h1, false)?;
    let (yk, sk) = lin(block::K).forward(&h1, false)?;
    let (yv, sv) = lin(block::V).forward(&h1, false)?;
    let bias = |i: usize| norms.bias[i].as_ref();
    let q = ops::heads(&yq, bias(block::Q), Some(rope), (b, l, nh, hd), act)?;
    let k = ops::heads(&yk, bias(block::K), Some(rope), (b, l, nkv, hd), act)?;
    let v = ops::heads(&yv, bias(block::V), None, (b, l, nkv, hd), act)?;
    let (k, v) = (block::repeat_kv(k, rep)?, block::repeat_kv(v, rep)?);
    let scale = 1.0 / (hd as f64).sqrt();
    let probs = causal_softmax(&q.matmul(&k.t()?)?, scale)?;
    let att = ops::unheads(&probs.matmul(&v)?, None, 1, act)?;
    let (yo, so) = lin(block::O).forward(&att, true)?;

    // Forward, MLP half.
    let (x2, h2, rstd2) = ops::rms_norm(&x, &yo, &norms.ffn_norm, hp.rms_eps, ty)?;
    let (g, sg) = lin(block::GATE).forward(&h2, true)?;
    let (u, su) = lin(block::UP).forward(&h2, true)?;
    let a = ops::swiglu(&g, &u, act)?;
    let (yd, sd) = lin(block::DOWN).forward(&a, true)?;

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
    use crate::nn::compute::Compute;
    use crate::nn::hparams::RopeKind;
    use crate::quant::lora::LoraSpec;
    use candle_core::Device;

    fn randn(shape: (usize, usize), scale: f64, dev: &Device) -> Tensor {
        (Tensor::randn(0f64, 1.0, shape, dev).unwrap() * scale).unwrap()
    }

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
        let (e, ff, kv) = (16, 24, 8);
        let shapes = [(e, e), (kv, e), (kv, e), (e, e), (ff, e), (ff, e), (e, ff)];
        let linears: Vec<TrainLinear> = shapes
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
        let norm = || {
            (randn((1, e), 0.3, &dev) + 1.0)
                .unwrap()
                .flatten_all()
                .unwrap()
        };
        let bias = |n: usize| qkv_bias.then(|| randn((1, n), 0.2, &dev).flatten_all().unwrap());
        let norms = BlockNorms {
            attn_norm: norm(),
            ffn_norm: norm(),
            bias: [bias(e), bias(kv), bias(kv)],
        };
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
