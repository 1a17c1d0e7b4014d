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

use crate::apiq::block_forward::BlockForward;
use crate::apiq::collective::{Collective, Solo};
use crate::apiq::parallel::run_ranks;
use crate::apiq::qblock::{FinalLinear, Learned};
use crate::apiq::recipe::{Method, Recipe};
use crate::apiq::state::{Diagnostics, State};
use crate::apiq::train;
use crate::calib::data;
use crate::calib::load::{self, shape};
use crate::export::calibrated::{calib_hash, CalibratedWriter, ExportOptions, HostLinear, Written};
use crate::nn::block::Rope;
use crate::nn::compute::Compute;
use crate::nn::model::BlockWeights;
use crate::phases::{Phase, Phases};
use crate::report::Progress;
use crate::source::ModelSource;

pub struct CalibrateArgs {
    pub model: PathBuf,
    pub out: PathBuf,
    pub recipe: Recipe,
    pub export: ExportOptions,
    pub calib_files: Vec<PathBuf>,
    pub calib_max_bytes: Option<usize>,
    /// One device, or one per rank of a data-parallel calibration (the windows of each step
    /// shared out evenly).
    pub devices: Vec<Device>,
    /// Precision and kernels of the training (the recipe holds the precision too).
    pub compute: Compute,
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
    /// Mean training loss of the first and of the last epoch.
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
    pub resumed: bool,
    /// Where the block's time went.
    pub phases: Phases,
}

impl BlockReport {
    /// The block's wall time: its phases cover it from start to hand-over.
    pub fn seconds(&self) -> f64 {
        self.phases.seconds.iter().sum()
    }
}

pub struct Summary {
    pub blocks: Vec<BlockReport>,
    pub written: Written,
    pub seconds: f64,
}

const DTYPE: DType = DType::F32;

/// Windows (of each rank) the RTN and LWC-only MSEs of the block table are taken over.
pub const DIAGNOSTIC_WINDOWS: usize = 8;

/// Mean loss of the first (or last) epoch of `per_epoch` steps, summed over the groups trained
/// one after the other (ApiQ-lw; ApiQ-bw has one); with one epoch, of its first (or last)
/// quarter. Single steps see different windows, so only means show the trend.
fn smoothed(groups: &[Vec<f64>], per_epoch: usize, first: bool) -> Option<f64> {
    if groups.is_empty() {
        return None;
    }
    groups.iter().map(|g| epoch_mean(g, per_epoch, first)).sum()
}

fn epoch_mean(losses: &[f64], per_epoch: usize, first: bool) -> Option<f64> {
    if losses.is_empty() {
        return None;
    }
    let n = if losses.len() >= 2 * per_epoch.max(1) {
        per_epoch.max(1)
    } else {
        (losses.len() / 4).max(1)
    };
    let part = if first {
        &losses[..n]
    } else {
        &losses[losses.len() - n..]
    };
    Some(part.iter().sum::<f64>() / n as f64)
}

pub fn calibrate(
    a: &CalibrateArgs,
    progress: &Progress,
    on_block: &mut dyn FnMut(&BlockReport, usize),
) -> Result<Summary> {
    let started = Instant::now();
    let r = &a.recipe;
    let src = ModelSource::open(&a.model, a.tokenizer_pre.as_deref())?;
    let hp = load::hparams(&src)?;
    let seqlen = r.seqlen.min(hp.n_ctx_train.max(1));

    let text = data::read_text(&data::resolve_files(&a.calib_files)?, a.calib_max_bytes)?;
    let tokens = data::tokenize(&src, &text)?;
    let windows = data::windows(&tokens, r.nsamples, seqlen, r.seed)?;
    train::steps_per_epoch(windows.len(), r.batch)?;
    train::rank_batch(r.batch, a.devices.len())?;
    let hash = calib_hash(&windows.concat());
    let fingerprint = serde_json::to_string_pretty(&serde_json::json!({
        "model": a.model.canonicalize().unwrap_or_else(|_| a.model.clone()),
        "recipe": r,
        "calibration": hash,
        "seqlen": seqlen,
        "fused_kernels": a.compute.fused,
        // The type of each linear decides the grid it trains through.
        "format": a.export.format.name(),
        "pure": a.export.pure,
        "tensor_types": a.export.tensor_types.iter().map(|t| format!("{}={}", t.pattern, t.ty)).collect::<Vec<_>>(),
    }))?;
    let state = State::open(&a.out, &fingerprint)?;
    let run = Run {
        a,
        src: &src,
        hp: &hp,
        seqlen,
        windows: &windows,
        hash: &hash,
        state: &state,
    };
    let world = a.devices.len();
    let blocks = if world == 1 {
        run.rank(&Solo, &a.devices[0], Some((progress, on_block)))?
    } else {
        let devices = &a.devices;
        let first = |c: &dyn Collective| run.rank(c, &devices[0], Some((progress, on_block)));
        let other = |c: &dyn Collective, rank: usize| run.rank(c, &devices[rank], None);
        run_ranks(devices, first, other)?.0
    };
    let (reports, written) = blocks.expect("rank 0 writes the outputs");
    state.remove()?;
    crate::atomic::set_interrupt_note(None);
    Ok(Summary {
        blocks: reports,
        written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Rank 0's progress bars and its callback after each block.
type Ui<'a> = (&'a Progress, &'a mut dyn FnMut(&BlockReport, usize));

/// What rank 0 returns: the block reports and what was written.
type RankOutput = Option<(Vec<BlockReport>, Written)>;

/// What every rank shares: the source, the windows, the resume state.
struct Run<'a> {
    a: &'a CalibrateArgs,
    src: &'a ModelSource,
    hp: &'a crate::nn::hparams::HParams,
    seqlen: usize,
    windows: &'a [Vec<u32>],
    hash: &'a str,
    state: &'a State,
}

impl Run<'_> {
    /// One rank's calibration on `dev`, over its shard of the windows; rank 0 (`ui` set)
    /// also reports, saves the resume state and writes the outputs.
    fn rank(&self, c: &dyn Collective, dev: &Device, mut ui: Option<Ui>) -> Result<RankOutput> {
        let (a, hp, state) = (self.a, self.hp, self.state);
        let r = &a.recipe;
        let shard = train::shard(self.windows.len(), r.batch, c.rank(), c.world())?;
        let windows: Vec<Vec<u32>> = shard.iter().map(|&j| self.windows[j].clone()).collect();
        let state_dir = crate::apiq::state::dir_for(&a.out);
        let note = |saved: usize| {
            crate::atomic::set_interrupt_note(Some(format!(
                "interrupted: {saved} of {} blocks saved in {}; run the same command again to resume",
                hp.n_layer,
                state_dir.display()
            )));
        };
        if ui.is_some() {
            note((0..hp.n_layer).take_while(|&l| state.has(l)).count());
        }

        let mut fp_in = load::embed_windows(self.src, hp, &windows, DTYPE, dev)?;
        let mut q_in = fp_in.clone();
        let rope = Rope::new(hp, self.seqlen, DTYPE, dev)?.with_compute(a.compute);

        let writer = match ui {
            Some(_) => Some(CalibratedWriter::create(
                self.src,
                &a.out,
                r,
                &a.export,
                shape(hp),
                self.hash,
            )?),
            None => None,
        };
        std::thread::scope(|scope| -> Result<RankOutput> {
            // The writer thread saves each trained block's resume state, then packs and
            // writes the block, while the next block trains; one block may wait in the
            // channel. The outputs are finished only on `Done`: a run that fails leaves none.
            let (tx, rx) = std::sync::mpsc::sync_channel::<ToWriter>(1);
            let mut writing = writer.map(|mut w| {
                let note = &note;
                scope.spawn(move || -> Result<Option<Written>> {
                    for msg in rx {
                        let f = match msg {
                            ToWriter::Block(f) => f,
                            ToWriter::Done => return w.finish().map(Some),
                        };
                        if let Some(learned) = &f.learned {
                            state.save(f.layer, learned, &f.diagnostics)?;
                            note(f.layer + 1);
                        }
                        w.write_block(f.layer, &f.linears)?;
                    }
                    Ok(None)
                })
            });
            // The reader thread reads and dequantizes the next block while this one runs, and
            // for the group formats requantizes its RTN baseline on the host (unless the
            // block's state is saved: a replay reads its baselines back).
            let src = self.src;
            let rtn_ahead = !a.export.format.frozen() && a.export.format.kgrid().is_none();
            let read = |layer: usize| {
                scope.spawn(move || -> Result<Ahead> {
                    let host = load::read_block(src, hp, layer)?;
                    let rtn = if rtn_ahead && !state.has(layer) {
                        Some(train::rtn_group_linears(r, &host.linears_on_cpu()?)?)
                    } else {
                        None
                    };
                    Ok(Ahead { host, rtn })
                })
            };
            let mut next = (hp.n_layer > 0).then(|| read(0));
            let mut reports = Vec::with_capacity(hp.n_layer);
            for layer in 0..hp.n_layer {
                let mut clock = Phases::default();
                let ahead = joined(next.take().expect("read ahead"))?;
                next = (layer + 1 < hp.n_layer).then(|| read(layer + 1));
                let bw = ahead.host.upload(DTYPE, dev)?;
                let rtn = ahead
                    .rtn
                    .map(|ls| ls.into_iter().map(|l| l.to_device(dev)).collect())
                    .transpose()?;
                let progress = ui.as_ref().map(|(p, _)| *p);
                let chains = (&mut fp_in, &mut q_in);
                let (report, finished) = self
                    .block(
                        c,
                        dev,
                        &rope,
                        layer,
                        (bw, rtn),
                        chains,
                        &mut clock,
                        progress,
                    )
                    .with_context(|| format!("block {layer}"))?;
                if writing.is_some() && tx.send(ToWriter::Block(finished)).is_err() {
                    // The writer ended early: its error is the one to show.
                    let h = writing.take().expect("checked");
                    return Err(match joined(h) {
                        Err(e) => e,
                        Ok(_) => anyhow::anyhow!("the output writer stopped before the last block"),
                    });
                }
                clock.lap(Phase::Write);
                let report = BlockReport {
                    phases: clock,
                    ..report
                };
                if let Some((_, on_block)) = ui.as_mut() {
                    on_block(&report, hp.n_layer);
                }
                reports.push(report);
            }
            match writing {
                Some(h) => {
                    let sent = tx.send(ToWriter::Done);
                    match (joined(h)?, sent) {
                        (Some(written), Ok(())) => Ok(Some((reports, written))),
                        _ => anyhow::bail!("the output writer stopped before the last block"),
                    }
                }
                None => Ok(None),
            }
        })
    }

    /// One block: its frozen bases or K grids, the FP targets, training (or the saved state),
    /// the final linears, and both chains advanced to its outputs.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        c: &dyn Collective,
        dev: &Device,
        rope: &Rope,
        layer: usize,
        (mut bw, rtn): (BlockWeights, Option<Vec<FinalLinear>>),
        (fp_in, q_in): (&mut Vec<Tensor>, &mut Vec<Tensor>),
        clock: &mut Phases,
        progress: Option<&Progress>,
    ) -> Result<(BlockReport, Finished)> {
        let (a, hp, state) = (self.a, self.hp, self.state);
        let r = &a.recipe;
        let steps = self.windows.len() / r.batch;
        let name = |i: usize| format!("blk.{layer}.{}.weight", crate::nn::block::LINEARS[i]);
        if a.export.format.frozen() {
            bw.frozen = crate::apiq::frozen::freeze_block(hp, rope, &bw, q_in, |i, cols| {
                a.export.linear_type(&name(i), cols as u64, shape(hp)).1
            })?;
        } else if a.export.format.kgrid().is_some() {
            bw.kgrids = (0..bw.w.len())
                .map(|i| {
                    let cols = bw.w[i].dim(1)? as u64;
                    Ok(a.export.kgrid_of(&name(i), cols, shape(hp)))
                })
                .collect::<candle_core::Result<_>>()?;
            let starts_from_ggml = r.k_init == crate::quant::KInit::Ggml
                && r.trains()
                && !state.has(layer)
                && bw.kgrids.iter().any(Option::is_some);
            if starts_from_ggml {
                bw.imatrix = crate::apiq::imatrix::imatrix(hp, rope, &bw, q_in)?;
            }
        }
        clock.lap(Phase::Load);
        let fp_out = BlockForward::fp(hp, rope, &bw)?.forward_all(fp_in)?;
        if r.method != Method::ApiqLw {
            // Only ApiQ-lw trains on the FP chain's inputs: the others free them now, one
            // window cache fewer on the device while the block trains.
            *fp_in = Vec::new();
        }
        clock.lap(Phase::Targets);
        let mut losses: Vec<Vec<f64>> = Vec::new();
        let data = train::BlockData {
            hp,
            rope,
            bw: &bw,
            layer,
            fp_in,
            q_in,
            fp_out: &fp_out,
        };
        let saved = state.load(layer)?;
        let resumed = saved.is_some();
        let (learned, trained, saved_diagnostics) = match saved {
            Some(s) => (s.learned, false, s.diagnostics),
            None if !r.trains() => (train::rtn_learned(), false, None),
            None => {
                let bar = match progress {
                    Some(p) => p.bar((r.epochs * steps) as u64, "calibrating"),
                    None => indicatif::ProgressBar::hidden(),
                };
                bar.set_message(format!("blk.{layer}"));
                let mut epoch_sum = 0.0;
                let mut obs = |e: usize, j: usize, loss: f64| {
                    // ApiQ-lw trains its groups of linears one after the other, each from
                    // epoch 0: one list of losses per group.
                    if (e, j) == (0, 0) || losses.is_empty() {
                        losses.push(Vec::new());
                    }
                    losses.last_mut().expect("pushed").push(loss);
                    epoch_sum = if j == 0 { loss } else { epoch_sum + loss };
                    let mean = epoch_sum / (j + 1) as f64;
                    bar.set_message(format!(
                        "blk.{layer} epoch {}/{} mean loss {mean:.3e}",
                        e + 1,
                        r.epochs
                    ));
                    bar.inc(1);
                };
                let learned = train::train(r, &data, r.lora.is_some(), c, &mut obs)?;
                bar.finish_and_clear();
                (learned, true, None)
            }
        };
        clock.lap(Phase::Train);
        let linears = train::finalize(r, &bw, &learned)?;
        clock.lap(Phase::Finalize);
        let n = q_in.len();
        // The quantized chain through the final block (LoRA included) is also what the
        // block's final MSE measures: one forward for both.
        let q_out = BlockForward::deployed(hp, rope, &bw.norms, &linears)?.forward_all(q_in)?;
        let mse_final = c.mean(train::mean_mse(&q_out, &fp_out)?, n, dev)?;
        clock.lap(Phase::Chain);
        let diagnostics = match saved_diagnostics {
            // Every rank reads the same state, so all of them skip the collective means.
            Some(d) => d,
            None => self.diagnostics(c, dev, &data, rtn)?,
        };
        clock.lap(Phase::Diagnostics);
        // Advance both chains.
        *q_in = q_out;
        *fp_in = fp_out;
        let linears = linears
            .into_iter()
            .map(HostLinear::of)
            .collect::<Result<Vec<_>>>()?;
        let report = BlockReport {
            layer,
            mse_rtn: diagnostics.mse_rtn,
            mse_lwc: diagnostics.mse_lwc,
            mse_final,
            loss_first: smoothed(&losses, steps, true),
            loss_last: smoothed(&losses, steps, false),
            resumed,
            phases: Phases::default(),
        };
        let finished = Finished {
            layer,
            learned: trained.then_some(learned),
            diagnostics,
            linears,
        };
        Ok((report, finished))
    }

    /// The baselines' MSEs: RTN, and LWC-only with `--baselines`. They are estimates over the
    /// first windows: a forward of every window for a diagnostic would cost as much as the
    /// chain itself.
    fn diagnostics(
        &self,
        c: &dyn Collective,
        dev: &Device,
        data: &train::BlockData,
        rtn: Option<Vec<FinalLinear>>,
    ) -> Result<Diagnostics> {
        let (a, r) = (self.a, &self.a.recipe);
        let (hp, rope, bw) = (data.hp, data.rope, data.bw);
        let (q_in, fp_out) = (data.q_in, data.fp_out);
        let d = q_in.len().min(DIAGNOSTIC_WINDOWS);
        let mse = |linears: &[FinalLinear]| -> Result<f64> {
            let local = train::output_mse(hp, rope, bw, linears, &q_in[..d], &fp_out[..d])?;
            c.mean(local, d, dev)
        };
        let mse_rtn = match rtn {
            Some(linears) => mse(&linears)?,
            None => mse(&train::rtn_linears(r, bw)?)?,
        };
        let mse_lwc = if a.baselines && r.trains() && r.lora.is_some() && bw.frozen.is_empty() {
            let lwc_recipe = Recipe {
                lora: None,
                ..r.clone()
            };
            let learned = train::train(&lwc_recipe, data, false, c, &mut |_, _, _| {})?;
            Some(mse(&train::finalize(&lwc_recipe, bw, &learned)?)?)
        } else {
            None
        };
        Ok(Diagnostics { mse_rtn, mse_lwc })
    }
}

/// What the reader thread prepares for a block: its tensors, and for the group formats its
/// RTN baseline's linears on the host.
struct Ahead {
    host: load::HostBlock,
    rtn: Option<Vec<FinalLinear>>,
}

/// A finished block on its way to the writer thread.
struct Finished {
    layer: usize,
    /// What was learned, to be saved for a resume (`None`: replayed or untrained).
    learned: Option<Vec<Learned>>,
    /// Saved with `learned`, so that a replay of the block skips them.
    diagnostics: Diagnostics,
    linears: Vec<HostLinear>,
}

enum ToWriter {
    Block(Finished),
    /// Every block was sent: finish the outputs.
    Done,
}

/// A helper thread's result; its panic goes on in this thread.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    match h.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
