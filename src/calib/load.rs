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
    HostTensor::read(src, name)?.upload(dtype, dev)
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

/// A tensor read and dequantized on the host: its values, row-major, and its shape.
pub struct HostTensor {
    values: Vec<f32>,
    shape: Vec<usize>,
}

impl HostTensor {
    fn read(src: &ModelSource, name: &str) -> Result<HostTensor> {
        let t = src
            .tensor(name)
            .with_context(|| format!("{}: tensor `{name}` is missing", src.path().display()))?;
        Ok(HostTensor {
            shape: t.ne.iter().rev().map(|&n| n as usize).collect(),
            values: src.read(&t)?,
        })
    }

    fn upload(self, dtype: DType, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.values, self.shape, dev)?.to_dtype(dtype)?)
    }
}

/// One block's tensors on the host: the part of loading a block that needs no device, so a
/// thread can read and dequantize the next block while the current one trains.
pub struct HostBlock {
    w: Vec<HostTensor>,
    attn_norm: HostTensor,
    ffn_norm: HostTensor,
    bias: [Option<HostTensor>; 3],
}

pub fn read_block(src: &ModelSource, hp: &HParams, layer: usize) -> Result<HostBlock> {
    let name = |s: &str| format!("blk.{layer}.{s}");
    let bias = |l: &str| -> Result<Option<HostTensor>> {
        hp.qkv_bias
            .then(|| HostTensor::read(src, &name(&format!("{l}.bias"))))
            .transpose()
    };
    Ok(HostBlock {
        w: LINEARS
            .iter()
            .map(|l| HostTensor::read(src, &name(&format!("{l}.weight"))))
            .collect::<Result<_>>()?,
        attn_norm: HostTensor::read(src, &name("attn_norm.weight"))?,
        ffn_norm: HostTensor::read(src, &name("ffn_norm.weight"))?,
        bias: [bias("attn_q")?, bias("attn_k")?, bias("attn_v")?],
    })
}

impl HostBlock {
    /// The seven linears' weights as f32 tensors on the CPU (copies: the block still uploads).
    pub fn linears_on_cpu(&self) -> Result<Vec<Tensor>> {
        self.w
            .iter()
            .map(|t| {
                Ok(Tensor::from_slice(
                    &t.values,
                    t.shape.as_slice(),
                    &Device::Cpu,
                )?)
            })
            .collect()
    }

    /// The block's weights on `dev`, in `dtype`.
    pub fn upload(self, dtype: DType, dev: &Device) -> Result<BlockWeights> {
        let [q, k, v] = self.bias;
        let up = |t: Option<HostTensor>| t.map(|t| t.upload(dtype, dev)).transpose();
        Ok(BlockWeights {
            norms: BlockNorms {
                attn_norm: self.attn_norm.upload(dtype, dev)?,
                ffn_norm: self.ffn_norm.upload(dtype, dev)?,
                bias: [up(q)?, up(k)?, up(v)?],
            },
            w: self
                .w
                .into_iter()
                .map(|t| t.upload(dtype, dev))
                .collect::<Result<_>>()?,
            frozen: Vec::new(),
            kgrids: Vec::new(),
            imatrix: Vec::new(),
        })
    }
}

pub fn block(
    src: &ModelSource,
    hp: &HParams,
    layer: usize,
    dtype: DType,
    dev: &Device,
) -> Result<BlockWeights> {
    read_block(src, hp, layer)?.upload(dtype, dev)
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
