//! Training one block (ApiQ-bw) or its linears in order (ApiQ-lw): AdamW with two parameter
//! groups, batch 1, windows in fixed order, `epochs` passes (apiq.md §3.1, §3.2).

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::adamw::AdamW;
use super::block_forward::BlockForward;
use super::collective::Collective;
use super::qblock::{forward_train, FinalLinear, Learned, TrainLinear};
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

/// The quantizer of linear `i`: the recipe's, with the K grid the block assigns it (a K
/// format's mixture) where it assigns one.
fn linear_spec(r: &Recipe, bw: &BlockWeights, i: usize) -> QuantSpec {
    match bw.kgrids.get(i) {
        Some(&kgrid) if r.quant.kgrid.is_some() => QuantSpec { kgrid, ..r.quant },
        _ => r.quant,
    }
}

pub(crate) fn new_linears(
    r: &Recipe,
    bw: &BlockWeights,
    layer: usize,
    with_lora: bool,
) -> Result<Vec<TrainLinear>> {
    let lora = if with_lora { r.lora.as_ref() } else { None };
    let mut linears =
        bw.w.iter()
            .enumerate()
            .map(|(i, w)| {
                let lora = lora.map(|l| (l, lora_seed(r.seed, layer, i)));
                match bw.frozen.get(i) {
                    Some(base) => TrainLinear::over_frozen(base, w, lora),
                    None => TrainLinear::new(w, &linear_spec(r, bw, i), lora),
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
    for (i, l) in linears.iter_mut().enumerate() {
        l.start_from(r.k_init, bw.imatrix.get(i).map(Vec::as_slice))?;
    }
    Ok(linears)
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

    /// One step on `windows` of this rank: each window's loss and gradients (`window`) summed
    /// in order, then over `c`'s ranks, then one update.
    pub(crate) fn step(
        &mut self,
        windows: std::ops::Range<usize>,
        c: &dyn Collective,
        at: StepAt,
        obs: &mut dyn StepObserver,
        window: &mut WindowGrads,
    ) -> Result<()> {
        let mut sum = StepSum::new();
        for j in windows {
            let (loss, grads) = window(j, self)?;
            sum.add(&self.vars, loss, grads)?;
        }
        sum.all_reduce(c, &self.vars)?;
        self.apply(sum, at, obs)
    }

    /// The gradients of `loss_scale() · loss` by autograd.
    pub(crate) fn grads(&self, loss: &Tensor) -> Result<GradStore> {
        let scale = self.loss_scale();
        Ok(if scale == 1.0 {
            loss.backward()?
        } else {
            (loss * scale)?.backward()?
        })
    }

    /// One update of both groups from a step's summed losses and gradients (of
    /// `loss_scale() · loss` each): the step's loss and gradient are their means.
    fn apply(&mut self, sum: StepSum, at: StepAt, obs: &mut dyn StepObserver) -> Result<()> {
        let StepSum {
            loss,
            mut grads,
            windows,
        } = sum;
        let loss = loss.ok_or_else(|| anyhow::anyhow!("a training step needs a window"))?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()? / windows as f64;
        check_finite(value, at.layer, at.epoch, at.index)?;
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
            let grad_scale = grad_scale / windows as f64;
            self.lwc.step(&mut grads, grad_scale)?;
            if let Some(o) = self.lora.as_mut() {
                o.step(&mut grads, grad_scale)?;
            }
        }
        obs.step(at.epoch, at.index, value);
        Ok(())
    }
}

/// Window `j`'s loss and the gradients of `loss_scale()` times it.
pub(crate) type WindowGrads<'a> = dyn FnMut(usize, &Optimizers) -> Result<(Tensor, GradStore)> + 'a;

/// One step's windows so far: their summed losses and gradients, added in window order (a
/// step of one window is that window's, unchanged).
struct StepSum {
    loss: Option<Tensor>,
    grads: GradStore,
    windows: usize,
}

impl StepSum {
    fn new() -> StepSum {
        StepSum {
            loss: None,
            grads: GradStore::default(),
            windows: 0,
        }
    }

    /// Adds one window's loss and the gradients of `vars` in it.
    fn add(&mut self, vars: &[Var], loss: Tensor, mut grads: GradStore) -> Result<()> {
        self.loss = Some(match self.loss.take() {
            Some(l) => (l + loss)?,
            None => loss,
        });
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                let g = match self.grads.remove(v.as_tensor()) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                self.grads.insert(v.as_tensor(), g);
            }
        }
        self.windows += 1;
        Ok(())
    }

    /// Sums the losses and the gradients of `vars` over every rank of `c` (nothing to do
    /// alone): afterwards each rank holds the step's sums over all its windows.
    fn all_reduce(&mut self, c: &dyn Collective, vars: &[Var]) -> Result<()> {
        if c.world() == 1 {
            return Ok(());
        }
        let Some(loss) = self.loss.take() else {
            bail!("a training step needs a window on every rank");
        };
        let mut ts = vec![loss];
        for v in vars {
            match self.grads.remove(v.as_tensor()) {
                Some(g) => ts.push(g),
                None => bail!("a trained tensor got no gradient"),
            }
        }
        c.all_reduce_sum(&mut ts)?;
        let mut ts = ts.into_iter();
        self.loss = ts.next();
        for (v, g) in vars.iter().zip(ts) {
            self.grads.insert(v.as_tensor(), g);
        }
        self.windows *= c.world();
        Ok(())
    }
}

/// Where one step is: block, epoch, step of the epoch.
#[derive(Clone, Copy)]
pub(crate) struct StepAt {
    pub layer: usize,
    pub epoch: usize,
    pub index: usize,
}

/// The loss of one ApiQ-bw window `x` towards `targets` (summed MSEs) and the gradients of
/// `opt.loss_scale()` times it: the block's written-out backward with the fused kernels,
/// candle's autograd otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bw_window(
    hp: &HParams,
    rope: &Rope,
    norms: &BlockNorms,
    spec: &QuantSpec,
    linears: &[TrainLinear],
    x: &Tensor,
    targets: &[&Tensor],
    opt: &Optimizers,
) -> Result<(Tensor, GradStore)> {
    if rope.compute().fused {
        return Ok(step::loss_and_grads(
            hp,
            rope,
            norms,
            spec,
            linears,
            x,
            targets,
            opt.loss_scale(),
        )?);
    }
    let out = forward_train(hp, rope, norms, spec, linears, x)?;
    let loss = total(targets.iter().map(|t| mse(&out, t)))?;
    let grads = opt.grads(&loss)?;
    Ok((loss, grads))
}

/// `r.epochs` passes over `windows` windows (this rank's) in steps of the recipe's batch
/// shared over `c`'s ranks: each step sums `window(j)`'s loss and gradients over the step's
/// windows and the ranks, then one update.
fn train_steps(
    r: &Recipe,
    windows: usize,
    layer: usize,
    opt: &mut Optimizers,
    c: &dyn Collective,
    obs: &mut dyn StepObserver,
    mut window: impl FnMut(usize, &Optimizers) -> Result<(Tensor, GradStore)>,
) -> Result<()> {
    let batch = rank_batch(r.batch, c.world())?;
    let steps = steps_per_epoch(windows, batch)?;
    for epoch in 0..r.epochs {
        for index in 0..steps {
            let at = StepAt {
                layer,
                epoch,
                index,
            };
            let these = index * batch..(index + 1) * batch;
            opt.step(these, c, at, obs, &mut window)?;
        }
    }
    Ok(())
}

/// Steps per epoch of `windows` windows in steps of `batch`: refused unless they divide.
pub fn steps_per_epoch(windows: usize, batch: usize) -> Result<usize> {
    if batch == 0 || !windows.is_multiple_of(batch) {
        bail!("{windows} calibration windows do not split into steps of {batch} (--batch-size must divide --nsamples)");
    }
    Ok(windows / batch)
}

/// Windows per step on each of `world` ranks: refused unless they share each step evenly.
pub fn rank_batch(batch: usize, world: usize) -> Result<usize> {
    if world == 0 || !batch.is_multiple_of(world) {
        bail!("steps of {batch} windows do not split over {world} devices (--batch-size must be a multiple of the number of --devices)");
    }
    Ok(batch / world)
}

/// The windows (indices into `windows` windows in order) rank `rank` of `world` trains on: of
/// each step of `batch`, its share of consecutive windows, in order.
pub fn shard(windows: usize, batch: usize, rank: usize, world: usize) -> Result<Vec<usize>> {
    let per_rank = rank_batch(batch, world)?;
    let steps = steps_per_epoch(windows, batch)?;
    Ok((0..steps)
        .flat_map(|s| {
            let first = s * batch + rank * per_rank;
            first..first + per_rank
        })
        .collect())
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
    c: &dyn Collective,
    obs: &mut dyn StepObserver,
) -> Result<Vec<Learned>> {
    match r.method {
        Method::ApiqLw => train_block_lw(
            r, d.hp, d.rope, d.bw, d.layer, d.fp_in, d.q_in, with_lora, c, obs,
        ),
        _ => {
            let fp_out2: Option<Vec<Tensor>> = if r.aug_loss {
                Some(BlockForward::fp(d.hp, d.rope, d.bw)?.forward_all(d.q_in)?)
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
                c,
                obs,
            )
        }
    }
}

fn check_finite(loss: f64, layer: usize, epoch: usize, index: usize) -> Result<()> {
    if !loss.is_finite() {
        bail!("block {layer}: loss is {loss} at epoch {epoch}, step {index} (hint: lower the learning rates, or use fewer bits of compression)");
    }
    Ok(())
}

/// ApiQ-bw for block `layer`: targets `fp_out[j] = F(fp_in[j])` (and `fp_out2[j] = F(q_in[j])`
/// with the aug loss); trains on `q_in`, this rank's shard of the windows (all of them alone).
/// `with_lora = false` trains LWC only.
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
    c: &dyn Collective,
    obs: &mut dyn StepObserver,
) -> Result<Vec<Learned>> {
    let linears = new_linears(r, bw, layer, with_lora)?;
    let mut opt = Optimizers::new(
        r,
        rope.compute(),
        linears.iter().flat_map(TrainLinear::lwc_vars).collect(),
        linears.iter().flat_map(TrainLinear::lora_vars).collect(),
    )?;
    train_steps(r, q_in.len(), layer, &mut opt, c, obs, |j, opt| {
        let mut targets = vec![&fp_out[j]];
        targets.extend(fp_out2.map(|t| &t[j]));
        bw_window(
            hp, rope, &bw.norms, &r.quant, &linears, &q_in[j], &targets, opt,
        )
    })?;
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
    c: &dyn Collective,
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
        train_steps(r, inputs.len(), layer, &mut opt, c, obs, |j, opt| {
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
            let grads = opt.grads(&loss)?;
            Ok((loss, grads))
        })?;
        for &i in group {
            let l = Learned::of(&linears[i])?;
            finals[i] = Some(FinalLinear::new(
                &linear_spec(r, bw, i),
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
        .enumerate()
        .map(|(i, (w, l))| match bw.frozen.get(i) {
            Some(base) => FinalLinear::over_frozen(base, w, l, r.lora.as_ref()),
            None => FinalLinear::new(&linear_spec(r, bw, i), w, l, r.lora.as_ref()),
        })
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// Mean over windows of the MSE of each output `outs(j)` against `targets[j]`, summed on the
/// device (one read back, not one per window); an output lives only while its MSE is taken.
fn mean_mse_of(
    targets: &[Tensor],
    outs: impl Fn(usize) -> candle_core::Result<Tensor>,
) -> Result<f64> {
    let mut sum: Option<Tensor> = None;
    for (j, t) in targets.iter().enumerate() {
        let m = mse(&outs(j)?, t)?.to_dtype(DType::F32)?;
        sum = Some(match sum {
            Some(s) => (s + m)?,
            None => m,
        });
    }
    let total = match sum {
        Some(s) => f64::from(s.to_scalar::<f32>()?),
        None => 0.0,
    };
    Ok(total / targets.len().max(1) as f64)
}

/// Mean over windows of the MSE of `outs` against `targets`.
pub fn mean_mse(outs: &[Tensor], targets: &[Tensor]) -> Result<f64> {
    mean_mse_of(targets, |j| Ok(outs[j].clone()))
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
    let block = BlockForward::deployed(hp, rope, &bw.norms, linears)?;
    mean_mse_of(fp_out, |j| block.forward(&q_in[j]))
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

/// [`rtn_linears`] of the group formats from the linears' weights alone (no frozen bases, no
/// K grids: those need the block's inputs or its types), on the weights' device, with the
/// codes dropped: what the RTN MSE's forward needs. The pipeline's reader thread runs it on
/// the host while the previous block trains, so the baseline's requantization is off the
/// critical path.
pub fn rtn_group_linears(r: &Recipe, w: &[Tensor]) -> Result<Vec<FinalLinear>> {
    w.iter()
        .zip(rtn_learned())
        .map(|(w, l)| {
            let f = FinalLinear::new(&r.quant, w, &l, None)?;
            Ok(FinalLinear { q: None, ..f })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::block::BlockNorms;
    use crate::nn::compute::{Compute, Precision};
    use crate::nn::hparams::RopeKind;
    use crate::quant::lora::LoraSpec;
    use candle_core::Device;
    use candle_nn::{Optimizer, ParamsAdamW};

    #[test]
    fn each_rank_takes_its_consecutive_share_of_every_step() {
        assert_eq!(shard(8, 4, 0, 2).unwrap(), [0, 1, 4, 5]);
        assert_eq!(shard(8, 4, 1, 2).unwrap(), [2, 3, 6, 7]);
        assert_eq!(shard(6, 3, 2, 3).unwrap(), [2, 5]);
        assert_eq!(shard(4, 1, 0, 1).unwrap(), [0, 1, 2, 3]);
        let uneven = shard(8, 3, 0, 3).unwrap_err().to_string();
        assert!(
            uneven.contains("--batch-size must divide --nsamples"),
            "{uneven}"
        );
        let over = shard(8, 4, 0, 3).unwrap_err().to_string();
        assert!(
            over.contains("multiple of the number of --devices"),
            "{over}"
        );
    }

    fn randn(shape: (usize, usize), scale: f64, dev: &Device) -> Tensor {
        (Tensor::randn(0f64, 1.0, shape, dev).unwrap() * scale).unwrap()
    }

    /// A step of `batch` windows is one AdamW step on the mean of their losses (the released
    /// code's batch: one MSE over all its windows' elements), against autograd through that
    /// mean. The targets sit 1e-7 from the block's initial output, so the gradients are not
    /// large against AdamW's eps and the update depends on their scale: summing instead of
    /// averaging fails, as does grouping the windows otherwise.
    /// The reader thread's RTN baseline (from the bare weights, off the device) is the
    /// block's RTN linears value for value.
    #[test]
    fn rtn_from_the_bare_weights_is_the_blocks_rtn() {
        let dev = Device::Cpu;
        let r = Recipe::default();
        let (e, ff) = (128, 192);
        let shapes = [(e, e), (64, e), (64, e), (e, e), (ff, e), (ff, e), (e, ff)];
        let w: Vec<Tensor> = shapes
            .iter()
            .map(|&s| randn(s, 0.5, &dev).to_dtype(DType::F32).unwrap())
            .collect();
        let ones = || Tensor::ones(e, DType::F32, &dev).unwrap();
        let bw = BlockWeights {
            norms: BlockNorms {
                attn_norm: ones(),
                ffn_norm: ones(),
                bias: [None, None, None],
            },
            w: w.clone(),
            frozen: Vec::new(),
            kgrids: Vec::new(),
            imatrix: Vec::new(),
        };
        let inline = rtn_linears(&r, &bw).unwrap();
        let ahead = rtn_group_linears(&r, &w).unwrap();
        for (i, (a, b)) in inline.iter().zip(&ahead).enumerate() {
            let (a, b): (Vec<f32>, Vec<f32>) = (
                a.w.flatten_all().unwrap().to_vec1().unwrap(),
                b.w.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert!(a == b, "linear {i}");
            let orig: Vec<f32> = w[i].flatten_all().unwrap().to_vec1().unwrap();
            assert!(a != orig, "linear {i} was not quantized");
        }
    }

    #[test]
    fn a_step_of_windows_is_adamw_on_their_mean_loss() {
        let dev = Device::Cpu;
        let hp = HParams::tiny(RopeKind::Norm, false);
        let r = Recipe {
            quant: QuantSpec {
                bits: 2,
                group_size: 8,
                symmetric: false,
                zero_range: None,
                kgrid: None,
            },
            lora: Some(LoraSpec {
                rank: 3,
                alpha: 16.0,
            }),
            epochs: 1,
            batch: 2,
            ..Recipe::default()
        };
        let (e, ff, kv, l) = (16, 24, 8, 5);
        let shapes = [(e, e), (kv, e), (kv, e), (e, e), (ff, e), (ff, e), (e, ff)];
        let ones = || Tensor::ones(e, DType::F64, &dev).unwrap();
        let bw = BlockWeights {
            norms: BlockNorms {
                attn_norm: ones(),
                ffn_norm: ones(),
                bias: [None, None, None],
            },
            w: shapes.iter().map(|&s| randn(s, 0.5, &dev)).collect(),
            frozen: Vec::new(),
            kgrids: Vec::new(),
            imatrix: Vec::new(),
        };
        let rope = Rope::new(&hp, l, DType::F64, &dev)
            .unwrap()
            .with_compute(Compute {
                precision: Precision::F32,
                fused: false,
            });
        let window = || randn((l, e), 1.0, &dev).reshape((1, l, e)).unwrap();
        let q_in: Vec<Tensor> = (0..4).map(|_| window()).collect();
        let start = new_linears(&r, &bw, 0, true).unwrap();
        let targets: Vec<Tensor> = q_in
            .iter()
            .map(|x| {
                let y = forward_train(&hp, &rope, &bw.norms, &r.quant, &start, x).unwrap();
                (y + (window() * 1e-7).unwrap()).unwrap()
            })
            .collect();

        let mut losses = Vec::new();
        let ours = train_block(
            &r,
            &hp,
            &rope,
            &bw,
            0,
            &q_in,
            &targets,
            None,
            true,
            &crate::apiq::collective::Solo,
            &mut |_: usize, _: usize, loss: f64| losses.push(loss),
        )
        .unwrap();

        let linears = new_linears(&r, &bw, 0, true).unwrap();
        let group = |vars: Vec<Var>, lr: f64| {
            let params = ParamsAdamW {
                lr,
                weight_decay: 0.1,
                ..ParamsAdamW::default()
            };
            candle_nn::AdamW::new(vars, params).unwrap()
        };
        let mut lwc = group(
            linears.iter().flat_map(TrainLinear::lwc_vars).collect(),
            5e-3,
        );
        let mut lora = group(
            linears.iter().flat_map(TrainLinear::lora_vars).collect(),
            5e-4,
        );
        let mut reference_losses = Vec::new();
        for step in 0..2 {
            let mse = |j: usize| {
                let y = forward_train(&hp, &rope, &bw.norms, &r.quant, &linears, &q_in[j]).unwrap();
                mse(&y, &targets[j]).unwrap()
            };
            let loss = ((mse(2 * step) + mse(2 * step + 1)).unwrap() / 2.0).unwrap();
            reference_losses.push(loss.to_scalar::<f64>().unwrap());
            let grads = loss.backward().unwrap();
            lwc.step(&grads).unwrap();
            lora.step(&grads).unwrap();
        }

        assert_eq!(losses.len(), 2, "two steps of two windows");
        for (a, b) in losses.iter().zip(&reference_losses) {
            assert!((a - b).abs() <= 1e-12 * b, "step loss {a} vs {b}");
        }
        let mut moved = 0.0f32;
        for (lin, ours) in linears.iter().zip(&ours) {
            let reference = Learned::of(lin).unwrap();
            let (a, b) = ours.lora.as_ref().zip(reference.lora.as_ref()).unwrap();
            let pairs = [
                (ours.gamma.as_ref(), reference.gamma.as_ref()),
                (ours.beta.as_ref(), reference.beta.as_ref()),
                (Some(&a.0), Some(&b.0)),
                (Some(&a.1), Some(&b.1)),
            ];
            for (o, r) in pairs {
                let (o, r) = (o.unwrap(), r.unwrap());
                for (x, y) in o.iter().zip(r) {
                    assert!((x - y).abs() <= 1e-6, "learned {x} vs reference {y}");
                    moved = moved.max(y.abs());
                }
            }
        }
        assert!(moved > 1e-4, "the steps moved the parameters");
    }
}
