//! A block's forward outside training: the full-precision targets, the quantized chain and
//! the RTN line, for every window of every block.
//!
//! With the fused kernels on (the GPU), these run on the training step's own passes and
//! operand type ([`step::forward`]): the weights are cast to the operand type once per block,
//! not per window, and the products run on the tensor cores. The released code's autocast
//! does the same (fp16 products, its targets included). Without them, candle's f32 ops run the
//! block ([`crate::nn::block::forward`]): the reference, and what the CPU computes.

use candle_core::{Result, Tensor};

use super::qblock::{forward_final, FinalLinear};
use super::step::{self, OperandLinear};
use crate::nn::block::{BlockNorms, Rope};
use crate::nn::hparams::HParams;
use crate::nn::model::BlockWeights;

enum Linears<'a> {
    /// The source block, on candle's ops.
    Fp(&'a BlockWeights),
    /// The deployed linears, on candle's ops.
    Final(&'a [FinalLinear]),
    /// Either, cast to the step's operand type.
    Operands(Vec<OperandLinear>),
}

/// One block's forward, ready for many windows.
pub struct BlockForward<'a> {
    hp: &'a HParams,
    rope: &'a Rope,
    norms: &'a BlockNorms,
    linears: Linears<'a>,
}

impl<'a> BlockForward<'a> {
    /// The full-precision block.
    pub fn fp(hp: &'a HParams, rope: &'a Rope, bw: &'a BlockWeights) -> Result<Self> {
        let linears = if rope.compute().fused {
            let ty = step::operand_type(rope, bw.w[0].dtype());
            Linears::Operands(
                bw.w.iter()
                    .map(|w| {
                        Ok(OperandLinear {
                            w: w.to_dtype(ty)?,
                            lora: None,
                        })
                    })
                    .collect::<Result<_>>()?,
            )
        } else {
            Linears::Fp(bw)
        };
        Ok(BlockForward {
            hp,
            rope,
            norms: &bw.norms,
            linears,
        })
    }

    /// The block as deployed: requantized weights and their LoRA pairs.
    pub fn deployed(
        hp: &'a HParams,
        rope: &'a Rope,
        norms: &'a BlockNorms,
        linears: &'a [FinalLinear],
    ) -> Result<Self> {
        let linears = if rope.compute().fused {
            let ty = step::operand_type(rope, linears[0].w.dtype());
            Linears::Operands(
                linears
                    .iter()
                    .map(|l| {
                        Ok(OperandLinear {
                            w: l.w.to_dtype(ty)?,
                            lora: match &l.lora {
                                Some((a, b, s)) => Some((a.to_dtype(ty)?, (b * *s)?.to_dtype(ty)?)),
                                None => None,
                            },
                        })
                    })
                    .collect::<Result<_>>()?,
            )
        } else {
            Linears::Final(linears)
        };
        Ok(BlockForward {
            hp,
            rope,
            norms,
            linears,
        })
    }

    /// `x` `[B, L, E]` → the block's output `[B, L, E]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (hp, rope, norms) = (self.hp, self.rope, self.norms);
        match &self.linears {
            Linears::Fp(bw) => bw.forward_fp(hp, rope, x),
            Linears::Final(l) => forward_final(hp, rope, norms, l, x),
            Linears::Operands(l) => step::forward(hp, rope, norms, l, x),
        }
    }

    /// The outputs of every window.
    pub fn forward_all(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        xs.iter().map(|x| self.forward(x)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::block::fixtures::{randn, random_norms, TINY_SHAPES};
    use crate::nn::compute::{Compute, Precision};
    use crate::nn::hparams::RopeKind;
    use candle_core::{DType, Device};

    /// The step's passes give candle's reference forward, in f64, for the source block and
    /// for a deployed block with LoRA pairs (both rope kinds, q/k/v biases).
    fn compare(rope_kind: RopeKind, qkv_bias: bool) {
        let dev = Device::Cpu;
        let hp = HParams::tiny(rope_kind, qkv_bias);
        let shapes = TINY_SHAPES;
        let e = shapes[0].0;
        let w: Vec<Tensor> = shapes.iter().map(|&s| randn(s, 0.5, &dev)).collect();
        let bw = BlockWeights {
            norms: random_norms(qkv_bias, &dev),
            w: w.clone(),
            frozen: Vec::new(),
            kgrids: Vec::new(),
            imatrix: Vec::new(),
        };
        let finals: Vec<FinalLinear> = shapes
            .iter()
            .zip(&w)
            .map(|(&(out, inp), w)| FinalLinear {
                q: None,
                w: (w + randn((out, inp), 0.05, &dev)).unwrap(),
                lora: Some((randn((3, inp), 0.3, &dev), randn((out, 3), 0.3, &dev), 2.5)),
            })
            .collect();
        let (b, l) = (2, 5);
        let x = randn((b * l, e), 1.0, &dev).reshape((b, l, e)).unwrap();
        let reference = Rope::new(&hp, l, DType::F64, &dev).unwrap();
        let fused = Rope::new(&hp, l, DType::F64, &dev)
            .unwrap()
            .with_compute(Compute {
                precision: Precision::F32,
                fused: true,
            });
        let outputs = |rope: &Rope| {
            let fp = BlockForward::fp(&hp, rope, &bw)
                .unwrap()
                .forward(&x)
                .unwrap();
            let q = BlockForward::deployed(&hp, rope, &bw.norms, &finals)
                .unwrap()
                .forward(&x)
                .unwrap();
            (fp, q)
        };
        let (fp_ref, q_ref) = outputs(&reference);
        let (fp, q) = outputs(&fused);
        assert!(matches!(
            BlockForward::fp(&hp, &fused, &bw).unwrap().linears,
            Linears::Operands(_)
        ));
        for (name, a, r) in [("fp", fp, fp_ref), ("deployed", q, q_ref)] {
            assert_eq!(a.dims(), &[b, l, e]);
            let err = (&a - &r).unwrap().abs().unwrap().max_all().unwrap();
            let size = r
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let err = err.to_scalar::<f64>().unwrap();
            assert!(
                size > 0.1 && err <= 1e-12 * size,
                "{name}: max |Δ| {err:e} of {size:e}"
            );
        }
    }

    #[test]
    fn step_passes_equal_the_reference_forward_llama() {
        compare(RopeKind::Norm, false);
    }

    #[test]
    fn step_passes_equal_the_reference_forward_qwen2_with_bias() {
        compare(RopeKind::Neox, true);
    }
}
