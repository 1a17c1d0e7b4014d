//! Checks our fused CUDA kernels against candle's op-by-op references on the same device and
//! fresh random inputs (`apiq2gguf check-kernels --device cuda`; the CPU tests cover the CPU
//! references, which CI runs). Outputs of the kernels are allocated uninitialised, so an
//! element a kernel forgets to write shows up as a mismatch.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var, D};

use crate::apiq::adamw::AdamW;
use crate::nn::block::Rope;
use crate::nn::causal_softmax_op::causal_softmax;
use crate::nn::compute::{Compute, Precision};
use crate::quant::fake_quant_op::fake_quant_fused;
use crate::quant::quantizer::{fake_quant, GroupedWeight, QuantSpec};

/// One comparison: what, relative L2 error, bound.
pub struct Check {
    pub what: String,
    pub rel: f64,
    pub bound: f64,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.rel.is_finite() && self.rel <= self.bound
    }
}

fn rel(a: &Tensor, reference: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let r = reference.to_dtype(DType::F64)?.flatten_all()?;
    let num = (&a - &r)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = r.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if den == 0.0 { num } else { num / den })
}

fn spec(bits: u32, symmetric: bool, group_size: usize) -> QuantSpec {
    QuantSpec {
        bits,
        group_size,
        symmetric,
        zero_range: None,
        kgrid: None,
    }
}

fn logits(n: usize, dev: &Device) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::rand(-1f32, 7.0, (n, 1), dev)?)?)
}

fn check_fake_quant(dev: &Device, out: &mut Vec<Check>) -> Result<()> {
    // Groups of 32, 64 and 128 run the eight-lanes kernels, 16 the one-warp kernels.
    let cases = [
        (2, false, 64),
        (3, false, 64),
        (4, false, 64),
        (2, true, 64),
        (2, false, 32),
        (2, false, 128),
        (3, true, 16),
    ];
    for (bits, sym, group) in cases {
        let s = spec(bits, sym, group);
        // 4096 × 11008 weights: a 7B down projection's size, rows of several groups.
        let w = (Tensor::randn(0f32, 1.0, (4096, 11008), dev)? * 0.02)?;
        let gw = GroupedWeight::new(&w, group)?;
        let (g, b) = (logits(gw.n_groups(), dev)?, logits(gw.n_groups(), dev)?);
        let up = Tensor::randn(0f32, 1.0, (4096, 11008), dev)?;
        let reference = fake_quant(&s, &gw, g.as_tensor(), b.as_tensor())?;
        let fused = fake_quant_fused(&s, &gw, g.as_tensor(), b.as_tensor(), DType::F32)?;
        let name = format!("{bits}-bit g{group}{}", if sym { " sym" } else { "" });
        out.push(Check {
            what: format!("fake-quant fwd f32 {name}"),
            rel: rel(&fused, &reference)?,
            // expf may differ from candle's by an ulp, moving a rare borderline code
            bound: 1e-4,
        });
        let narrow = fake_quant_fused(&s, &gw, g.as_tensor(), b.as_tensor(), DType::BF16)?;
        out.push(Check {
            what: format!("fake-quant fwd bf16 {name}"),
            rel: rel(&narrow, &reference)?,
            bound: 8e-3,
        });
        let grads = |wq: Tensor| -> Result<(Tensor, Tensor)> {
            let gs = (wq.to_dtype(DType::F32)? * &up)?.sum_all()?.backward()?;
            Ok((
                gs.get(g.as_tensor()).expect("γ grad").clone(),
                gs.get(b.as_tensor()).expect("β grad").clone(),
            ))
        };
        let (rg, rb) = grads(reference)?;
        let (fg, fb) = grads(fused)?;
        out.push(Check {
            what: format!("fake-quant bwd f32 {name} dγ"),
            rel: rel(&fg, &rg)?,
            bound: 1e-4,
        });
        out.push(Check {
            what: format!("fake-quant bwd f32 {name} dβ"),
            rel: rel(&fb, &rb)?,
            bound: 1e-4,
        });
        let (ng, _) = grads(narrow)?;
        out.push(Check {
            what: format!("fake-quant bwd bf16 {name} dγ"),
            rel: rel(&ng, &rg)?,
            bound: 2e-2,
        });
    }
    Ok(())
}

fn composed_softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    let l = x.dim(D::Minus1)?;
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (l, l), x.device())?;
    let s = (x * scale)?.broadcast_add(&mask)?;
    let m = s.max_keepdim(D::Minus1)?.detach();
    let e = s.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

fn check_softmax(dev: &Device, out: &mut Vec<Check>) -> Result<()> {
    for l in [40, 77, 1024, 2048] {
        let x = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (1, 8, l, l), dev)? * 4.0)?)?;
        let up = Tensor::randn(0f32, 1.0, (1, 8, l, l), dev)?;
        let scale = 1.0 / 128f64.sqrt();
        let reference = composed_softmax(x.as_tensor(), scale)?;
        let fused = causal_softmax(x.as_tensor(), scale)?;
        out.push(Check {
            what: format!("causal softmax fwd f32 L={l}"),
            rel: rel(&fused, &reference)?,
            bound: 1e-5,
        });
        let grad = |y: Tensor| -> Result<Tensor> {
            let gs = (y.to_dtype(DType::F32)? * &up)?.sum_all()?.backward()?;
            Ok(gs.get(x.as_tensor()).expect("x grad").clone())
        };
        let rg = grad(reference.clone())?;
        out.push(Check {
            what: format!("causal softmax bwd f32 L={l}"),
            rel: rel(&grad(fused)?, &rg)?,
            bound: 1e-5,
        });
        let narrow = causal_softmax(&x.as_tensor().to_dtype(DType::BF16)?, scale)?;
        out.push(Check {
            what: format!("causal softmax fwd bf16 L={l}"),
            rel: rel(&narrow, &reference)?,
            bound: 2e-2,
        });
    }
    Ok(())
}

fn check_adamw(dev: &Device, out: &mut Vec<Check>) -> Result<()> {
    let n = 1_000_003;
    let init = Tensor::randn(0f32, 1.0, n, dev)?;
    let (va, vb) = (Var::from_tensor(&init)?, Var::from_tensor(&init.copy()?)?);
    let mut reference = AdamW::new(vec![va.clone()], 5e-3, 0.1, false)?;
    let mut fused = AdamW::new(vec![vb.clone()], 5e-3, 0.1, true)?;
    for step in 0..20 {
        let g = Tensor::randn(0f32, 1.0, n, dev)?;
        let mut ga = (va.as_tensor() * &g)?.sum_all()?.backward()?;
        let mut gb = (vb.as_tensor() * &g)?.sum_all()?.backward()?;
        // a loss-scaled gradient half of the time
        let gs = if step % 2 == 0 { 1.0 } else { 0.5 };
        reference.step(&mut ga, gs)?;
        fused.step(&mut gb, gs)?;
    }
    out.push(Check {
        what: "AdamW 20 steps f32".into(),
        rel: rel(vb.as_tensor(), va.as_tensor())?,
        bound: 1e-6,
    });
    Ok(())
}

/// A whole block's forward at each precision with fused kernels against f32 candle.
fn check_block(dev: &Device, out: &mut Vec<Check>) -> Result<()> {
    let hp = crate::bench::shape("smollm2-135m")?;
    let e = hp.n_embd;
    let recipe = crate::apiq::recipe::Recipe::default();
    let s = recipe.quant;
    let (linears, norms) = crate::bench::random_block(&hp, &recipe, dev)?;
    let l = 512;
    let x = Tensor::randn(0f32, 1.0, (1, l, e), dev)?;
    let run = |c: Compute| -> Result<Tensor> {
        let rope = Rope::new(&hp, l, DType::F32, dev)?.with_compute(c);
        Ok(crate::apiq::qblock::forward_train(
            &hp, &rope, &norms, &s, &linears, &x,
        )?)
    };
    let reference = run(Compute::REFERENCE)?;
    for (p, bound) in [
        (Precision::F32, 1e-4),
        (Precision::Bf16, 2e-2),
        (Precision::F16, 5e-3),
    ] {
        let y = run(Compute {
            precision: p,
            fused: true,
        })?;
        out.push(Check {
            what: format!("block forward {} fused (SmolLM2 shape)", p.name()),
            rel: rel(&(&y - &x)?, &(&reference - &x)?)?,
            bound,
        });
    }
    Ok(())
}

/// The written-out block backward (`apiq::step`, what the fused path trains with) against
/// candle's autograd in f32, at each precision: gradients of the clipping logits and of the
/// LoRA pairs (B non-zero, logits random, so every term is exercised).
fn check_block_grads(dev: &Device, out: &mut Vec<Check>) -> Result<()> {
    let hp = crate::bench::shape("smollm2-135m")?;
    let e = hp.n_embd;
    let recipe = crate::apiq::recipe::Recipe::default();
    let s = recipe.quant;
    let (linears, norms) = crate::bench::random_block(&hp, &recipe, dev)?;
    for lin in &linears {
        if let Some((gw, lwc)) = &lin.quant {
            lwc.gamma.set(logits(gw.n_groups(), dev)?.as_tensor())?;
            lwc.beta.set(logits(gw.n_groups(), dev)?.as_tensor())?;
        }
        if let Some(lo) = &lin.lora {
            let b = lo.b.as_tensor();
            lo.b.set(&Tensor::randn(0f32, 0.02, b.dims(), dev)?)?;
        }
    }
    let l = 512;
    let x = Tensor::randn(0f32, 1.0, (1, l, e), dev)?;
    let t1 = Tensor::randn(0f32, 1.0, (1, l, e), dev)?;
    let t2 = Tensor::randn(0f32, 1.0, (1, l, e), dev)?;
    let rope = Rope::new(&hp, l, DType::F32, dev)?;
    let y = crate::apiq::qblock::forward_train(&hp, &rope, &norms, &s, &linears, &x)?;
    let loss = ((&y - &t1)?.sqr()?.mean_all()? + (&y - &t2)?.sqr()?.mean_all()?)?;
    let reference = loss.backward()?;
    let lwc: Vec<Var> = linears.iter().flat_map(|l| l.lwc_vars()).collect();
    let lora: Vec<Var> = linears.iter().flat_map(|l| l.lora_vars()).collect();
    let all = |g: &candle_core::backprop::GradStore, vars: &[Var], scale: f64| -> Result<Tensor> {
        let parts = vars
            .iter()
            .map(|v| match g.get(v.as_tensor()) {
                Some(t) => Ok((t.flatten_all()? / scale)?),
                None => bail!("no gradient for a trained tensor"),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    };
    for (p, bound) in [
        (Precision::F32, 1e-4),
        (Precision::Bf16, 2e-2),
        (Precision::F16, 5e-3),
    ] {
        let rope = Rope::new(&hp, l, DType::F32, dev)?.with_compute(Compute {
            precision: p,
            fused: true,
        });
        let scale = if p == Precision::F16 { 1024.0 } else { 1.0 };
        let (_, g) = crate::apiq::step::loss_and_grads(
            &hp,
            &rope,
            &norms,
            &s,
            &linears,
            &x,
            &[&t1, &t2],
            scale,
        )?;
        for (what, vars) in [("clipping logits", &lwc), ("LoRA pairs", &lora)] {
            out.push(Check {
                what: format!("block backward {} written out: {what}", p.name()),
                rel: rel(&all(&g, vars, scale)?, &all(&reference, vars, 1.0)?)?,
                bound,
            });
        }
    }
    Ok(())
}

/// The passes of the written-out step (`step_ops.cu`) against their candle compositions, in f32
/// and with bf16 parts, on a GQA shape (9 query heads, 3 kv heads) with both RoPE layouts.
fn check_step_ops(dev: &Device, out: &mut Vec<Check>) -> Result<()> {
    use crate::apiq::step_ops::{self as ops, reference};
    use crate::nn::hparams::RopeKind;
    let (b, l, nh, nkv, hd, e, ff) = (1, 512, 9, 3, 64, 576, 1536);
    let (n, act) = (b * l, DType::F32);
    let f32s = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, dev);
    for (ty, bound) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        let t = |shape: &[usize]| -> Result<Tensor> { Ok(f32s(shape)?.to_dtype(ty)?) };
        let mut push = |what: &str, a: &Tensor, r: &Tensor| -> Result<()> {
            out.push(Check {
                what: format!("step op {what} {ty:?}"),
                rel: rel(a, r)?,
                bound,
            });
            Ok(())
        };
        for kind in [RopeKind::Norm, RopeKind::Neox] {
            let mut hp = crate::bench::shape("smollm2-135m")?;
            hp.rope = kind;
            let rope = Rope::new(&hp, l, DType::F32, dev)?;
            let x = [t(&[n, nh * hd])?, t(&[n, nh * hd])?];
            let bias = f32s(&[nh * hd])?;
            let dims = (b, l, nh, hd);
            push(
                &format!("heads+bias+RoPE {kind:?}"),
                &ops::heads(&x, Some(&bias), Some(&rope), dims, act)?,
                &reference::heads(&x, Some(&bias), Some(&rope), dims, act)?,
            )?;
            let d = t(&[b, nh, l, hd])?;
            push(
                &format!("unheads GQA+inverse RoPE {kind:?}"),
                &ops::unheads(&d, Some(&rope), nh / nkv, act)?,
                &reference::unheads(&d, Some(&rope), nh / nkv, act)?,
            )?;
        }
        let x1 = [t(&[n, nkv * hd])?];
        push(
            "heads plain",
            &ops::heads(&x1, None, None, (b, l, nkv, hd), act)?,
            &reference::heads(&x1, None, None, (b, l, nkv, hd), act)?,
        )?;
        let x = f32s(&[n, e])?;
        let w = f32s(&[e])?.affine(0.1, 1.0)?;
        let add = [t(&[n, e])?, t(&[n, e])?];
        for parts in [0, 2] {
            let a = ops::rms_norm(&x, &add[..parts], &w, 1e-5, ty)?;
            let r = reference::rms_norm(&x, &add[..parts], &w, 1e-5, ty)?;
            push(&format!("rms_norm +{parts} parts: x2"), &a.0, &r.0)?;
            push(&format!("rms_norm +{parts} parts: h"), &a.1, &r.1)?;
            push(&format!("rms_norm +{parts} parts: rstd"), &a.2, &r.2)?;
        }
        let (x2, _, rstd) = reference::rms_norm(&x, &add, &w, 1e-5, ty)?;
        let dh = [t(&[n, e])?, t(&[n, e])?, t(&[n, e])?, t(&[n, e])?];
        let dres = f32s(&[n, e])?;
        let a = ops::rms_norm_backward(&x2, &rstd, &w, &dh, &dres)?;
        let r = reference::rms_norm_backward(&x2, &rstd, &w, &dh, &dres)?;
        push("rms_norm backward (4 parts)", &a.0, &r.0)?;
        push("rms_norm backward, operand type", &a.1, &r.1)?;
        let g = [t(&[n, ff])?, t(&[n, ff])?];
        let u = [t(&[n, ff])?, t(&[n, ff])?];
        let da = [t(&[n, ff])?, t(&[n, ff])?];
        push(
            "swiglu",
            &ops::swiglu(&g, &u, act)?,
            &reference::swiglu(&g, &u, act)?,
        )?;
        let a = ops::swiglu_backward(&g, &u, &da, act)?;
        let r = reference::swiglu_backward(&g, &u, &da, act)?;
        push("swiglu backward: dg", &a.0, &r.0)?;
        push("swiglu backward: du", &a.1, &r.1)?;
        let (t1, t2) = (f32s(&[n, e])?, f32s(&[n, e])?);
        for targets in [vec![&t1], vec![&t1, &t2]] {
            let a = ops::residual_mse(&x2, &add, &targets, 0.37)?;
            let r = reference::residual_mse(&x2, &add, &targets, 0.37)?;
            let k = targets.len();
            push(&format!("residual+MSE {k} targets: loss"), &a.0, &r.0)?;
            push(&format!("residual+MSE {k} targets: gradient"), &a.1, &r.1)?;
            push(
                &format!("residual+MSE {k} targets: operand type"),
                &a.2,
                &r.2,
            )?;
        }
    }
    Ok(())
}

/// Runs every check; fails when one is out of bounds.
pub fn run(dev: &Device) -> Result<Vec<Check>> {
    if !dev.is_cuda() {
        bail!("check-kernels compares the CUDA kernels: run it with --device cuda");
    }
    let mut out = Vec::new();
    check_fake_quant(dev, &mut out)?;
    check_softmax(dev, &mut out)?;
    check_adamw(dev, &mut out)?;
    check_block(dev, &mut out)?;
    check_step_ops(dev, &mut out)?;
    check_block_grads(dev, &mut out)?;
    Ok(out)
}
