//! Start where llama.cpp ends: a K grid's clipping logits set so that every sub-block's range
//! `[σ(β)·min, σ(γ)·max]` is the one ggml's own quantizer picks for the weight
//! (`ggml_quantize_chunk`, with the importance matrix of the quantized chain where the pipeline
//! gives one, as llama-quantize runs it with llama-imatrix's), instead of LWC's σ(4) = 0.982 of
//! the full range. ggml's ranges come from its weighted search (`make_qkx2_quants`, and for the
//! symmetric grids `make_q3_quants` / `make_qx_quants`, whose step sets the one factor
//! σ(γ) = −step·2^(b−1)/extreme) and may reach past the weights' own extremes; σ cannot exceed
//! 1, so those start just below 1.

use anyhow::Result;
use candle_core::DType;

use crate::ggml::stock;
use crate::pack::kquants;
use crate::quant::kspec::QK_K;
use crate::quant::quantizer::LWC_INIT;
use crate::quant::{GroupedWeight, KGrid};

const P_MIN: f32 = 1e-3;
const P_MAX: f32 = 1.0 - 1e-4;

fn logit(p: f32) -> f32 {
    let p = p.clamp(P_MIN, P_MAX);
    (p / (1.0 - p)).ln()
}

/// γ, β per sub-block of `gw` (grouped by `k.sub_len()`), from ggml's quantization of the
/// weight with importance `imatrix` (one value per input column) if given.
pub fn ggml_logits(
    k: KGrid,
    gw: &GroupedWeight,
    imatrix: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let w: Vec<f32> = gw.w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    // Without an importance matrix ggml's blocks are independent: rows of 256 quantize alike.
    let row = if imatrix.is_some() {
        gw.in_features
    } else {
        QK_K
    };
    let raw = stock::quantize_imatrix(kquants::ggml_type(k), &w, row, imatrix)?;
    let xmax: Vec<f32> = gw.xmax.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let xmin: Vec<f32> = gw.xmin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let start = LWC_INIT as f32;
    if k.symmetric() {
        let neg = -k.code_min() as f32;
        let gamma = kquants::sub_steps(k, &raw)?
            .iter()
            .zip(xmax.iter().zip(&xmin))
            .map(|(&step, (&hi, &lo))| {
                let extreme = if hi >= -lo { hi } else { lo };
                if extreme == 0.0 {
                    start
                } else {
                    logit(-step * neg / extreme)
                }
            })
            .collect();
        // β is not read by the symmetric grids.
        return Ok((gamma, vec![start; xmax.len()]));
    }
    let (hi, lo) = kquants::sub_ranges(k, &raw)?;
    let gamma = hi
        .iter()
        .zip(&xmax)
        .map(|(&h, &x)| if x > 0.0 { logit(h / x) } else { start })
        .collect();
    let beta = lo
        .iter()
        .zip(&xmin)
        .map(|(&l, &x)| if x < 0.0 { logit(l / x) } else { start })
        .collect();
    Ok((gamma, beta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::kgrid;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_start_reproduces_ggml_closer_than_lwc_does() {
        // Through our grid, ggml's ranges give weights nearer ggml's own file than σ(4) does
        // (not equal: ranges past the weights' extremes start at σ = 1 − 1e-4), and nearer the FP weights than RTN through the grid (ggml's search is
        // better than the full range).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (rows, cols) = (16, 512);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| ((0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0) * 0.05)
            .collect();
        let t = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).unwrap();
        for k in [KGrid::Q2K, KGrid::Q3K, KGrid::Q4K, KGrid::Q6K] {
            let gw = GroupedWeight::new(&t, k.sub_len()).unwrap();
            let n = gw.n_groups();
            let ty = kquants::ggml_type(k);
            let theirs = stock::dequantize(ty, &stock::quantize(ty, &w, cols).unwrap()).unwrap();
            let (g, b) = ggml_logits(k, &gw, None).unwrap();
            let tensor = |v: &[f32]| Tensor::from_slice(v, (n, 1), &Device::Cpu).unwrap();
            let ours = kgrid::requantize(k, &gw, &tensor(&g), &tensor(&b)).unwrap();
            let lwc = vec![LWC_INIT as f32; n];
            let start = kgrid::requantize(k, &gw, &tensor(&lwc), &tensor(&lwc)).unwrap();
            let err = |a: &[f32], b: &[f32]| -> f64 {
                a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
            };
            let (to_ggml, lwc_to_ggml) = (err(&ours.weight, &theirs), err(&start.weight, &theirs));
            assert!(
                to_ggml < 0.7 * lwc_to_ggml,
                "{k:?}: {to_ggml} vs {lwc_to_ggml}"
            );
            let rtn = kgrid::rtn(k, &gw).unwrap();
            let (e_ours, e_rtn) = (err(&ours.weight, &w), err(&rtn.weight, &w));
            assert!(e_ours < e_rtn, "{k:?}: ggml start {e_ours} vs RTN {e_rtn}");
        }
    }

    #[test]
    fn the_importance_matrix_moves_the_start_towards_the_heavy_columns() {
        // ggml's ranges with an importance matrix favour the columns it weighs: through our
        // grid from those ranges, the error there drops against the start without one.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (rows, cols) = (16, 512);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| ((0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0) * 0.05)
            .collect();
        let im: Vec<f32> = (0..cols)
            .map(|c| if c % 8 == 0 { 100.0 } else { 0.01 })
            .collect();
        let t = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).unwrap();
        for k in [KGrid::Q2K, KGrid::Q3K] {
            let gw = GroupedWeight::new(&t, k.sub_len()).unwrap();
            let n = gw.n_groups();
            let tensor = |v: &[f32]| Tensor::from_slice(v, (n, 1), &Device::Cpu).unwrap();
            let heavy_err = |im: Option<&[f32]>| -> f64 {
                let (g, b) = ggml_logits(k, &gw, im).unwrap();
                let q = kgrid::requantize(k, &gw, &tensor(&g), &tensor(&b)).unwrap();
                q.weight
                    .iter()
                    .zip(&w)
                    .enumerate()
                    .filter(|(i, _)| (i % cols) % 8 == 0)
                    .map(|(_, (a, b))| f64::from(a - b).powi(2))
                    .sum()
            };
            let (with, without) = (heavy_err(Some(&im)), heavy_err(None));
            assert!(with < 0.8 * without, "{k:?}: {with} vs {without}");
        }
    }
}
