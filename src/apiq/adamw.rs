//! AdamW as ApiQ uses it (torch.optim.AdamW: decoupled weight decay, bias-corrected moments),
//! in two implementations of the same arithmetic:
//! * candle-nn's `AdamW`: about 15 launches per parameter tensor; the reference, and what the
//!   CPU runs;
//! * one fused pass per parameter tensor on CUDA (`adamw.cu`), which updates the parameter and
//!   both moments in place.
//!
//! Both take an optional gradient scale (the inverse of an f16 loss scale).

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Layout, Result, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};

use super::adamw_step::AdamWStep;

pub struct AdamW {
    params: ParamsAdamW,
    imp: Impl,
}

enum Impl {
    Candle(candle_nn::AdamW, Vec<Var>),
    /// Each parameter with its moments `[2, n]` (m, then v).
    Fused {
        vars: Vec<(Var, Tensor)>,
        step: i32,
    },
}

impl AdamW {
    /// torch.optim.AdamW's defaults besides the learning rate and the weight decay. `fused`
    /// needs every parameter on a CUDA device.
    pub fn new(vars: Vec<Var>, lr: f64, weight_decay: f64, fused: bool) -> Result<AdamW> {
        let params = ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        };
        let imp = if fused {
            let vars = vars
                .into_iter()
                .map(|v| {
                    let state = Tensor::zeros((2, v.elem_count()), v.dtype(), v.device())?;
                    Ok((v, state))
                })
                .collect::<Result<_>>()?;
            Impl::Fused { vars, step: 0 }
        } else {
            Impl::Candle(candle_nn::AdamW::new(vars.clone(), params.clone())?, vars)
        };
        Ok(AdamW { params, imp })
    }

    /// One update from `grads`, each gradient multiplied by `grad_scale` first.
    pub fn step(&mut self, grads: &mut GradStore, grad_scale: f64) -> Result<()> {
        match &mut self.imp {
            Impl::Candle(opt, vars) => {
                if grad_scale != 1.0 {
                    for v in vars.iter() {
                        if let Some(g) = grads.remove(v.as_tensor()) {
                            grads.insert(v.as_tensor(), (g * grad_scale)?);
                        }
                    }
                }
                opt.step(grads)
            }
            Impl::Fused { vars, step } => {
                *step += 1;
                let p = &self.params;
                let k = AdamWStep {
                    lr: p.lr as f32,
                    beta1: p.beta1 as f32,
                    beta2: p.beta2 as f32,
                    eps: p.eps as f32,
                    decay: (1.0 - p.lr * p.weight_decay) as f32,
                    scale_m: (1.0 / (1.0 - p.beta1.powi(*step))) as f32,
                    scale_v: (1.0 / (1.0 - p.beta2.powi(*step))) as f32,
                    grad_scale: grad_scale as f32,
                };
                for (v, state) in vars.iter() {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        let g = g.contiguous()?;
                        v.as_tensor().inplace_op3(state, &g, &FusedStep(k))?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// In place on the parameter; the kernel also advances the moments in `state`, a tensor only
/// this optimizer holds.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct FusedStep(AdamWStep);

impl candle_core::InplaceOp3 for FusedStep {
    fn name(&self) -> &'static str {
        "apiq-adamw"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        candle_core::bail!("the fused AdamW runs on CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        theta: &mut candle_core::CudaStorage,
        lt: &Layout,
        state: &candle_core::CudaStorage,
        ls: &Layout,
        grad: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<()> {
        super::adamw_cuda::step(&self.0, (theta, lt), (state, ls), (grad, lg))
    }
}
