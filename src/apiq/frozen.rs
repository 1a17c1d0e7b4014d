//! ApiQ's LoRA over a frozen stock quantization (the IQ formats): each linear of a block is
//! quantized once by ggml's own quantizer (`ggml_quantize_chunk`, what llama-quantize runs)
//! with an importance matrix, and only the LoRA pair then trains, with ApiQ's block-wise loss,
//! schedule and block order. The file holds ggml's bytes unchanged.
//!
//! The importance matrix ([`super::imatrix`]) comes from the quantized chain, so each block is
//! quantized for the activations it will really see.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};

use super::imatrix::imatrix;
use crate::ggml::{stock, GgmlType};
use crate::nn::block::{Rope, LINEARS};
use crate::nn::hparams::HParams;
use crate::nn::model::BlockWeights;
use crate::quant::FrozenBase;

/// Linear `w` (`[out, in]`) quantized by ggml into `ty` with importance `imatrix` (F16/F32
/// need none and get none).
pub fn freeze(w: &Tensor, ty: GgmlType, imatrix: &[f32]) -> Result<FrozenBase> {
    let (_, cols) = w.dims2()?;
    let x: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let raw = match ty {
        GgmlType::F32 | GgmlType::F16 => {
            let mut raw = Vec::new();
            crate::ggml::convert::encode(ty, &x, &mut raw)?;
            raw
        }
        _ => stock::quantize_imatrix(ty, &x, cols, Some(imatrix))?,
    };
    let weight = match ty {
        GgmlType::F32 | GgmlType::F16 => crate::ggml::convert::decode(ty, &raw, x.len())?,
        _ => stock::dequantize(ty, &raw)?,
    };
    Ok(FrozenBase { ty, raw, weight })
}

/// Every linear of `bw` frozen into the type `type_of(linear, in_features)`, with the
/// importance matrix of the quantized chain's windows `q_in`.
pub fn freeze_block(
    hp: &HParams,
    rope: &Rope,
    bw: &BlockWeights,
    q_in: &[Tensor],
    type_of: impl Fn(usize, usize) -> GgmlType,
) -> Result<Vec<FrozenBase>> {
    let im = imatrix(hp, rope, bw, q_in)?;
    bw.w.iter()
        .zip(&im)
        .enumerate()
        .map(|(i, (w, im))| {
            let ty = type_of(i, w.dim(1)?);
            freeze(w, ty, im).with_context(|| format!("{}: {ty}", LINEARS[i]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_importance_matrix_steers_ggml_towards_the_heavy_columns() {
        // A weight whose error matters only where the activations are large: quantized with
        // that importance, the error on the heavy columns must drop against no importance.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (rows, cols) = (32, 256);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| ((0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0) * 0.05)
            .collect();
        let im: Vec<f32> = (0..cols)
            .map(|c| if c % 16 == 0 { 100.0 } else { 0.01 })
            .collect();
        let t = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).unwrap();
        let heavy_err = |q: &[f32]| -> f64 {
            q.iter()
                .zip(&w)
                .enumerate()
                .filter(|(i, _)| (i % cols) % 16 == 0)
                .map(|(_, (a, b))| f64::from(a - b).powi(2))
                .sum()
        };
        for ty in [GgmlType::IQ2_XS, GgmlType::Q2_K] {
            let with = freeze(&t, ty, &im).unwrap();
            let flat = vec![1.0f32; cols];
            let without = freeze(&t, ty, &flat).unwrap();
            assert_eq!(with.raw.len(), rows * ty.type_size);
            assert_eq!(stock::dequantize(ty, &with.raw).unwrap(), with.weight);
            assert!(
                heavy_err(&with.weight) < 0.5 * heavy_err(&without.weight),
                "{ty}: {} vs {}",
                heavy_err(&with.weight),
                heavy_err(&without.weight)
            );
        }
    }
}
