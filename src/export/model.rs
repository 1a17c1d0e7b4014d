//! Converts a [`ModelSource`] to a GGUF model without calibration: F32, F16, BF16, Q8_0, Q4_0
//! or Q4_1 (every matrix, embeddings and output included, as `llama-quantize --pure`). Vectors
//! (norms, biases, rope factors) stay F32, as llama.cpp's converter keeps them; a matrix whose
//! rows do not split into the type's blocks falls back to F16.

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::ggml::convert::encode;
use crate::ggml::GgmlType;
use crate::gguf::keys;
use crate::gguf::{GgufWriter, TensorPlan, Value};
use crate::report::Progress;
use crate::source::ModelSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutType {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
}

impl OutType {
    pub fn ggml(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::Bf16 => GgmlType::BF16,
            OutType::Q8_0 => GgmlType::Q8_0,
            OutType::Q4_0 => GgmlType::Q4_0,
            OutType::Q4_1 => GgmlType::Q4_1,
        }
    }

    /// `llama_ftype` (include/llama.h): ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q4_1 3,
    /// MOSTLY_Q8_0 7, MOSTLY_BF16 32.
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q4_0 => 2,
            OutType::Q4_1 => 3,
            OutType::Q8_0 => 7,
            OutType::Bf16 => 32,
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub bytes: u64,
    pub n_tensors: usize,
}

fn tensor_type(out: OutType, matrix: bool, ne0: u64) -> GgmlType {
    if !matrix {
        return GgmlType::F32;
    }
    let t = out.ggml();
    if t.row_size(ne0).is_some() {
        t
    } else {
        GgmlType::F16
    }
}

/// Values converted per step: peak memory stays near one chunk however large the tensor.
const CHUNK_VALUES: usize = 1 << 20;

pub fn convert(src: &ModelSource, out: &Path, ty: OutType, progress: &Progress) -> Result<Written> {
    let mut kv = src.metadata();
    let insert_at = kv
        .iter()
        .position(|(k, _)| k == keys::GENERAL_ARCHITECTURE)
        .map_or(0, |i| i + 1);
    kv.insert(
        insert_at,
        (keys::GENERAL_FILE_TYPE.into(), Value::U32(ty.file_type())),
    );
    if !kv
        .iter()
        .any(|(k, _)| k == keys::GENERAL_QUANTIZATION_VERSION)
    {
        kv.push((keys::GENERAL_QUANTIZATION_VERSION.into(), Value::U32(2)));
    }
    kv.push((
        keys::GENERAL_QUANTIZED_BY.into(),
        Value::String(format!("apiq2gguf {}", env!("CARGO_PKG_VERSION"))),
    ));

    let tensors = src.tensors();
    let plan: Vec<TensorPlan> = tensors
        .iter()
        .map(|t| TensorPlan {
            name: t.name.clone(),
            ty: tensor_type(ty, t.matrix, t.ne[0]),
            ne: t.ne.clone(),
        })
        .collect();
    let mut w = GgufWriter::create(out, &kv, plan.clone())?;
    let bar = progress.bar(tensors.len() as u64, "converting");
    let mut buf = Vec::new();
    for (t, p) in tensors.iter().zip(&plan) {
        bar.set_message(t.name.clone());
        w.begin_tensor(&t.name)?;
        let step = t.rows_per_chunk(CHUNK_VALUES);
        let n_rows = t.n_rows();
        for r0 in (0..n_rows).step_by(step) {
            let values = src.read_rows(t, r0..(r0 + step).min(n_rows))?;
            buf.clear();
            encode(p.ty, &values, &mut buf).with_context(|| format!("tensor `{}`", t.name))?;
            w.append(&buf)?;
        }
        w.end_tensor()?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let bytes = w.finish()?;
    Ok(Written {
        bytes,
        n_tensors: tensors.len(),
    })
}
