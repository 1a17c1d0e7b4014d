use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use std::path::PathBuf;

use apiq2gguf::apiq::recipe::Method;
use apiq2gguf::cli::{CalibCli, Cli, Command};
use apiq2gguf::report::Progress;
use apiq2gguf::runtime::{self, perplexity, Runtime};
use apiq2gguf::{device, export, gguf, inspect, output_check, pipeline, source};

fn main() -> ExitCode {
    // candle puts a captured backtrace into its error text when RUST_BACKTRACE is set; errors
    // here are for users and stay one line.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// llama.cpp for perplexity, generate, bench and eval, placed as `offload` says.
fn start_runtime(verbose: bool, offload: &apiq2gguf::cli::Offload) -> Result<Runtime> {
    Runtime::init(verbose)?
        .with_gpu_layers(offload.gpu_layers)?
        .with_no_repack(offload.no_repack)
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
    // Inputs are checked before the banner: a bad model fails with its own one-line error.
    source::ModelSource::open(&model, tokenizer_pre.as_deref())?;
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
    eprintln!(
        "calibrating {} with {} into {}: {}-bit g{} {}, {}, {} windows x {} tokens{}, {} epochs, seed {}, {} ({}{})",
        args.model.display(),
        clap::ValueEnum::to_possible_value(&r.method).map_or_else(String::new, |v| v.get_name().to_string()),
        args.export.format.name(),
        r.quant.bits,
        r.quant.group_size,
        if r.quant.symmetric { "symmetric" } else { "asymmetric" },
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
            b.seconds
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
    let fallbacks = t.fallbacks();
    if !fallbacks.is_empty() {
        let n: usize = t.linears.iter().map(|(_, c)| c).sum();
        let format = args.export.format.name();
        let why = if format == "q2_k" {
            "q2_k needs rows that are multiples of 256; linears ApiQ cannot quantize stay f16"
        } else {
            "linears whose inputs are not whole groups cannot be quantized and stay f16"
        };
        eprintln!(
            "warning: --format {format} stored {} of {n} linears in other types: {} ({why})",
            fallbacks.iter().map(|(_, c)| c).sum::<usize>(),
            list(&fallbacks)
        );
    }
    if let Some(d) = &w.peft {
        eprintln!("wrote PEFT adapter and base to {}", d.display());
    }
    if w.mapping.n > 0 && w.mapping.sum_sq > 0.0 {
        eprintln!(
            "{} added to the calibrated weights: rmse {:.3e}, relative {:.3e}, max {:.3e} over {} values",
            args.export.format.name(),
            w.mapping.rmse(),
            w.mapping.relative(),
            w.mapping.max_abs,
            w.mapping.n
        );
    }
    eprintln!("calibration took {:.1} s", s.seconds);
    Ok(())
}

/// Every path a calibration writes, before any work (nothing is created when one fails).
fn check_calibration_outputs(c: &CalibCli, out: &std::path::Path) -> Result<()> {
    use apiq2gguf::export::calibrated::{adapter_path, modelfile_path, twin_path};
    output_check::file(out)?;
    if !c.no_lora && c.method != Method::Rtn {
        output_check::file(&adapter_path(out))?;
    }
    if c.f16_twin {
        output_check::file(&twin_path(out))?;
    }
    output_check::file(&modelfile_path(out))?;
    output_check::folder(&apiq2gguf::apiq::state::dir_for(out))?;
    if let Some(p) = &c.peft {
        output_check::folder(p)?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let progress = Progress::new(cli.quiet);
    let mut out = std::io::stdout().lock();
    match cli.command {
        None => {
            let a = cli.convert;
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
                    let w = export::model::convert(&src, &dest, ty, &progress)?;
                    eprintln!(
                        "wrote {} ({} tensors, {})",
                        dest.display(),
                        w.n_tensors,
                        mib(w.bytes)
                    );
                }
                None => calibrate(&a.calib, model, dest, a.tokenizer_pre, &progress)?,
            }
        }
        Some(Command::Eval(a)) => {
            let rt = start_runtime(cli.verbose, &a.offload)?;
            let stock = a.llama_bin.clone().map(|bin| apiq2gguf::eval::StockTools {
                bin,
                calib_files: a.calib.clone(),
                calib_max_bytes: a.calib_max_bytes,
            });
            let stock_types = if stock.is_some() {
                a.stock_types.clone()
            } else {
                Vec::new()
            };
            let args = apiq2gguf::eval::EvalArgs {
                stock,
                source: a.model.clone(),
                dir: a.dir.clone(),
                texts: a.texts.clone(),
                rows: apiq2gguf::eval::matrix(&a.bits, &a.recipe(), &stock_types),
                n_ctx: a.ctx,
                n_chunks: a.chunks,
                threads: runtime::threads(a.threads),
            };
            apiq2gguf::eval::run(&rt, &args)?;
            eprintln!("wrote {}", a.dir.join("results.md").display());
            let md = std::fs::read_to_string(a.dir.join("results.md"))?;
            write!(out, "{md}")?;
        }
        Some(Command::Inspect(a)) => {
            let g = gguf::GgufFile::open(&a.file)?;
            write!(out, "{}", inspect::render(&g))?;
        }
        Some(Command::Perplexity(a)) => {
            let rt = start_runtime(cli.verbose, &a.offload)?;
            let args = perplexity::PerplexityArgs {
                model: a.model,
                text: a.text,
                n_ctx: a.ctx,
                n_chunks: a.chunks,
                n_batch: a.batch,
                threads: runtime::threads(a.threads),
                lora: a.lora,
                lora_scale: a.lora_scale,
            };
            let r = perplexity::run(&rt, &args, |i, ppl| {
                print!("[{i}]{ppl:.4} ");
                let _ = std::io::stdout().flush();
            })?;
            println!();
            writeln!(out, "Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.err)?;
            eprintln!("{} tokens, {} scored", r.n_tokens, r.n_scored);
        }
        Some(Command::Generate(a)) => {
            let rt = start_runtime(cli.verbose, &a.offload)?;
            let g = runtime::generate::generate(
                &rt,
                &runtime::generate::GenerateArgs {
                    model: a.model,
                    prompt: a.prompt.clone(),
                    n_predict: a.n_predict,
                    threads: runtime::threads(a.threads),
                    lora: a.lora,
                    lora_scale: a.lora_scale,
                },
            )?;
            writeln!(out, "{}{}", a.prompt, g.text)?;
            if a.ids {
                let join = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(" ");
                writeln!(out, "prompt ids: {}", join(&g.prompt_ids))?;
                writeln!(out, "generated ids: {}", join(&g.ids))?;
            }
        }
        Some(Command::Bench(a)) => {
            let rt = start_runtime(cli.verbose, &a.offload)?;
            let threads = runtime::threads(a.threads);
            let r = runtime::bench::run(
                &rt,
                &runtime::bench::BenchArgs {
                    model: a.model,
                    lora: a.lora,
                    threads,
                    n_prompt: a.n_prompt,
                    n_gen: a.n_gen,
                    reps: a.reps as usize,
                },
            )?;
            writeln!(out, "system_info: {}", Runtime::system_info())?;
            writeln!(out, "cpu paths: {}", Runtime::cpu_paths())?;
            writeln!(out, "apiq2 kernels: {}", Runtime::apiq2_kernels())?;
            writeln!(out, "| model | size | params | threads | test | t/s |")?;
            writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
            for row in &r.rows {
                writeln!(
                    out,
                    "| {} | {:.2} MiB | {:.2} M | {threads} | {} | {:.2} ± {:.2} |",
                    r.description,
                    r.size_bytes as f64 / (1024.0 * 1024.0),
                    r.n_params as f64 / 1e6,
                    row.test,
                    row.mean,
                    row.sd
                )?;
            }
        }
        Some(Command::BenchStep(a)) => {
            let hp = apiq2gguf::bench::shape(&a.shape)?;
            let devices = match a.devices.is_empty() {
                true => vec![device::parse(&a.device, a.cuda_matmul)?],
                false => device::parse_list(&a.devices, a.cuda_matmul)?,
            };
            let c = a.kernels.compute(devices[0].is_cuda(), a.precision);
            let r = apiq2gguf::apiq::recipe::Recipe::default();
            let (warmup, steps) = (a.warmup, a.steps);
            let t = match a.devices.is_empty() {
                true => {
                    apiq2gguf::bench::train_step(&hp, a.seqlen, &r, c, &devices[0], warmup, steps)?
                }
                false => apiq2gguf::bench::train_step_ranks(
                    &hp, a.seqlen, &r, c, &devices, warmup, steps,
                )?,
            };
            let peak = t.peak_bytes.map_or(String::new(), |b| {
                format!(", peak {:.2} GiB", b as f64 / (1u64 << 30) as f64)
            });
            writeln!(
                out,
                "ours {} {} {} seq {} on {}: {:.2} ms/step, {:.0} tokens/s{peak} ({} steps)",
                c.precision.name(),
                if c.fused { "fused" } else { "candle" },
                a.shape,
                a.seqlen,
                match a.devices.is_empty() {
                    true => a.device.clone(),
                    false => format!("devices {}", a.devices.join(",")),
                },
                t.ms_per_step,
                t.tokens_per_s,
                t.steps
            )?;
        }
        Some(Command::TraceBlock(a)) => {
            let dev = device::parse(&a.calib.device, a.calib.cuda_matmul)?;
            let compute = a.calib.compute(dev.is_cuda());
            let t = apiq2gguf::trace::run(&apiq2gguf::trace::TraceArgs {
                model: a.model.clone(),
                layer: a.layer,
                dir: a.dir.clone(),
                recipe: a.calib.recipe(compute)?,
                compute,
                calib_files: a.calib.calib.clone(),
                calib_max_bytes: a.calib.calib_max_bytes,
                device: dev,
            })?;
            writeln!(
                out,
                "ours {}: {} steps in {:.1} s, loss {:.4e} -> {:.4e}, block-output mse {:.4e} (rtn {:.4e})",
                compute.precision.name(),
                t.losses.len(),
                t.seconds,
                t.losses.first().copied().unwrap_or(f64::NAN),
                t.losses.last().copied().unwrap_or(f64::NAN),
                t.mse_final,
                t.mse_rtn
            )?;
        }
        Some(Command::CheckKernels(a)) => {
            let dev = device::parse(&a.device, device::CudaMatmul::F32)?;
            let checks = apiq2gguf::kernel_check::run(&dev)?;
            let mut failed = 0;
            for c in &checks {
                writeln!(
                    out,
                    "{:<4} {:<48} rel {:.3e} (bound {:.0e})",
                    if c.ok() { "ok" } else { "FAIL" },
                    c.what,
                    c.rel,
                    c.bound
                )?;
                failed += usize::from(!c.ok());
            }
            writeln!(out, "{} passed, {failed} failed", checks.len() - failed)?;
            if failed > 0 {
                anyhow::bail!("{failed} kernel checks out of bounds");
            }
        }
        Some(Command::Tokenize(a)) => {
            let rt = Runtime::init(cli.verbose)?;
            let text = a.text()?;
            let ids =
                runtime::generate::tokenize(&rt, &a.model, &text, !a.no_special, a.parse_special)?;
            writeln!(
                out,
                "{}",
                ids.iter().map(i32::to_string).collect::<Vec<_>>().join(" ")
            )?;
        }
    }
    Ok(())
}
