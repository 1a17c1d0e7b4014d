//! A whole model in candle (embedding → blocks → norm → logits), full precision or with each
//! block's linears replaced. Used to check the block forward against llama.cpp and to score
//! calibrated models the way llama-perplexity does.

use candle_core::{Result, Tensor, D};

use super::block::{self, BlockNorms, Rope};
use super::hparams::HParams;
use crate::quant::{FrozenBase, KGrid};

/// Frozen weights of one block: norms, biases and the seven `[out, in]` matrices.
pub struct BlockWeights {
    pub norms: BlockNorms,
    pub w: Vec<Tensor>,
    /// Per linear, a frozen quantization by ggml that only the LoRA trains over; empty
    /// unless the format is one (`apiq::frozen`).
    pub frozen: Vec<FrozenBase>,
    /// Per linear, the K grid it trains through where that is not the recipe's (a K format's
    /// mixture or `--tensor-type`); empty: the recipe's for all.
    pub kgrids: Vec<Option<KGrid>>,
    /// Per linear, the importance of each input column over the quantized chain's windows
    /// (`--k-init ggml` starts from ggml's quantization with it); empty: none.
    pub imatrix: Vec<Vec<f32>>,
}

impl BlockWeights {
    pub fn forward_fp(&self, hp: &HParams, rope: &Rope, x: &Tensor) -> Result<Tensor> {
        block::forward(
            hp,
            rope,
            &self.norms,
            &|i, h| block::matmul_t(h, &self.w[i]),
            x,
        )
    }
}

pub struct Model {
    pub hp: HParams,
    /// `[n_vocab, E]`.
    pub embed: Tensor,
    pub blocks: Vec<BlockWeights>,
    pub output_norm: Tensor,
    /// `[n_vocab, E]`; the embedding when tied.
    pub output: Tensor,
}

impl Model {
    /// Hidden states entering block 0 for `tokens` `[B, L]` (u32).
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, l) = tokens.dims2()?;
        self.embed
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, l, self.hp.n_embd))
    }

    /// Logits `[B, L, V]` of the full-precision model.
    pub fn logits(&self, tokens: &Tensor) -> Result<Tensor> {
        let (_, l) = tokens.dims2()?;
        let rope = Rope::new(&self.hp, l, self.embed.dtype(), self.embed.device())?;
        let mut x = self.embed(tokens)?;
        for b in &self.blocks {
            x = b.forward_fp(&self.hp, &rope, &x)?;
        }
        self.head(&x)
    }

    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let h = block::rms_norm(x, &self.output_norm, self.hp.rms_eps)?;
        block::matmul_t(&h, &self.output)
    }
}

/// Negative log-likelihood of each position's next token, `logits` `[L, V]`, `next` the L−1
/// targets: `−log softmax(logits[i])[next[i]]` for i < L−1, in f64 like llama-perplexity.
pub fn next_token_nll(logits: &Tensor, next: &[u32]) -> Result<Vec<f64>> {
    let logits = logits.to_dtype(candle_core::DType::F32)?;
    let m = logits.max_keepdim(D::Minus1)?;
    let rows: Vec<Vec<f32>> = logits.broadcast_sub(&m)?.to_vec2()?;
    Ok(next
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let sum: f64 = rows[i].iter().map(|&v| f64::from(v.exp())).sum();
            -(f64::from(rows[i][t as usize]) - sum.ln())
        })
        .collect())
}
