//! The importance matrix of a block, as `llama-imatrix` computes it: per linear, one value per
//! input column, the mean of the squared input activation over every token of the calibration
//! windows. The pipeline feeds it the windows of the quantized chain (through the blocks
//! already quantized, LoRA included), so ggml quantizes each block (a frozen base, or the start
//! of a K grid's clipping) for the activations it will really see.

use std::cell::RefCell;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, D};

use crate::nn::block::{self, Rope, LINEARS};
use crate::nn::hparams::HParams;
use crate::nn::model::BlockWeights;

/// Per linear, the mean squared input activation of each column over the windows `x`
/// (`[1, L, E]` each), through the block's full-precision weights.
pub fn imatrix(
    hp: &HParams,
    rope: &Rope,
    bw: &BlockWeights,
    x: &[Tensor],
) -> Result<Vec<Vec<f32>>> {
    let sums: RefCell<Vec<Option<Tensor>>> = RefCell::new(vec![None; LINEARS.len()]);
    let mut tokens = 0usize;
    for w in x {
        let (b, l, _) = w.dims3()?;
        tokens += b * l;
        block::forward(
            hp,
            rope,
            &bw.norms,
            &|i, h| {
                let sq = h.to_dtype(DType::F32)?.sqr()?;
                let col = sq.flatten_to(D::Minus2)?.sum(0)?;
                let mut s = sums.borrow_mut();
                s[i] = Some(match s[i].take() {
                    Some(acc) => (acc + col)?,
                    None => col,
                });
                block::matmul_t(h, &bw.w[i])
            },
            w,
        )?;
    }
    sums.into_inner()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.with_context(|| format!("{}: no input seen", LINEARS[i]))?;
            Ok((s / tokens.max(1) as f64)?.to_vec1()?)
        })
        .collect()
}
