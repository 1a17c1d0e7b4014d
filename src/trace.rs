//! Faithfulness A/B, our half: one block of a real model, its calibration inputs and FP targets
//! and its initial LoRA A written out for a second implementation (`scripts/ab_torch_step.py`,
//! the released code's step in PyTorch), then the block trained with our step, every step's
//! loss and the final block-output MSE written beside them.
//!
//! The block's inputs are the FP model's (blocks before it unquantized), so both sides start
//! from identical tensors; with the aug loss the second target then equals the first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::apiq::recipe::Recipe;
use crate::apiq::train;
use crate::calib::{data, load};
use crate::nn::block::{Rope, LINEARS};
use crate::nn::compute::Compute;
use crate::source::ModelSource;

pub struct TraceArgs {
    pub model: PathBuf,
    pub layer: usize,
    pub dir: PathBuf,
    pub recipe: Recipe,
    pub compute: Compute,
    pub calib_files: Vec<PathBuf>,
    pub calib_max_bytes: Option<usize>,
    pub device: Device,
}

pub struct Trace {
    pub losses: Vec<f64>,
    pub mse_final: f64,
    pub mse_rtn: f64,
    pub seconds: f64,
}

pub fn run(a: &TraceArgs) -> Result<Trace> {
    let r = &a.recipe;
    let dev = &a.device;
    let src = ModelSource::open(&a.model, None)?;
    let hp = load::hparams(&src)?;
    anyhow::ensure!(
        a.layer < hp.n_layer,
        "--layer {} but the model has {} blocks",
        a.layer,
        hp.n_layer
    );
    let seqlen = r.seqlen.min(hp.n_ctx_train.max(1));
    let text = data::read_text(&data::resolve_files(&a.calib_files)?, a.calib_max_bytes)?;
    let tokens = data::tokenize(&src, &text)?;
    let windows = data::windows(&tokens, r.nsamples, seqlen, r.seed)?;
    let mut x = load::embed_windows(&src, &hp, &windows, DType::F32, dev)?;
    // Inputs and targets in f32 with candle's ops, whatever the step computes in: both sides
    // of the A/B, and runs of either precision, see the same tensors.
    let reference = Rope::new(&hp, seqlen, DType::F32, dev)?;
    let rope = Rope::new(&hp, seqlen, DType::F32, dev)?.with_compute(a.compute);
    for layer in 0..a.layer {
        let bw = load::block(&src, &hp, layer, DType::F32, dev)?;
        x = x
            .iter()
            .map(|t| bw.forward_fp(&hp, &reference, t))
            .collect::<candle_core::Result<_>>()?;
    }
    let bw = load::block(&src, &hp, a.layer, DType::F32, dev)?;
    let target: Vec<Tensor> = x
        .iter()
        .map(|t| bw.forward_fp(&hp, &reference, t))
        .collect::<candle_core::Result<_>>()?;

    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, w) in LINEARS.iter().zip(&bw.w) {
        tensors.insert(format!("{name}.weight"), w.clone());
    }
    tensors.insert("attn_norm.weight".into(), bw.norms.attn_norm.clone());
    tensors.insert("ffn_norm.weight".into(), bw.norms.ffn_norm.clone());
    tensors.insert("x".into(), Tensor::cat(&x, 0)?);
    tensors.insert("target".into(), Tensor::cat(&target, 0)?);
    // The LoRA A each linear starts from (B starts at zero, γ = β = 4).
    let init = train::new_linears(r, &bw, a.layer, r.lora.is_some())?;
    for (name, l) in LINEARS.iter().zip(&init) {
        if let Some(lora) = &l.lora {
            tensors.insert(format!("{name}.lora_a"), lora.a.as_tensor().clone());
        }
    }
    drop(init);
    candle_core::safetensors::save(&tensors, a.dir.join("block.safetensors"))?;
    drop(tensors);
    write_config(a, &hp, seqlen)?;

    let t0 = std::time::Instant::now();
    let mut losses = Vec::with_capacity(r.epochs * x.len());
    let data = train::BlockData {
        hp: &hp,
        rope: &rope,
        bw: &bw,
        layer: a.layer,
        fp_in: &x,
        q_in: &x,
        fp_out: &target,
    };
    let learned = train::train(
        r,
        &data,
        r.lora.is_some(),
        &crate::apiq::collective::Solo,
        &mut |_: usize, _: usize, l: f64| losses.push(l),
    )?;
    dev.synchronize()?;
    let seconds = t0.elapsed().as_secs_f64();
    let linears = train::finalize(r, &bw, &learned)?;
    let mse_final = train::output_mse(&hp, &reference, &bw, &linears, &x, &target)?;
    let rtn = train::rtn_linears(r, &bw)?;
    let mse_rtn = train::output_mse(&hp, &reference, &bw, &rtn, &x, &target)?;
    let trace = Trace {
        losses,
        mse_final,
        mse_rtn,
        seconds,
    };
    write_result(&a.dir, a.compute, &trace)?;
    Ok(trace)
}

fn write_config(a: &TraceArgs, hp: &crate::nn::hparams::HParams, seqlen: usize) -> Result<()> {
    let r = &a.recipe;
    let cfg = serde_json::json!({
        "layer": a.layer,
        "n_embd": hp.n_embd,
        "n_ff": hp.n_ff,
        "n_head": hp.n_head,
        "n_head_kv": hp.n_head_kv,
        "head_dim": hp.head_dim,
        "rms_eps": hp.rms_eps,
        "rope_base": hp.rope_base,
        "rope": format!("{:?}", hp.rope),
        "rope_factors": hp.rope_factors,
        "seqlen": seqlen,
        "recipe": r,
    });
    std::fs::write(
        a.dir.join("config.json"),
        serde_json::to_string_pretty(&cfg)?,
    )?;
    Ok(())
}

fn write_result(dir: &Path, c: Compute, t: &Trace) -> Result<()> {
    let v = serde_json::json!({
        "implementation": "apiq2gguf",
        "precision": c.precision.name(),
        "fused_kernels": c.fused,
        "losses": t.losses,
        "mse_final": t.mse_final,
        "mse_rtn": t.mse_rtn,
        "train_seconds": t.seconds,
    });
    std::fs::write(
        dir.join(format!("ours-{}.json", c.precision.name())),
        serde_json::to_string(&v)?,
    )?;
    Ok(())
}
