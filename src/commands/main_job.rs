//! The main job: `apiq2gguf MODEL OUT.gguf`, a plain conversion (`--type`) or an ApiQ
//! calibration with its report.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::apiq::recipe::Method;
use crate::cli::{CalibCli, Cli, ConvertArgs};
use crate::report::Progress;
use crate::{device, export, output_check, pipeline, source};

/// Converts MODEL (`--type`) or calibrates it, as the arguments say.
pub fn run(a: ConvertArgs, progress: &Progress) -> Result<()> {
    let (Some(model), Some(dest)) = (a.model, a.out) else {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "give MODEL and OUT.gguf, or a subcommand",
            )
            .exit();
    };
    match a.out_type {
        Some(ty) => {
            output_check::file(&dest)?;
            let src = source::ModelSource::open(&model, a.tokenizer_pre.as_deref())?;
            let w = export::model::convert(&src, &dest, ty, progress)?;
            eprintln!(
                "wrote {} ({} tensors, {})",
                dest.display(),
                w.n_tensors,
                mib(w.bytes)
            );
        }
        None => calibrate(&a.calib, model, dest, a.tokenizer_pre, progress)?,
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn calibrate(
    c: &CalibCli,
    model: PathBuf,
    out: PathBuf,
    tokenizer_pre: Option<String>,
    progress: &Progress,
) -> Result<()> {
    check_calibration_outputs(c, &out)?;
    // Inputs are checked before the banner: a bad model fails with its own one-line error, and
    // so does a --tensor-type the model's tensors cannot take.
    let src = source::ModelSource::open(&model, tokenizer_pre.as_deref())?;
    c.export().check_overrides(&src.tensors())?;
    drop(src);
    let devices = if c.devices.is_empty() {
        vec![device::parse(&c.device, c.cuda_matmul)?]
    } else {
        device::parse_list(&c.devices, c.cuda_matmul)?
    };
    let compute = c.compute(devices[0].is_cuda());
    let args = pipeline::CalibrateArgs {
        recipe: c.recipe(compute)?,
        compute,
        export: c.export(),
        calib_files: c.calib.clone(),
        calib_max_bytes: c.calib_max_bytes,
        devices,
        baselines: c.baselines,
        tokenizer_pre,
        model,
        out,
    };
    let r = &args.recipe;
    args.export.format.check(&r.quant)?;
    let groups = format!(
        "{}-bit g{} {}",
        r.quant.bits,
        r.quant.group_size,
        if r.quant.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        }
    );
    let grid = match (r.frozen_base, r.quant.kgrid) {
        (Some(f), _) => format!(
            "ggml's {f} with the importance matrix of the quantized chain, frozen (rows of no whole super-block: llama-quantize's fallback)"
        ),
        (None, Some(k)) => format!(
            "rows of whole 256-value super-blocks through {}'s grid ({}-bit {}, sub-blocks of {}, clipping from {}), the others {groups}",
            k.name(),
            k.bits(),
            if k.symmetric() { "symmetric" } else { "asymmetric" },
            k.sub_len(),
            match r.k_init {
                crate::quant::KInit::Ggml => "ggml's quantizer with the chain's importance matrix",
                crate::quant::KInit::Lwc => "lwc",
            },
        ),
        (None, None) => groups,
    };
    let mix = args.export.format != crate::pack::Format::F16
        && (args.export.format.kgrid().is_some() || args.export.format.frozen());
    let grid = if mix && !args.export.pure {
        format!(
            "{grid}; llama-quantize's mixture for {} (some linears in more bits, each through its own type; --pure: none)",
            args.export.format.name()
        )
    } else {
        grid
    };
    eprintln!(
        "calibrating {} with {} into {}: {grid}, {}, {} windows x {} tokens{}, {} epochs, seed {}, {} ({}{})",
        args.model.display(),
        clap::ValueEnum::to_possible_value(&r.method).map_or_else(String::new, |v| v.get_name().to_string()),
        args.export.format.name(),
        r.lora.map_or("no LoRA".to_string(), |l| format!("LoRA r{} alpha {}", l.rank, l.alpha)),
        r.nsamples,
        r.seqlen,
        if r.batch == 1 { String::new() } else { format!(" in steps of {}", r.batch) },
        r.epochs,
        r.seed,
        if c.devices.is_empty() { c.device.clone() } else { format!("devices {}", c.devices.join(",")) },
        compute.precision.name(),
        if compute.fused { ", fused kernels" } else { "" },
    );
    let s = pipeline::calibrate(&args, progress, &mut |b, n| {
        let loss = match (b.loss_first, b.loss_last) {
            (Some(a), Some(z)) => format!("epoch-mean loss {a:.3e} -> {z:.3e}"),
            _ if b.resumed => "resumed".to_string(),
            _ => "no training".to_string(),
        };
        eprintln!(
            "[{:>3}/{n}] blk.{:<3} {loss}  mse {:.3e} (rtn {:.3e})  {:.1} s",
            b.layer + 1,
            b.layer,
            b.mse_final,
            b.mse_rtn,
            b.seconds()
        );
    })?;
    let mut out = std::io::stdout().lock();
    let label = match (r.method, r.lora) {
        (Method::Rtn, _) => "rtn",
        (_, None) => "lwc-only",
        (Method::ApiqLw, _) => "apiq-lw",
        (Method::ApiqBw, _) => "apiq-bw",
    };
    writeln!(out, "block  mse_rtn     mse_lwc     mse_{label}")?;
    for b in &s.blocks {
        let lwc = b.mse_lwc.map_or("-".to_string(), |v| format!("{v:.4e}"));
        writeln!(
            out,
            "{:>5}  {:.4e}  {:>10}  {:.4e}",
            b.layer, b.mse_rtn, lwc, b.mse_final
        )?;
    }
    let w = &s.written;
    for (p, b) in [Some(&w.base), w.twin.as_ref(), w.adapter.as_ref()]
        .into_iter()
        .flatten()
    {
        eprintln!("wrote {} ({})", p.display(), mib(*b));
    }
    eprintln!("wrote {}", w.modelfile.display());
    let t = &w.summary;
    let list = |v: &[(&str, usize)]| {
        v.iter()
            .map(|(n, c)| format!("{c} {}", n.to_lowercase()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "{}: {} tensors ({}); linears {} at {:.2} bpw, whole file {:.2} bpw{}",
        w.base.0.display(),
        t.tensors.iter().map(|(_, c)| c).sum::<usize>(),
        list(&t.tensors),
        list(&t.linears),
        t.linear_bpw(),
        w.base.1 as f64 * 8.0 / t.weights.max(1) as f64,
        w.adapter.as_ref().map_or(String::new(), |(_, b)| format!(
            " (adapter {} beside it)",
            mib(*b)
        )),
    );
    let fallbacks = &t.fallbacks;
    if !fallbacks.is_empty() {
        let n: usize = t.linears.iter().map(|(_, c)| c).sum();
        let format = args.export.format.name();
        let why = if args.export.format.kgrid().is_some() {
            "K types need rows of whole 256-value super-blocks: the other rows trained on the \
             groups and fell back as llama-quantize does; linears ApiQ cannot quantize stay f16"
        } else if args.export.format.frozen() {
            "its types need rows of whole 256-value super-blocks: the other rows fell back as \
             llama-quantize does"
        } else {
            "linears whose inputs are not whole groups cannot be quantized and stay f16"
        };
        eprintln!(
            "warning: --format {format} stored {} of {n} linears in other types: {} ({why})",
            fallbacks.iter().map(|(_, c)| c).sum::<usize>(),
            list(fallbacks)
        );
    }
    if let Some(d) = &w.peft {
        eprintln!("wrote PEFT adapter and base to {}", d.display());
    }
    if w.mapping.n > 0 && w.mapping.sum_sq > 0.0 {
        eprintln!(
            "{} fallback rows added to the calibrated weights: rmse {:.3e}, relative {:.3e}, max {:.3e} over {} values",
            args.export.format.name(),
            w.mapping.rmse(),
            w.mapping.relative(),
            w.mapping.max_abs,
            w.mapping.n
        );
    }
    eprintln!("calibration took {:.1} s", s.seconds);
    let mut phases = crate::phases::Phases::default();
    for b in &s.blocks {
        phases.add(&b.phases);
    }
    eprintln!("time per phase, all blocks: {}", phases.line());
    Ok(())
}

/// Every path a calibration writes, before any work (nothing is created when one fails).
fn check_calibration_outputs(c: &CalibCli, out: &std::path::Path) -> Result<()> {
    use crate::export::calibrated::{adapter_path, modelfile_path, twin_path};
    output_check::file(out)?;
    if !c.no_lora && c.method != Method::Rtn {
        output_check::file(&adapter_path(out))?;
    }
    if c.f16_twin {
        output_check::file(&twin_path(out))?;
    }
    output_check::file(&modelfile_path(out))?;
    output_check::folder(&crate::apiq::state::dir_for(out))?;
    if let Some(p) = &c.peft {
        output_check::folder(p)?;
    }
    Ok(())
}
