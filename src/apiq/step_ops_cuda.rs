//! Launchers of `step_ops.cu` (the references are the compositions in `step_ops::reference`).
//! They read the tensors' device memory directly and return fresh tensors, since several
//! kernels take more than three inputs or give more than one output (candle's custom ops take
//! at most three and give one); nothing here is differentiated.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Layout, Result, Shape, Storage, StorageRef, Tensor, WithDType};
use half::{bf16, f16};

use crate::cuda::{fatbin, function, Fatbin};
use crate::nn::block::Rope;
use crate::nn::hparams::RopeKind;

/// At most this many parts per input (two linears, each with LoRA): the four pointers of the
/// kernels' `PARTS` arguments.
const MAX_PARTS: usize = 4;

const FATBIN: Fatbin = fatbin!("step_ops");
const THREADS: u32 = 256;
/// A device pointer the kernel does not read (an absent optional input).
const NULL: u64 = 0;

fn cuda(s: &Storage) -> Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("step ops: every tensor must be on the CUDA device"),
    }
}

fn view<'a, T: CudaDType>((s, l): &'a (StorageRef<'_>, &Layout)) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(cuda(s)?.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("step ops: tensors must be contiguous"),
    }
}

fn locks<'a>(ts: &[&'a Tensor]) -> Vec<(StorageRef<'a>, &'a Layout)> {
    ts.iter().map(|t| t.storage_and_layout()).collect()
}

fn device(t: &Tensor) -> Result<CudaDevice> {
    let (s, _) = t.storage_and_layout();
    Ok(cuda(&s)?.device().clone())
}

/// Uninitialised: every element is written by the kernel that receives it.
fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: see above.
    unsafe { dev.alloc::<T>(n) }
}

fn tensor<T: CudaDType>(s: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

fn name(kernel: &str, dtype: DType) -> Result<String> {
    let s = match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("step ops: no kernel for {other:?}"),
    };
    Ok(format!("{kernel}_{s}"))
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS).clamp(1, 1 << 16), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Up to four parts' views (the first repeated into unused slots) and their count.
struct Parts<'a, T> {
    views: Vec<CudaView<'a, T>>,
    n: i32,
}

impl<'a, T: CudaDType> Parts<'a, T> {
    fn new(locked: &'a [(StorageRef<'_>, &Layout)], len: usize) -> Result<Self> {
        if locked.is_empty() || locked.len() > MAX_PARTS {
            candle_core::bail!("step ops: 1 to {MAX_PARTS} parts, got {}", locked.len());
        }
        let views = locked.iter().map(view::<T>).collect::<Result<Vec<_>>>()?;
        if views.iter().any(|v| v.len() != len) {
            candle_core::bail!("step ops: parts of different sizes");
        }
        Ok(Parts {
            views,
            n: locked.len() as i32,
        })
    }

    fn push<'b>(&'b self, l: &mut LaunchArgs<'b>) {
        for k in 0..MAX_PARTS {
            l.arg(&self.views[k.min(self.views.len() - 1)]);
        }
        l.arg(&self.n);
    }
}

/// An optional input: its view, or a pointer the kernel does not read.
fn arg_or_null<'b>(l: &mut LaunchArgs<'b>, v: Option<&'b CudaView<'_, f32>>) {
    match v {
        Some(v) => l.arg(v),
        None => l.arg(&NULL),
    };
}

fn launch(l: &mut LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
    // SAFETY: every launcher pushes arguments of the kernel's signature in order; outputs are
    // fresh allocations of the sizes the kernel writes.
    unsafe { l.launch(cfg) }.w()?;
    Ok(())
}

fn rope_args(rope: Option<&Rope>, l: usize) -> Result<(Option<(Tensor, Tensor)>, i32)> {
    Ok(match rope {
        None => (None, 0),
        Some(r) => {
            let (cos, sin, kind) = r.tables(l)?;
            let code = match kind {
                RopeKind::Norm => 1,
                RopeKind::Neox => 2,
            };
            (Some((cos, sin)), code)
        }
    })
}

macro_rules! by_type {
    ($dtype:expr, $f:ident ( $($a:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($a),*),
            DType::BF16 => $f::<bf16>($($a),*),
            DType::F16 => $f::<f16>($($a),*),
            other => candle_core::bail!("step ops: no kernel for {other:?}"),
        }
    };
}

pub fn heads(
    x: &[Tensor],
    bias: Option<&Tensor>,
    rope: Option<&Rope>,
    dims: (usize, usize, usize, usize),
) -> Result<Tensor> {
    by_type!(x[0].dtype(), heads_t(x, bias, rope, dims))
}

fn heads_t<T: CudaDType + DeviceRepr + WithDType>(
    x: &[Tensor],
    bias: Option<&Tensor>,
    rope: Option<&Rope>,
    (b, l, h, hd): (usize, usize, usize, usize),
) -> Result<Tensor> {
    let dev = device(&x[0])?;
    let n = b * l * h * hd;
    let (tables, code) = rope_args(rope, l)?;
    let xs: Vec<&Tensor> = x.iter().collect();
    let xl = locks(&xs);
    let parts = Parts::<T>::new(&xl, n)?;
    let bl = locks(&bias.into_iter().collect::<Vec<_>>());
    let bv = bl.iter().map(view::<f32>).collect::<Result<Vec<_>>>()?;
    let tl = locks(&tables.iter().flat_map(|(c, s)| [c, s]).collect::<Vec<_>>());
    let tv = tl.iter().map(view::<f32>).collect::<Result<Vec<_>>>()?;
    let has_bias = i32::from(bias.is_some());
    let mut out = alloc::<T>(&dev, n)?;
    let func = function(&dev, &FATBIN, &name("heads", x[0].dtype())?)?;
    let (bi, li, hi, hdi) = (b as i32, l as i32, h as i32, hd as i32);
    let stream = dev.cuda_stream();
    let mut a = stream.launch_builder(&func);
    parts.push(&mut a);
    arg_or_null(&mut a, bv.first());
    a.arg(&has_bias);
    arg_or_null(&mut a, tv.first());
    arg_or_null(&mut a, tv.get(1));
    a.arg(&code)
        .arg(&mut out)
        .arg(&bi)
        .arg(&li)
        .arg(&hi)
        .arg(&hdi);
    launch(&mut a, grid(n / 2))?;
    drop(a);
    Ok(tensor(out, &dev, (b, h, l, hd)))
}

pub fn unheads(x: &Tensor, rope: Option<&Rope>, rep: usize) -> Result<Tensor> {
    by_type!(x.dtype(), unheads_t(x, rope, rep))
}

fn unheads_t<T: CudaDType + DeviceRepr + WithDType>(
    x: &Tensor,
    rope: Option<&Rope>,
    rep: usize,
) -> Result<Tensor> {
    let dev = device(x)?;
    let (b, hr, l, hd) = x.dims4()?;
    let h = hr / rep;
    let (tables, code) = rope_args(rope, l)?;
    let xl = locks(&[x]);
    let xv = view::<T>(&xl[0])?;
    let tl = locks(&tables.iter().flat_map(|(c, s)| [c, s]).collect::<Vec<_>>());
    let tv = tl.iter().map(view::<f32>).collect::<Result<Vec<_>>>()?;
    let n = b * l * h * hd;
    let mut out = alloc::<T>(&dev, n)?;
    let func = function(&dev, &FATBIN, &name("unheads", x.dtype())?)?;
    let (bi, li, hi, ri, hdi) = (b as i32, l as i32, h as i32, rep as i32, hd as i32);
    let stream = dev.cuda_stream();
    let mut a = stream.launch_builder(&func);
    a.arg(&xv);
    arg_or_null(&mut a, tv.first());
    arg_or_null(&mut a, tv.get(1));
    a.arg(&code)
        .arg(&mut out)
        .arg(&bi)
        .arg(&li)
        .arg(&hi)
        .arg(&ri)
        .arg(&hdi);
    launch(&mut a, grid(n / 2))?;
    drop(a);
    Ok(tensor(out, &dev, (b * l, h * hd)))
}

pub fn rms_norm(
    x: &Tensor,
    add: &[Tensor],
    w: &Tensor,
    eps: f32,
    ty: DType,
) -> Result<(Tensor, Tensor, Tensor)> {
    by_type!(ty, rms_norm_t(x, add, w, eps))
}

fn rms_norm_t<T: CudaDType + DeviceRepr + WithDType>(
    x: &Tensor,
    add: &[Tensor],
    w: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = device(x)?;
    let (rows, e) = x.dims2()?;
    let xl = locks(&[x, w]);
    let (xv, wv) = (view::<f32>(&xl[0])?, view::<f32>(&xl[1])?);
    let adds: Vec<&Tensor> = add.iter().collect();
    let al = locks(&adds);
    let parts = if add.is_empty() {
        None
    } else {
        Some(Parts::<T>::new(&al, rows * e)?)
    };
    let mut x2 = parts
        .as_ref()
        .map(|_| alloc::<f32>(&dev, rows * e))
        .transpose()?;
    let mut h = alloc::<T>(&dev, rows * e)?;
    let mut rstd = alloc::<f32>(&dev, rows)?;
    let func = function(&dev, &FATBIN, &name("rms_norm", T::DTYPE)?)?;
    let (ei, zero) = (e as i32, 0i32);
    let stream = dev.cuda_stream();
    let mut a = stream.launch_builder(&func);
    a.arg(&xv);
    match &parts {
        Some(p) => p.push(&mut a),
        None => {
            for _ in 0..MAX_PARTS {
                a.arg(&NULL);
            }
            a.arg(&zero);
        }
    }
    a.arg(&wv).arg(&eps);
    match x2.as_mut() {
        Some(s) => a.arg(s),
        None => a.arg(&NULL),
    };
    a.arg(&mut h).arg(&mut rstd).arg(&ei);
    launch(&mut a, per_row(rows))?;
    drop(a);
    let x2 = match x2 {
        Some(s) => tensor(s, &dev, (rows, e)),
        None => x.clone(),
    };
    Ok((
        x2,
        tensor(h, &dev, (rows, e)),
        tensor(rstd, &dev, (rows, 1)),
    ))
}

pub fn rms_norm_backward(
    x2: &Tensor,
    rstd: &Tensor,
    w: &Tensor,
    dh: &[Tensor],
    dres: &Tensor,
) -> Result<(Tensor, Tensor)> {
    by_type!(dh[0].dtype(), rms_norm_backward_t(x2, rstd, w, dh, dres))
}

fn rms_norm_backward_t<T: CudaDType + DeviceRepr + WithDType>(
    x2: &Tensor,
    rstd: &Tensor,
    w: &Tensor,
    dh: &[Tensor],
    dres: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let dev = device(x2)?;
    let (rows, e) = x2.dims2()?;
    let fl = locks(&[x2, rstd, w, dres]);
    let fv = fl.iter().map(view::<f32>).collect::<Result<Vec<_>>>()?;
    let dhs: Vec<&Tensor> = dh.iter().collect();
    let dl = locks(&dhs);
    let parts = Parts::<T>::new(&dl, rows * e)?;
    let mut dx = alloc::<f32>(&dev, rows * e)?;
    let mut dx_t = alloc::<T>(&dev, rows * e)?;
    let func = function(&dev, &FATBIN, &name("rms_norm_bwd", T::DTYPE)?)?;
    let ei = e as i32;
    let stream = dev.cuda_stream();
    let mut a = stream.launch_builder(&func);
    a.arg(&fv[0]).arg(&fv[1]).arg(&fv[2]);
    parts.push(&mut a);
    a.arg(&fv[3]).arg(&mut dx).arg(&mut dx_t).arg(&ei);
    launch(&mut a, per_row(rows))?;
    drop(a);
    Ok((tensor(dx, &dev, (rows, e)), tensor(dx_t, &dev, (rows, e))))
}

pub fn swiglu(g: &[Tensor], u: &[Tensor]) -> Result<Tensor> {
    by_type!(g[0].dtype(), swiglu_t(g, u))
}

fn swiglu_t<T: CudaDType + DeviceRepr + WithDType>(g: &[Tensor], u: &[Tensor]) -> Result<Tensor> {
    let dev = device(&g[0])?;
    let n = g[0].elem_count();
    let gs: Vec<&Tensor> = g.iter().collect();
    let us: Vec<&Tensor> = u.iter().collect();
    let (gl, ul) = (locks(&gs), locks(&us));
    let (gp, up) = (Parts::<T>::new(&gl, n)?, Parts::<T>::new(&ul, n)?);
    let mut out = alloc::<T>(&dev, n)?;
    let func = function(&dev, &FATBIN, &name("swiglu", T::DTYPE)?)?;
    let ni = n as i64;
    let stream = dev.cuda_stream();
    let mut a = stream.launch_builder(&func);
    gp.push(&mut a);
    up.push(&mut a);
    a.arg(&mut out).arg(&ni);
    launch(&mut a, grid(n))?;
    drop(a);
    Ok(tensor(out, &dev, g[0].shape().clone()))
}

pub fn swiglu_backward(g: &[Tensor], u: &[Tensor], da: &[Tensor]) -> Result<(Tensor, Tensor)> {
    by_type!(g[0].dtype(), swiglu_backward_t(g, u, da))
}

fn swiglu_backward_t<T: CudaDType + DeviceRepr + WithDType>(
    g: &[Tensor],
    u: &[Tensor],
    da: &[Tensor],
) -> Result<(Tensor, Tensor)> {
    let dev = device(&g[0])?;
    let n = g[0].elem_count();
    let gs: Vec<&Tensor> = g.iter().collect();
    let us: Vec<&Tensor> = u.iter().collect();
    let ds: Vec<&Tensor> = da.iter().collect();
    let (gl, ul, dl) = (locks(&gs), locks(&us), locks(&ds));
    let gp = Parts::<T>::new(&gl, n)?;
    let up = Parts::<T>::new(&ul, n)?;
    let dp = Parts::<T>::new(&dl, n)?;
    let mut dg = alloc::<T>(&dev, n)?;
    let mut du = alloc::<T>(&dev, n)?;
    let func = function(&dev, &FATBIN, &name("swiglu_bwd", T::DTYPE)?)?;
    let ni = n as i64;
    let stream = dev.cuda_stream();
    let mut a = stream.launch_builder(&func);
    gp.push(&mut a);
    up.push(&mut a);
    dp.push(&mut a);
    a.arg(&mut dg).arg(&mut du).arg(&ni);
    launch(&mut a, grid(n))?;
    drop(a);
    let shape = g[0].shape().clone();
    Ok((tensor(dg, &dev, shape.clone()), tensor(du, &dev, shape)))
}

pub fn residual_mse(
    x2: &Tensor,
    y: &[Tensor],
    targets: &[&Tensor],
    k: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    by_type!(y[0].dtype(), residual_mse_t(x2, y, targets, k))
}

fn residual_mse_t<T: CudaDType + DeviceRepr + WithDType>(
    x2: &Tensor,
    y: &[Tensor],
    targets: &[&Tensor],
    k: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = device(x2)?;
    let (rows, e) = x2.dims2()?;
    if targets.is_empty() || targets.len() > 2 {
        candle_core::bail!("residual_mse: one or two targets");
    }
    let mut fs = vec![x2];
    fs.extend(targets.iter().copied());
    let fl = locks(&fs);
    let fv = fl.iter().map(view::<f32>).collect::<Result<Vec<_>>>()?;
    if fv.iter().any(|v| v.len() != rows * e) {
        candle_core::bail!("residual_mse: targets must match the output");
    }
    let ys: Vec<&Tensor> = y.iter().collect();
    let yl = locks(&ys);
    let parts = Parts::<T>::new(&yl, rows * e)?;
    let mut row_loss = alloc::<f32>(&dev, rows)?;
    let mut dout = alloc::<f32>(&dev, rows * e)?;
    let mut dout_t = alloc::<T>(&dev, rows * e)?;
    let func = function(&dev, &FATBIN, &name("residual_mse", T::DTYPE)?)?;
    let (nt, kf, ei) = (targets.len() as i32, k as f32, e as i32);
    let stream = dev.cuda_stream();
    let mut a = stream.launch_builder(&func);
    a.arg(&fv[0]);
    parts.push(&mut a);
    a.arg(&fv[1]).arg(&fv[fv.len() - 1]);
    a.arg(&nt)
        .arg(&kf)
        .arg(&mut row_loss)
        .arg(&mut dout)
        .arg(&mut dout_t)
        .arg(&ei);
    launch(&mut a, per_row(rows))?;
    drop(a);
    let sq = tensor(row_loss, &dev, rows).sum_all()?;
    Ok((
        sq,
        tensor(dout, &dev, (rows, e)),
        tensor(dout_t, &dev, (rows, e)),
    ))
}
