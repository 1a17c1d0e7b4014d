//! Model weights from a [`ModelSource`] as candle tensors, one block at a time.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::nn::block::{BlockNorms, LINEARS};
use crate::nn::hparams::HParams;
use crate::nn::model::{BlockWeights, Model};
use crate::pack::mix::ModelShape;
use crate::source::ModelSource;

/// A tensor by GGUF name, row-major with the ggml dims reversed (`[out, in]` for a matrix).
pub fn tensor(src: &ModelSource, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
    let t = src
        .tensor(name)
        .with_context(|| format!("{}: tensor `{name}` is missing", src.path().display()))?;
    let shape: Vec<usize> = t.ne.iter().rev().map(|&n| n as usize).collect();
    let v = src.read(&t)?;
    Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
}

pub fn hparams(src: &ModelSource) -> Result<HParams> {
    let factors = match src.tensor(crate::arch::ROPE_FREQS) {
        Some(t) => Some(src.read(&t)?),
        None => None,
    };
    HParams::from_metadata(&src.metadata(), factors)
        .with_context(|| format!("{}", src.path().display()))
}

/// What llama-quantize's mixtures read of the model.
pub fn shape(hp: &HParams) -> ModelShape {
    ModelShape {
        n_layer: hp.n_layer,
        n_gqa: hp.n_head / hp.n_head_kv.max(1),
    }
}

pub fn block(
    src: &ModelSource,
    hp: &HParams,
    layer: usize,
    dtype: DType,
    dev: &Device,
) -> Result<BlockWeights> {
    let name = |s: &str| format!("blk.{layer}.{s}");
    let w = LINEARS
        .iter()
        .map(|l| tensor(src, &name(&format!("{l}.weight")), dtype, dev))
        .collect::<Result<Vec<_>>>()?;
    let bias = |l: &str| -> Result<Option<Tensor>> {
        if hp.qkv_bias {
            Ok(Some(tensor(src, &name(&format!("{l}.bias")), dtype, dev)?))
        } else {
            Ok(None)
        }
    };
    Ok(BlockWeights {
        norms: BlockNorms {
            attn_norm: tensor(src, &name("attn_norm.weight"), dtype, dev)?,
            ffn_norm: tensor(src, &name("ffn_norm.weight"), dtype, dev)?,
            bias: [bias("attn_q")?, bias("attn_k")?, bias("attn_v")?],
        },
        w,
        frozen: Vec::new(),
        kgrids: Vec::new(),
        imatrix: Vec::new(),
    })
}

/// The embedding matrix `[n_vocab, E]`.
pub fn embedding(src: &ModelSource, dtype: DType, dev: &Device) -> Result<Tensor> {
    tensor(src, "token_embd.weight", dtype, dev)
}

/// The whole model in memory (for checks and small models).
pub fn model(src: &ModelSource, dtype: DType, dev: &Device) -> Result<Model> {
    let hp = hparams(src)?;
    let embed = embedding(src, dtype, dev)?;
    let output = match src.tensor("output.weight") {
        Some(_) => tensor(src, "output.weight", dtype, dev)?,
        None => embed.clone(),
    };
    let blocks = (0..hp.n_layer)
        .map(|l| block(src, &hp, l, dtype, dev))
        .collect::<Result<Vec<_>>>()?;
    Ok(Model {
        output_norm: tensor(src, "output_norm.weight", dtype, dev)?,
        hp,
        embed,
        blocks,
        output,
    })
}

/// Block-0 inputs: the embeddings of each window, `[1, L, E]` each.
pub fn embed_windows(
    src: &ModelSource,
    hp: &HParams,
    windows: &[Vec<u32>],
    dtype: DType,
    dev: &Device,
) -> Result<Vec<Tensor>> {
    let embed = embedding(src, dtype, dev)?;
    Ok(windows
        .iter()
        .map(|w| {
            let ids = Tensor::from_slice(w, (1, w.len()), dev)?;
            embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((1, w.len(), hp.n_embd))
        })
        .collect::<candle_core::Result<_>>()?)
}
