//! The LoRA pair of one linear (PEFT's defaults as ApiQ uses them, apiq.md §2):
//! `y = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ`, A `[r, in]` ~ U(±1/√in) (kaiming_uniform with a = √5),
//! B `[out, r]` = 0, scaling = alpha / r. LoRA sees the same unquantized input as W.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
}

impl LoraSpec {
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

pub struct Lora {
    pub a: Var,
    pub b: Var,
    pub scaling: f64,
}

impl Lora {
    /// Seeded per linear so that every run, resumed or not, starts from the same A.
    pub fn new(
        spec: &LoraSpec,
        in_features: usize,
        out_features: usize,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Lora> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a: Vec<f32> = (0..spec.rank * in_features)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (spec.rank, in_features), dev)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_features, spec.rank), dtype, dev)?;
        Ok(Lora {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scaling: spec.scaling(),
        })
    }

    /// `scaling·(x·Aᵀ)·Bᵀ` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.broadcast_matmul(&self.a.as_tensor().t()?)?;
        h.broadcast_matmul(&self.b.as_tensor().t()?)? * self.scaling
    }
}
