//! The quantized linears of one block: trainable (LWC logits + LoRA pair over a frozen
//! grouped weight) and final (requantized weights `d·q + m` plus the LoRA pair).

use candle_core::{DType, Result, Tensor, Var};

use super::kstart;
use crate::nn::block::{self, BlockNorms, Rope};
use crate::nn::compute::{Compute, Precision};
use crate::nn::hparams::HParams;
use crate::quant::fake_quant_op::fake_quant_fused;
use crate::quant::lora::{Lora, LoraSpec};
use crate::quant::quantizer::{self, fake_quant};
use crate::quant::{kgrid, FrozenBase, GroupedWeight, KGrid, KInit, Lwc, QuantSpec, Requantized};

/// Whether a linear of this many inputs can be quantized: groups (K super-blocks) never
/// straddle rows, and ApiQ does not pad. Other linears stay full precision (F16 in the
/// output), LoRA included.
pub fn quantizable(in_features: usize, spec: &QuantSpec) -> bool {
    spec.kgrid_for(in_features).is_some() || in_features.is_multiple_of(spec.group_size)
}

/// Values per clipping pair of a linear: a K grid's sub-block, or the spec's group.
fn clip_len(in_features: usize, spec: &QuantSpec) -> usize {
    spec.kgrid_for(in_features)
        .map_or(spec.group_size, KGrid::sub_len)
}

/// A fresh LoRA pair for a linear of `w`'s type and device.
fn new_lora(
    lora: Option<(&LoraSpec, u64)>,
    in_features: usize,
    out_features: usize,
    w: &Tensor,
) -> Result<Option<Lora>> {
    lora.map(|(ls, seed)| Lora::new(ls, in_features, out_features, seed, w.dtype(), w.device()))
        .transpose()
}

/// The learned LoRA pair (A `[r, in]`, B `[out, r]`, scaling) in `w`'s type and device.
pub type FinalLora = (Tensor, Tensor, f64);

fn learned_lora(
    learned: &Learned,
    lora: Option<&LoraSpec>,
    inp: usize,
    out: usize,
    w: &Tensor,
) -> Result<Option<FinalLora>> {
    let dev = w.device();
    Ok(match (&learned.lora, lora) {
        (Some((a, b)), Some(ls)) => Some((
            Tensor::from_slice(a, (ls.rank, inp), dev)?.to_dtype(w.dtype())?,
            Tensor::from_slice(b, (out, ls.rank), dev)?.to_dtype(w.dtype())?,
            ls.scaling(),
        )),
        _ => None,
    })
}

pub struct TrainLinear {
    /// The frozen FP weight `[out, in]`.
    pub w: Tensor,
    /// Grouped weight and clipping logits; `None` when the linear is not quantizable.
    pub quant: Option<(GroupedWeight, Lwc)>,
    /// The K grid the weight trains through (groups are its sub-blocks), else ApiQ's groups.
    pub kgrid: Option<KGrid>,
    pub lora: Option<Lora>,
}

impl TrainLinear {
    pub fn new(
        w: &Tensor,
        spec: &QuantSpec,
        lora: Option<(&LoraSpec, u64)>,
    ) -> Result<TrainLinear> {
        let (out_features, in_features) = w.dims2()?;
        let quant = if quantizable(in_features, spec) {
            let gw = GroupedWeight::new(w, clip_len(in_features, spec))?;
            let lwc = Lwc::new(gw.n_groups(), w.dtype(), w.device())?;
            Some((gw, lwc))
        } else {
            None
        };
        let lora = new_lora(lora, in_features, out_features, w)?;
        Ok(TrainLinear {
            w: w.clone(),
            quant,
            kgrid: spec.kgrid_for(in_features),
            lora,
        })
    }

    /// A linear whose weight is a frozen quantization by ggml: only its LoRA trains.
    pub fn over_frozen(
        base: &FrozenBase,
        w: &Tensor,
        lora: Option<(&LoraSpec, u64)>,
    ) -> Result<TrainLinear> {
        let (out_features, in_features) = w.dims2()?;
        let wq = Tensor::from_slice(&base.weight, (out_features, in_features), w.device())?
            .to_dtype(w.dtype())?;
        let lora = new_lora(lora, in_features, out_features, w)?;
        Ok(TrainLinear {
            w: wq,
            quant: None,
            kgrid: None,
            lora,
        })
    }

    /// Starts a K grid's clipping from ggml's own quantizer's ranges ([`kstart`]), weighted
    /// by `imatrix` (one value per input column) if given.
    pub fn start_from(&mut self, init: KInit, imatrix: Option<&[f32]>) -> anyhow::Result<()> {
        if let (KInit::Ggml, Some(k), Some((gw, lwc))) = (init, self.kgrid, &mut self.quant) {
            let (g, b) = kstart::ggml_logits(k, gw, imatrix)?;
            *lwc = Lwc::from_logits(&g, &b, gw.w.dtype(), gw.w.device())?;
        }
        Ok(())
    }

    /// The fake-quantized weight in the weight's type, composed of candle ops (autograd).
    pub fn fake_quant(&self, spec: &QuantSpec) -> Result<Option<Tensor>> {
        let Some((gw, lwc)) = &self.quant else {
            return Ok(None);
        };
        let (g, b) = (lwc.gamma.as_tensor(), lwc.beta.as_tensor());
        Ok(Some(match self.kgrid {
            Some(k) => kgrid::fake_quant(k, gw, g, b)?,
            None => fake_quant(spec, gw, g, b)?,
        }))
    }

    /// The quantized weight is computed (and stored) as `c` says; the product's operands are
    /// in its storage type.
    pub fn forward(&self, spec: &QuantSpec, c: Compute, x: &Tensor) -> Result<Tensor> {
        let mm = c.precision.matmul_dtype();
        let y = match (&self.quant, self.kgrid) {
            // The fused kernel covers ApiQ's groups; a K grid runs on candle's ops.
            (Some((gw, lwc)), None) if c.fused => {
                let (g, b) = (lwc.gamma.as_tensor(), lwc.beta.as_tensor());
                block::matmul_t(x, &fake_quant_fused(spec, gw, g, b, mm)?)?
            }
            (Some(_), _) => {
                let wq = self.fake_quant(spec)?.expect("quantized");
                let wq = if c.precision == Precision::F32 {
                    wq
                } else {
                    wq.to_dtype(mm)?
                };
                block::matmul_t(x, &wq)?
            }
            (None, _) => block::matmul_t(x, &self.w)?,
        };
        match &self.lora {
            Some(l) => y + l.forward(x)?,
            None => Ok(y),
        }
    }

    pub fn lwc_vars(&self) -> Vec<Var> {
        self.quant
            .iter()
            .flat_map(|(_, l)| [l.gamma.clone(), l.beta.clone()])
            .collect()
    }

    pub fn lora_vars(&self) -> Vec<Var> {
        self.lora
            .iter()
            .flat_map(|l| [l.a.clone(), l.b.clone()])
            .collect()
    }
}

/// Learned parameters of one linear, as saved in the resume state.
#[derive(Debug, Clone)]
pub struct Learned {
    /// LWC logits per group; `None` for RTN.
    pub gamma: Option<Vec<f32>>,
    pub beta: Option<Vec<f32>>,
    /// LoRA A `[r, in]` and B `[out, r]`, row-major.
    pub lora: Option<(Vec<f32>, Vec<f32>)>,
}

impl Learned {
    pub fn of(t: &TrainLinear) -> Result<Learned> {
        let v = |x: &Var| -> Result<Vec<f32>> {
            x.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1()
        };
        Ok(Learned {
            gamma: t.quant.as_ref().map(|(_, l)| v(&l.gamma)).transpose()?,
            beta: t.quant.as_ref().map(|(_, l)| v(&l.beta)).transpose()?,
            lora: match &t.lora {
                Some(l) => Some((v(&l.a)?, v(&l.b)?)),
                None => None,
            },
        })
    }
}

/// A linear as deployed: requantized weight and optional LoRA.
pub struct FinalLinear {
    /// `None`: not quantizable, kept full precision.
    pub q: Option<Requantized>,
    /// `[out, in]` on the device: `d·q + m`, or the FP weight.
    pub w: Tensor,
    /// `[r, in]`, `[out, r]` and the scaling.
    pub lora: Option<FinalLora>,
}

impl FinalLinear {
    pub fn new(
        spec: &QuantSpec,
        w: &Tensor,
        learned: &Learned,
        lora: Option<&LoraSpec>,
    ) -> Result<FinalLinear> {
        let inp = w.dim(1)?;
        let dev = w.device();
        let q = if quantizable(inp, spec) {
            let gw = GroupedWeight::new(w, clip_len(inp, spec))?;
            let n = gw.n_groups();
            let logits = match (&learned.gamma, &learned.beta) {
                (Some(g), Some(b)) => Some((
                    Tensor::from_slice(g, (n, 1), dev)?,
                    Tensor::from_slice(b, (n, 1), dev)?,
                )),
                _ => None,
            };
            Some(match (spec.kgrid_for(inp), &logits) {
                (Some(k), Some((g, b))) => Requantized::K(kgrid::requantize(k, &gw, g, b)?),
                (Some(k), None) => Requantized::K(kgrid::rtn(k, &gw)?),
                (None, Some((g, b))) => {
                    Requantized::Groups(quantizer::requantize(spec, &gw, g, b)?)
                }
                (None, None) => Requantized::Groups(quantizer::rtn(spec, &gw)?),
            })
        } else {
            None
        };
        FinalLinear::assemble(q, w, learned, lora)
    }

    /// A frozen base with the learned LoRA (if any).
    pub fn over_frozen(
        base: &FrozenBase,
        w: &Tensor,
        learned: &Learned,
        lora: Option<&LoraSpec>,
    ) -> Result<FinalLinear> {
        FinalLinear::assemble(Some(Requantized::Frozen(base.clone())), w, learned, lora)
    }

    /// The deployed linear of the FP weight `w`: `q`'s values on `w`'s device and type (`w`
    /// itself where nothing was quantized) and the learned LoRA pair.
    fn assemble(
        q: Option<Requantized>,
        w: &Tensor,
        learned: &Learned,
        lora: Option<&LoraSpec>,
    ) -> Result<FinalLinear> {
        let (out, inp) = w.dims2()?;
        let wq = match &q {
            Some(q) => {
                Tensor::from_slice(q.weight(), (out, inp), w.device())?.to_dtype(w.dtype())?
            }
            None => w.clone(),
        };
        let lora = learned_lora(learned, lora, inp, out, w)?;
        Ok(FinalLinear { q, w: wq, lora })
    }

    /// The same linear on `dev`: its values and LoRA pair moved, its host codes kept.
    pub fn to_device(self, dev: &candle_core::Device) -> Result<FinalLinear> {
        let lora = match self.lora {
            Some((a, b, s)) => Some((a.to_device(dev)?, b.to_device(dev)?, s)),
            None => None,
        };
        Ok(FinalLinear {
            q: self.q,
            w: self.w.to_device(dev)?,
            lora,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = block::matmul_t(x, &self.w)?;
        match &self.lora {
            Some((a, b, s)) => y + (block::matmul_t(&block::matmul_t(x, a)?, b)? * *s)?,
            None => Ok(y),
        }
    }
}

/// Forward of a block whose linears are final.
pub fn forward_final(
    hp: &HParams,
    rope: &Rope,
    norms: &BlockNorms,
    linears: &[FinalLinear],
    x: &Tensor,
) -> Result<Tensor> {
    block::forward(hp, rope, norms, &|i, h| linears[i].forward(h), x)
}

/// Forward of a block whose linears are being trained.
pub fn forward_train(
    hp: &HParams,
    rope: &Rope,
    norms: &BlockNorms,
    spec: &QuantSpec,
    linears: &[TrainLinear],
    x: &Tensor,
) -> Result<Tensor> {
    block::forward(
        hp,
        rope,
        norms,
        &|i, h| linears[i].forward(spec, rope.compute(), h),
        x,
    )
}
