//! Training one block (ApiQ-bw) or its linears in order (ApiQ-lw): AdamW with two parameter
//! groups, batch 1, windows in fixed order, `epochs` passes (apiq.md §3.1, §3.2).

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::adamw::AdamW;
use super::qblock::{forward_final, forward_train, FinalLinear, Learned, TrainLinear};
use super::recipe::{Method, Recipe};
use super::step;
use crate::nn::block::{self, BlockNorms, Rope, LINEARS};
use crate::nn::compute::{Compute, Precision};
use crate::nn::hparams::HParams;
use crate::nn::model::BlockWeights;
use crate::quant::QuantSpec;

/// What the caller sees of training progress.
pub trait StepObserver {
    fn step(&mut self, epoch: usize, index: usize, loss: f64);
}

impl<F: FnMut(usize, usize, f64)> StepObserver for F {
    fn step(&mut self, epoch: usize, index: usize, loss: f64) {
        self(epoch, index, loss)
    }
}

/// Per-linear LoRA init seed: the same for a block whether the run is fresh or resumed.
fn lora_seed(seed: u64, layer: usize, linear: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((layer as u64) << 8 | linear as u64)
}

fn mse(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}

/// The sum of a step's loss terms (at least one).
fn total(terms: impl IntoIterator<Item = candle_core::Result<Tensor>>) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for t in terms {
        let t = t?;
        acc = Some(match acc {
            Some(a) => (a + t)?,
            None => t,
        });
    }
    acc.ok_or_else(|| anyhow::anyhow!("a training step needs a target"))
}

pub(crate) fn new_linears(
    r: &Recipe,
    bw: &BlockWeights,
    layer: usize,
    with_lora: bool,
) -> Result<Vec<TrainLinear>> {
    let lora = if with_lora { r.lora.as_ref() } else { None };
    Ok(bw
        .w
        .iter()
        .enumerate()
        .map(|(i, w)| TrainLinear::new(w, &r.quant, lora.map(|l| (l, lora_seed(r.seed, layer, i)))))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// PyTorch's GradScaler: dynamic loss scaling for f16 products (start 2^16, halve and skip the
/// step on a non-finite gradient, double after 2000 clean steps).
struct LossScaler {
    scale: f64,
    clean_steps: u32,
}

impl LossScaler {
    const GROWTH_INTERVAL: u32 = 2000;

    fn new() -> LossScaler {
        LossScaler {
            scale: 65536.0,
            clean_steps: 0,
        }
    }

    /// After a step's gradients: whether to apply them (with 1/scale), and the next scale.
    fn update(&mut self, finite: bool) -> Option<f64> {
        let used = self.scale;
        if !finite {
            self.scale *= 0.5;
            self.clean_steps = 0;
            return None;
        }
        self.clean_steps += 1;
        if self.clean_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        Some(1.0 / used)
    }
}

/// The two AdamW parameter groups of ApiQ: LWC logits and LoRA pairs.
pub(crate) struct Optimizers {
    lwc: AdamW,
    lora: Option<AdamW>,
    vars: Vec<Var>,
    scaler: Option<LossScaler>,
}

impl Optimizers {
    pub(crate) fn new(r: &Recipe, c: Compute, lwc: Vec<Var>, lora: Vec<Var>) -> Result<Optimizers> {
        let vars: Vec<Var> = lwc.iter().chain(&lora).cloned().collect();
        Ok(Optimizers {
            lwc: AdamW::new(lwc, r.lwc_lr, r.lwc_wd, c.fused)?,
            lora: if lora.is_empty() {
                None
            } else {
                Some(AdamW::new(lora, r.lora_lr, r.lora_wd, c.fused)?)
            },
            vars,
            scaler: (c.precision == Precision::F16).then(LossScaler::new),
        })
    }

    /// The factor the loss is multiplied by before its gradients are taken (f16: the dynamic
    /// loss scale; else 1).
    pub(crate) fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, |s| s.scale)
    }

    /// Backward through `loss` (autograd) and one update of both groups.
    pub(crate) fn step(
        &mut self,
        loss: &Tensor,
        layer: usize,
        epoch: usize,
        index: usize,
        obs: &mut dyn StepObserver,
    ) -> Result<()> {
        let scale = self.loss_scale();
        let grads = if scale == 1.0 {
            loss.backward()?
        } else {
            (loss * scale)?.backward()?
        };
        self.apply(loss, grads, layer, epoch, index, obs)
    }

    /// One update of both groups from the gradients of `loss_scale() · loss`.
    pub(crate) fn apply(
        &mut self,
        loss: &Tensor,
        mut grads: GradStore,
        layer: usize,
        epoch: usize,
        index: usize,
        obs: &mut dyn StepObserver,
    ) -> Result<()> {
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        check_finite(value, layer, epoch, index)?;
        let grad_scale = match self.scaler.as_mut() {
            None => Some(1.0),
            Some(s) => {
                let mut total = Tensor::zeros((), DType::F32, loss.device())?;
                for v in &self.vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        total = (total + g.sum_all()?.to_dtype(DType::F32)?)?;
                    }
                }
                s.update(total.to_scalar::<f32>()?.is_finite())
            }
        };
        if let Some(grad_scale) = grad_scale {
            self.lwc.step(&mut grads, grad_scale)?;
            if let Some(o) = self.lora.as_mut() {
                o.step(&mut grads, grad_scale)?;
            }
        }
        obs.step(epoch, index, value);
        Ok(())
    }
}

/// Where one step is: block, epoch, window.
#[derive(Clone, Copy)]
pub(crate) struct StepAt {
    pub layer: usize,
    pub epoch: usize,
    pub index: usize,
}

/// One ApiQ-bw step on window `x` towards `targets` (summed MSEs): the block's written-out
/// backward with the fused kernels, candle's autograd otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bw_step(
    hp: &HParams,
    rope: &Rope,
    norms: &BlockNorms,
    spec: &QuantSpec,
    linears: &[TrainLinear],
    x: &Tensor,
    targets: &[&Tensor],
    opt: &mut Optimizers,
    at: StepAt,
    obs: &mut dyn StepObserver,
) -> Result<()> {
    if rope.compute().fused {
        let (loss, grads) =
            step::loss_and_grads(hp, rope, norms, spec, linears, x, targets, opt.loss_scale())?;
        return opt.apply(&loss, grads, at.layer, at.epoch, at.index, obs);
    }
    let out = forward_train(hp, rope, norms, spec, linears, x)?;
    let loss = total(targets.iter().map(|t| mse(&out, t)))?;
    opt.step(&loss, at.layer, at.epoch, at.index, obs)
}

/// What training one block needs: its weights, the inputs of both chains and the FP targets.
pub struct BlockData<'a> {
    pub hp: &'a HParams,
    pub rope: &'a Rope,
    pub bw: &'a BlockWeights,
    pub layer: usize,
    pub fp_in: &'a [Tensor],
    pub q_in: &'a [Tensor],
    pub fp_out: &'a [Tensor],
}

/// Trains one block with the recipe's method (`with_lora = false`: LWC only).
pub fn train(
    r: &Recipe,
    d: &BlockData,
    with_lora: bool,
    obs: &mut dyn StepObserver,
) -> Result<Vec<Learned>> {
    match r.method {
        Method::ApiqLw => train_block_lw(
            r, d.hp, d.rope, d.bw, d.layer, d.fp_in, d.q_in, with_lora, obs,
        ),
        _ => {
            let fp_out2: Option<Vec<Tensor>> = if r.aug_loss {
                Some(
                    d.q_in
                        .iter()
                        .map(|x| d.bw.forward_fp(d.hp, d.rope, x))
                        .collect::<candle_core::Result<_>>()?,
                )
            } else {
                None
            };
            train_block(
                r,
                d.hp,
                d.rope,
                d.bw,
                d.layer,
                d.q_in,
                d.fp_out,
                fp_out2.as_deref(),
                with_lora,
                obs,
            )
        }
    }
}

fn check_finite(loss: f64, layer: usize, epoch: usize, index: usize) -> Result<()> {
    if !loss.is_finite() {
        bail!("block {layer}: loss is {loss} at epoch {epoch}, window {index} (hint: lower the learning rates, or use fewer bits of compression)");
    }
    Ok(())
}

/// ApiQ-bw for block `layer`: targets `fp_out[j] = F(fp_in[j])` (and `fp_out2[j] = F(q_in[j])`
/// with the aug loss); trains on `q_in`. `with_lora = false` trains LWC only.
#[allow(clippy::too_many_arguments)]
pub fn train_block(
    r: &Recipe,
    hp: &HParams,
    rope: &Rope,
    bw: &BlockWeights,
    layer: usize,
    q_in: &[Tensor],
    fp_out: &[Tensor],
    fp_out2: Option<&[Tensor]>,
    with_lora: bool,
    obs: &mut dyn StepObserver,
) -> Result<Vec<Learned>> {
    let linears = new_linears(r, bw, layer, with_lora)?;
    let mut opt = Optimizers::new(
        r,
        rope.compute(),
        linears.iter().flat_map(TrainLinear::lwc_vars).collect(),
        linears.iter().flat_map(TrainLinear::lora_vars).collect(),
    )?;
    for epoch in 0..r.epochs {
        for (j, x) in q_in.iter().enumerate() {
            let mut targets = vec![&fp_out[j]];
            targets.extend(fp_out2.map(|t| &t[j]));
            let at = StepAt {
                layer,
                epoch,
                index: j,
            };
            bw_step(
                hp, rope, &bw.norms, &r.quant, &linears, x, &targets, &mut opt, at, obs,
            )?;
        }
    }
    linears.iter().map(|l| Ok(Learned::of(l)?)).collect()
}

/// ApiQ-lw for block `layer`: the linears in groups {q,k,v}, {o}, {gate,up}, {down}; each
/// group's loss is `Σ MSE(X·Wᵀ, Xq·(Ŵq)ᵀ + LoRA(Xq))` where X is the layer's input in the FP
/// model and Xq its input in the quantized model (earlier groups already final), plus with the
/// aug loss `Σ MSE(Xq·Wᵀ, …)`: the FP layer on the quantized input, as bw's aug term is the FP
/// block on it.
#[allow(clippy::too_many_arguments)]
pub fn train_block_lw(
    r: &Recipe,
    hp: &HParams,
    rope: &Rope,
    bw: &BlockWeights,
    layer: usize,
    fp_in: &[Tensor],
    q_in: &[Tensor],
    with_lora: bool,
    obs: &mut dyn StepObserver,
) -> Result<Vec<Learned>> {
    const GROUPS: [&[usize]; 4] = [
        &[block::Q, block::K, block::V],
        &[block::O],
        &[block::GATE, block::UP],
        &[block::DOWN],
    ];
    let linears = new_linears(r, bw, layer, with_lora)?;
    let mut learned: Vec<Option<Learned>> = vec![None; LINEARS.len()];
    let mut finals: Vec<Option<FinalLinear>> = (0..LINEARS.len()).map(|_| None).collect();
    for group in GROUPS {
        // Inputs of this group's linears: FP model on fp_in, quantized model on q_in (final
        // linears where done, FP weights elsewhere: later linears do not affect these inputs).
        let capture = |x: &Tensor, quantized: bool| -> Result<Vec<Tensor>> {
            let seen = std::cell::RefCell::new(vec![None; LINEARS.len()]);
            let lin = |i: usize, h: &Tensor| -> candle_core::Result<Tensor> {
                seen.borrow_mut()[i] = Some(h.detach());
                match (&finals[i], quantized) {
                    (Some(f), true) => f.forward(h),
                    _ => block::matmul_t(h, &bw.w[i]),
                }
            };
            block::forward(hp, rope, &bw.norms, &lin, x)?;
            let seen = seen.into_inner();
            Ok(group
                .iter()
                .map(|&i| seen[i].clone().expect("every linear runs"))
                .collect())
        };
        let fp_outputs = |xs: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
            let outs = group
                .iter()
                .zip(xs)
                .map(|(&i, x)| block::matmul_t(x, &bw.w[i]))
                .collect::<candle_core::Result<Vec<_>>>()?;
            layer_outputs(group, outs)
        };
        let mut targets = Vec::with_capacity(fp_in.len());
        let mut targets_aug = Vec::with_capacity(fp_in.len());
        let mut inputs = Vec::with_capacity(q_in.len());
        for (xf, xq) in fp_in.iter().zip(q_in) {
            targets.push(fp_outputs(&capture(xf, false)?)?);
            let xs = capture(xq, true)?;
            if r.aug_loss {
                // The aug loss of the released recipe, per layer: the FP layer on the
                // quantized model's input is a second target.
                targets_aug.push(fp_outputs(&xs)?);
            }
            inputs.push(xs);
        }
        let mut opt = Optimizers::new(
            r,
            rope.compute(),
            group.iter().flat_map(|&i| linears[i].lwc_vars()).collect(),
            group.iter().flat_map(|&i| linears[i].lora_vars()).collect(),
        )?;
        for epoch in 0..r.epochs {
            for j in 0..inputs.len() {
                let outs = group
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| linears[i].forward(&r.quant, rope.compute(), &inputs[j][k]))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let outs = layer_outputs(group, outs)?;
                let loss = total(outs.iter().enumerate().flat_map(|(k, out)| {
                    let aug = targets_aug.get(j).map(|t2| mse(out, &t2[k]));
                    std::iter::once(mse(out, &targets[j][k])).chain(aug)
                }))?;
                opt.step(&loss, layer, epoch, j, obs)?;
            }
        }
        for &i in group {
            let l = Learned::of(&linears[i])?;
            finals[i] = Some(FinalLinear::new(
                &r.quant,
                &bw.w[i],
                &l,
                if with_lora { r.lora.as_ref() } else { None },
            )?);
            learned[i] = Some(l);
        }
    }
    Ok(learned
        .into_iter()
        .map(|l| l.expect("every group trained"))
        .collect())
}

/// What an lw group's loss compares: each linear's output, except that gate and up are one
/// layer, the GLU `silu(gate)·up` (the input of down): matching that product, not its two
/// factors, keeps the few channels where it is large (SmolLM2's massive activations) right.
fn layer_outputs(group: &[usize], outs: Vec<Tensor>) -> candle_core::Result<Vec<Tensor>> {
    if group == [block::GATE, block::UP] {
        return Ok(vec![block::swiglu(&outs[0], &outs[1])?]);
    }
    Ok(outs)
}

/// The final linears of a block from what was learned (or RTN when nothing was).
pub fn finalize(r: &Recipe, bw: &BlockWeights, learned: &[Learned]) -> Result<Vec<FinalLinear>> {
    Ok(bw
        .w
        .iter()
        .zip(learned)
        .map(|(w, l)| FinalLinear::new(&r.quant, w, l, r.lora.as_ref()))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// Mean over windows of the block output MSE against the targets.
pub fn output_mse(
    hp: &HParams,
    rope: &Rope,
    bw: &BlockWeights,
    linears: &[FinalLinear],
    q_in: &[Tensor],
    fp_out: &[Tensor],
) -> Result<f64> {
    let mut sum = 0.0;
    for (x, t) in q_in.iter().zip(fp_out) {
        let y = forward_final(hp, rope, &bw.norms, linears, x)?;
        sum += mse(&y, t)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(sum / q_in.len().max(1) as f64)
}

/// The block's linears by plain round-to-nearest (the RTN baseline: no clipping, no LoRA).
pub fn rtn_linears(r: &Recipe, bw: &BlockWeights) -> Result<Vec<FinalLinear>> {
    finalize(
        &Recipe {
            lora: None,
            ..r.clone()
        },
        bw,
        &rtn_learned(),
    )
}

/// RTN learned state: nothing learned.
pub fn rtn_learned() -> Vec<Learned> {
    (0..LINEARS.len())
        .map(|_| Learned {
            gamma: None,
            beta: None,
            lora: None,
        })
        .collect()
}
