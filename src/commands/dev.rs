//! The hidden developer commands: bench-step, trace-block, check-kernels.

use std::io::Write;

use anyhow::Result;

use crate::cli::{BenchStepCli, CheckKernelsCli, TraceBlockCli};
use crate::device;

/// `bench-step`: one training step's time on a random block.
pub fn bench_step(a: BenchStepCli) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let hp = crate::bench::shape(&a.shape)?;
    let devices = match a.devices.is_empty() {
        true => vec![device::parse(&a.device, a.cuda_matmul)?],
        false => device::parse_list(&a.devices, a.cuda_matmul)?,
    };
    let c = a.kernels.compute(devices[0].is_cuda(), a.precision);
    let r = crate::apiq::recipe::Recipe::default();
    let (warmup, steps) = (a.warmup, a.steps);
    let t = match a.devices.is_empty() {
        true => crate::bench::train_step(&hp, a.seqlen, &r, c, &devices[0], warmup, steps)?,
        false => crate::bench::train_step_ranks(&hp, a.seqlen, &r, c, &devices, warmup, steps)?,
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
    Ok(())
}

/// `trace-block`: one block's inputs and every step's loss, for the A/B against the released code.
pub fn trace_block(a: TraceBlockCli) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let dev = device::parse(&a.calib.device, a.calib.cuda_matmul)?;
    let compute = a.calib.compute(dev.is_cuda());
    let t = crate::trace::run(&crate::trace::TraceArgs {
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
    Ok(())
}

/// `check-kernels`: the fused CUDA kernels against candle's reference ops.
pub fn check_kernels(a: CheckKernelsCli) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let dev = device::parse(&a.device, device::CudaMatmul::F32)?;
    let checks = crate::kernel_check::run(&dev)?;
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
    Ok(())
}
