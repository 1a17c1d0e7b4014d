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

fn spec(bits: u32, symmetric: bool) -> QuantSpec {
    QuantSpec {
        bits,
        group_size: 64,
        symmetric,
        zero_range: None,
    }
}

fn logits(n: usize, dev: &Device) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::rand(-1f32, 7.0, (n, 1), dev)?)?)
}

fn check_fake_quant(dev: &Device, out: &mut Vec<Check>) -> Result<()> {
    for (bits, sym) in [(2, false), (3, false), (4, false), (2, true)] {
        let s = spec(bits, sym);
        // 4096 × 11008 weights: a 7B down projection's size, rows of several groups.
        let w = (Tensor::randn(0f32, 1.0, (4096, 11008), dev)? * 0.02)?;
        let gw = GroupedWeight::new(&w, 64)?;
        let (g, b) = (logits(gw.n_groups(), dev)?, logits(gw.n_groups(), dev)?);
        let up = Tensor::randn(0f32, 1.0, (4096, 11008), dev)?;
        let reference = fake_quant(&s, &gw, g.as_tensor(), b.as_tensor())?;
        let fused = fake_quant_fused(&s, &gw, g.as_tensor(), b.as_tensor(), DType::F32)?;
        let name = format!("{bits}-bit{}", if sym { " sym" } else { "" });
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
    for l in [77, 1024, 2048] {
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
    Ok(out)
}
