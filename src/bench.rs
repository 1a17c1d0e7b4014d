//! One ApiQ-bw training step on a random block of a named shape, timed: what the calibration
//! spends per step (fake-quantize all seven linears, block forward with LoRA, MSE + aug MSE,
//! backward, two AdamW updates). For the benchmark scripts; not a test.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::apiq::collective::{Collective, Solo};
use crate::apiq::parallel::run_ranks;
use crate::apiq::qblock::TrainLinear;
use crate::apiq::recipe::Recipe;
use crate::apiq::train::{bw_window, Optimizers, StepAt};
use crate::nn::block::{BlockNorms, Rope};
use crate::nn::compute::Compute;
use crate::nn::hparams::{HParams, RopeKind};

pub const SHAPES: &str = "stories260k, smollm2-135m, llama2-7b";

/// Block hyper-parameters of the named model.
pub fn shape(name: &str) -> Result<HParams> {
    let (e, ff, nh, nkv) = match name {
        "stories260k" => (64, 172, 8, 4),
        "smollm2-135m" => (576, 1536, 9, 3),
        "llama2-7b" => (4096, 11008, 32, 32),
        other => bail!("unknown shape `{other}` (known: {SHAPES})"),
    };
    Ok(HParams {
        arch: "llama".into(),
        n_embd: e,
        n_ff: ff,
        n_layer: 1,
        n_head: nh,
        n_head_kv: nkv,
        head_dim: e / nh,
        n_ctx_train: 4096,
        rms_eps: 1e-5,
        rope_base: 10000.0,
        rope: RopeKind::Norm,
        rope_factors: None,
        qkv_bias: false,
    })
}

/// A block of shape `hp` with random weights (scaled by 1/√in) and unit norms, its linears
/// ready to train with `recipe`.
pub fn random_block(
    hp: &HParams,
    recipe: &Recipe,
    dev: &Device,
) -> Result<(Vec<TrainLinear>, BlockNorms)> {
    let (e, ff) = (hp.n_embd, hp.n_ff);
    let kv = hp.n_head_kv * hp.head_dim;
    let shapes = [(e, e), (kv, e), (kv, e), (e, e), (ff, e), (ff, e), (e, ff)];
    let linears = shapes
        .iter()
        .enumerate()
        .map(|(i, &(o, n))| {
            let w = (Tensor::randn(0f32, 1.0, (o, n), dev)? / (n as f64).sqrt())?;
            Ok(TrainLinear::new(
                &w,
                &recipe.quant,
                recipe.lora.as_ref().map(|l| (l, i as u64)),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let norms = BlockNorms {
        attn_norm: Tensor::ones(e, DType::F32, dev)?,
        ffn_norm: Tensor::ones(e, DType::F32, dev)?,
        bias: [None, None, None],
    };
    Ok((linears, norms))
}

pub struct StepTiming {
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub steps: usize,
    /// Peak device memory during the timed steps (CUDA only), bytes.
    pub peak_bytes: Option<u64>,
}

/// Times `steps` training steps after `warmup` untimed ones: the calibration's own step
/// (`Optimizers::step`, `bw_window`) computing as `c` says.
pub fn train_step(
    hp: &HParams,
    seqlen: usize,
    recipe: &Recipe,
    c: Compute,
    dev: &Device,
    warmup: usize,
    steps: usize,
) -> Result<StepTiming> {
    time_rank(hp, seqlen, recipe, c, &Solo, dev, (warmup, steps))
}

/// The data-parallel step: one rank per device, each with the same block shape and one window
/// per step, the ranks' gradients summed every step (`apiq::parallel`) before each applies the
/// update, as the calibration with `--devices` and a batch of one window per device. Tokens per
/// second count every rank's window.
pub fn train_step_ranks(
    hp: &HParams,
    seqlen: usize,
    recipe: &Recipe,
    c: Compute,
    devices: &[Device],
    warmup: usize,
    steps: usize,
) -> Result<StepTiming> {
    let n = (warmup, steps);
    let first = |coll: &dyn Collective| time_rank(hp, seqlen, recipe, c, coll, &devices[0], n);
    let other =
        |coll: &dyn Collective, r: usize| time_rank(hp, seqlen, recipe, c, coll, &devices[r], n);
    Ok(run_ranks(devices, first, other)?.0)
}

/// One rank's timed steps (`warmup`, `steps`) on a random block on `dev`.
fn time_rank(
    hp: &HParams,
    seqlen: usize,
    recipe: &Recipe,
    c: Compute,
    coll: &dyn Collective,
    dev: &Device,
    (warmup, steps): (usize, usize),
) -> Result<StepTiming> {
    if dev.is_cuda() {
        dev.set_seed(7 + coll.rank() as u64)?;
    }
    let e = hp.n_embd;
    let (linears, norms) = random_block(hp, recipe, dev)?;
    let rope = Rope::new(hp, seqlen, DType::F32, dev)?.with_compute(c);
    let x = Tensor::randn(0f32, 1.0, (1, seqlen, e), dev)?;
    let t1 = Tensor::randn(0f32, 1.0, (1, seqlen, e), dev)?;
    let t2 = Tensor::randn(0f32, 1.0, (1, seqlen, e), dev)?;
    let mut opt = Optimizers::new(
        recipe,
        c,
        linears.iter().flat_map(TrainLinear::lwc_vars).collect(),
        linears.iter().flat_map(TrainLinear::lora_vars).collect(),
    )?;
    let mut step = |index: usize| -> Result<()> {
        let at = StepAt {
            layer: 0,
            epoch: 0,
            index,
        };
        opt.step(0..1, coll, at, &mut |_, _, _| {}, &mut |_, opt| {
            bw_window(
                hp,
                &rope,
                &norms,
                &recipe.quant,
                &linears,
                &x,
                &[&t1, &t2],
                opt,
            )
        })
    };
    for i in 0..warmup {
        step(i)?;
    }
    dev.synchronize()?;
    coll.all_reduce_sum(&mut [])?;
    reset_peak(dev)?;
    let t = Instant::now();
    for i in 0..steps {
        step(i)?;
    }
    dev.synchronize()?;
    let s = t.elapsed().as_secs_f64() / steps as f64;
    Ok(StepTiming {
        ms_per_step: s * 1e3,
        tokens_per_s: (seqlen * coll.world()) as f64 / s,
        steps,
        peak_bytes: peak(dev)?,
    })
}

#[cfg(feature = "cuda")]
fn reset_peak(dev: &Device) -> Result<()> {
    if let Device::Cuda(d) = dev {
        crate::cuda::reset_peak_memory(d)?;
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn peak(dev: &Device) -> Result<Option<u64>> {
    Ok(match dev {
        Device::Cuda(d) => Some(crate::cuda::peak_memory(d)?),
        _ => None,
    })
}

#[cfg(not(feature = "cuda"))]
fn reset_peak(_: &Device) -> Result<()> {
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn peak(_: &Device) -> Result<Option<u64>> {
    Ok(None)
}
