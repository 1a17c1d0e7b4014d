//! Calibration end to end, block by block:
//! source → calibration windows → block-0 inputs → for each block { FP targets, train (or
//! replay the saved state), requantize, advance the quantized chain, stream the block to OUT
//! and its LoRA to OUT.lora.gguf } → outputs appear, resume state removed.
//!
//! Only the current block's weights and the activation caches (`[N, L, E]` each: FP chain,
//! quantized chain, targets) live on the device; the model stays on disk.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::apiq::recipe::Recipe;
use crate::apiq::state::State;
use crate::apiq::train;
use crate::calib::{data, load};
use crate::export::calibrated::{calib_hash, CalibratedWriter, ExportOptions, Written};
use crate::nn::block::Rope;
use crate::report::Progress;
use crate::source::ModelSource;

pub struct CalibrateArgs {
    pub model: PathBuf,
    pub out: PathBuf,
    pub recipe: Recipe,
    pub export: ExportOptions,
    pub calib_files: Vec<PathBuf>,
    pub calib_max_bytes: Option<usize>,
    pub device: Device,
    /// Also train an LWC-only copy of each block on the same inputs, for the closing table.
    pub baselines: bool,
    pub tokenizer_pre: Option<String>,
}

/// One block's row of the closing table.
#[derive(Debug, Clone)]
pub struct BlockReport {
    pub layer: usize,
    pub mse_rtn: f64,
    pub mse_lwc: Option<f64>,
    pub mse_final: f64,
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
    pub seconds: f64,
    pub resumed: bool,
}

pub struct Summary {
    pub blocks: Vec<BlockReport>,
    pub written: Written,
    pub seconds: f64,
}

const DTYPE: DType = DType::F32;

pub fn calibrate(
    a: &CalibrateArgs,
    progress: &Progress,
    on_block: &mut dyn FnMut(&BlockReport, usize),
) -> Result<Summary> {
    let started = Instant::now();
    let r = &a.recipe;
    let src = ModelSource::open(&a.model, a.tokenizer_pre.as_deref())?;
    let hp = load::hparams(&src)?;
    let dev = &a.device;
    let seqlen = r.seqlen.min(hp.n_ctx_train.max(1));

    let text = data::read_text(&data::resolve_files(&a.calib_files)?, a.calib_max_bytes)?;
    let tokens = data::tokenize(&src, &text)?;
    let windows = data::windows(&tokens, r.nsamples, seqlen, r.seed)?;
    let hash = calib_hash(&windows.concat());
    let fingerprint = serde_json::to_string_pretty(&serde_json::json!({
        "model": a.model.canonicalize().unwrap_or_else(|_| a.model.clone()),
        "recipe": r,
        "calibration": hash,
        "seqlen": seqlen,
    }))?;
    let state = State::open(&a.out, &fingerprint)?;

    // Block-0 inputs: the embeddings of each window, [1, L, E].
    let embed = load::embedding(&src, DTYPE, dev)?;
    let mut fp_in: Vec<Tensor> = windows
        .iter()
        .map(|w| {
            let ids = Tensor::from_slice(w, (1, w.len()), dev)?;
            embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((1, w.len(), hp.n_embd))
        })
        .collect::<candle_core::Result<_>>()?;
    drop(embed);
    let mut q_in = fp_in.clone();
    let rope = Rope::new(&hp, seqlen, DTYPE, dev)?;

    let mut writer = CalibratedWriter::create(&src, &a.out, r, &a.export, hp.n_layer, &hash)?;
    let mut reports = Vec::with_capacity(hp.n_layer);
    for layer in 0..hp.n_layer {
        let t0 = Instant::now();
        let bw = load::block(&src, &hp, layer, DTYPE, dev)?;
        let ctx = || format!("block {layer}");
        let fp_out: Vec<Tensor> = fp_in
            .iter()
            .map(|x| bw.forward_fp(&hp, &rope, x))
            .collect::<candle_core::Result<_>>()
            .with_context(ctx)?;
        let mut losses: Vec<f64> = Vec::new();
        let data = train::BlockData {
            hp: &hp,
            rope: &rope,
            bw: &bw,
            layer,
            fp_in: &fp_in,
            q_in: &q_in,
            fp_out: &fp_out,
        };
        let saved = state.load(layer)?;
        let resumed = saved.is_some();
        let learned = match saved {
            Some(l) => l,
            None if !r.trains() => train::rtn_learned(),
            None => {
                let bar = progress.bar((r.epochs * q_in.len()) as u64, "calibrating");
                bar.set_message(format!("blk.{layer}"));
                let mut obs = |_e: usize, _j: usize, loss: f64| {
                    losses.push(loss);
                    bar.set_message(format!("blk.{layer} loss {loss:.3e}"));
                    bar.inc(1);
                };
                let learned =
                    train::train(r, &data, r.lora.is_some(), &mut obs).with_context(ctx)?;
                bar.finish_and_clear();
                state.save(layer, &learned)?;
                learned
            }
        };
        let linears = train::finalize(r, &bw, &learned).with_context(ctx)?;
        let mse_final = train::output_mse(&hp, &rope, &bw, &linears, &q_in, &fp_out)?;
        let rtn = train::finalize(
            &Recipe {
                lora: None,
                ..r.clone()
            },
            &bw,
            &train::rtn_learned(),
        )?;
        let mse_rtn = train::output_mse(&hp, &rope, &bw, &rtn, &q_in, &fp_out)?;
        let mse_lwc = if a.baselines && r.trains() && r.lora.is_some() {
            let lwc_recipe = Recipe {
                lora: None,
                ..r.clone()
            };
            let learned = train::train(&lwc_recipe, &data, false, &mut |_, _, _| {})?;
            let lin = train::finalize(&lwc_recipe, &bw, &learned)?;
            Some(train::output_mse(&hp, &rope, &bw, &lin, &q_in, &fp_out)?)
        } else {
            None
        };
        // Advance both chains: the quantized one with the final block, LoRA included.
        q_in = q_in
            .iter()
            .map(|x| crate::apiq::qblock::forward_final(&hp, &rope, &bw.norms, &linears, x))
            .collect::<candle_core::Result<_>>()?;
        fp_in = fp_out;
        writer.write_block(layer, &linears)?;
        let report = BlockReport {
            layer,
            mse_rtn,
            mse_lwc,
            mse_final,
            loss_first: losses.first().copied(),
            loss_last: losses.last().copied(),
            seconds: t0.elapsed().as_secs_f64(),
            resumed,
        };
        on_block(&report, hp.n_layer);
        reports.push(report);
    }
    let written = writer.finish()?;
    state.remove()?;
    Ok(Summary {
        blocks: reports,
        written,
        seconds: started.elapsed().as_secs_f64(),
    })
}
