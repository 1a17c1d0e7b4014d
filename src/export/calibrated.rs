//! Outputs of a calibration, streamed block by block: `OUT` (the base model: calibrated
//! linears as F16 values on the learned grid, embeddings and output F16, norms F32) and
//! `OUT.lora.gguf` (the LoRA adapter, F16, for `llama.cpp --lora` and Ollama `ADAPTER`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::apiq::qblock::FinalLinear;
use crate::apiq::recipe::Recipe;
use crate::ggml::convert::encode;
use crate::ggml::GgmlType;
use crate::gguf::keys;
use crate::gguf::{GgufWriter, TensorPlan, Value};
use crate::nn::block::LINEARS;
use crate::source::{ModelSource, SourceTensor};

/// `OUT.gguf` → `OUT.lora.gguf` (`OUT` without `.gguf` gets `.lora.gguf` appended).
pub fn adapter_path(out: &Path) -> PathBuf {
    let s = out.to_string_lossy();
    PathBuf::from(match s.strip_suffix(".gguf") {
        Some(stem) => format!("{stem}.lora.gguf"),
        None => format!("{s}.lora.gguf"),
    })
}

fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

fn is_calibrated_linear(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?.split_once('.')?.1;
    LINEARS.iter().position(|l| rest == format!("{l}.weight"))
}

pub struct CalibratedWriter<'a> {
    src: &'a ModelSource,
    base: GgufWriter,
    adapter: Option<GgufWriter>,
    /// Source tensors of each block, in plan order.
    blocks: Vec<Vec<SourceTensor>>,
}

fn apiq_metadata(r: &Recipe, calib_hash: &str) -> Vec<(String, Value)> {
    let mut kv = vec![
        (
            "apiq.method".to_string(),
            Value::String(format!("{:?}", r.method).to_lowercase()),
        ),
        ("apiq.bits".into(), Value::U32(r.quant.bits)),
        (
            "apiq.group_size".into(),
            Value::U32(r.quant.group_size as u32),
        ),
        ("apiq.symmetric".into(), Value::Bool(r.quant.symmetric)),
        ("apiq.epochs".into(), Value::U32(r.epochs as u32)),
        ("apiq.nsamples".into(), Value::U32(r.nsamples as u32)),
        ("apiq.seqlen".into(), Value::U32(r.seqlen as u32)),
        ("apiq.seed".into(), Value::U64(r.seed)),
        (
            "apiq.calibration_hash".into(),
            Value::String(calib_hash.to_string()),
        ),
        (
            "apiq.tool_version".into(),
            Value::String(env!("CARGO_PKG_VERSION").to_string()),
        ),
    ];
    if let Some(l) = &r.lora {
        kv.push(("apiq.lora_rank".into(), Value::U32(l.rank as u32)));
        kv.push(("apiq.lora_alpha".into(), Value::F32(l.alpha as f32)));
    }
    kv
}

impl<'a> CalibratedWriter<'a> {
    /// Plans both files and writes everything that does not depend on calibration.
    pub fn create(
        src: &'a ModelSource,
        out: &Path,
        r: &Recipe,
        n_layer: usize,
        calib_hash: &str,
    ) -> Result<Self> {
        let arch = src.arch_name()?.to_string();
        let tensors = src.tensors();
        let (globals, in_blocks): (Vec<SourceTensor>, Vec<SourceTensor>) = tensors
            .into_iter()
            .partition(|t| block_of(&t.name).is_none());
        let mut blocks: Vec<Vec<SourceTensor>> = vec![Vec::new(); n_layer];
        for t in in_blocks {
            let b = block_of(&t.name).expect("partitioned");
            blocks
                .get_mut(b)
                .with_context(|| format!("tensor `{}` beyond block count {n_layer}", t.name))?
                .push(t);
        }
        let ty = |t: &SourceTensor| {
            if t.matrix {
                GgmlType::F16
            } else {
                GgmlType::F32
            }
        };
        let plan: Vec<TensorPlan> = globals
            .iter()
            .chain(blocks.iter().flatten())
            .map(|t| TensorPlan {
                name: t.name.clone(),
                ty: ty(t),
                ne: t.ne.clone(),
            })
            .collect();
        let mut kv = src.metadata();
        kv.retain(|(k, _)| !k.starts_with("apiq.") && k != keys::GENERAL_FILE_TYPE);
        let at = kv
            .iter()
            .position(|(k, _)| k == keys::GENERAL_ARCHITECTURE)
            .map_or(0, |i| i + 1);
        kv.insert(at, (keys::GENERAL_FILE_TYPE.into(), Value::U32(1)));
        if !kv.iter().any(|(k, _)| k == keys::GENERAL_QUANTIZED_BY) {
            kv.push((
                keys::GENERAL_QUANTIZED_BY.into(),
                Value::String(format!("apiq2gguf {}", env!("CARGO_PKG_VERSION"))),
            ));
        }
        kv.extend(apiq_metadata(r, calib_hash));
        let mut base = GgufWriter::create(out, &kv, plan)?;
        let mut buf = Vec::new();
        for t in &globals {
            buf.clear();
            encode(ty(t), &src.read(t)?, &mut buf)?;
            base.write_tensor(&t.name, &buf)?;
        }
        let adapter = match &r.lora {
            Some(l) => {
                let mut plan = Vec::new();
                for b in &blocks {
                    for t in b {
                        if is_calibrated_linear(&t.name).is_some() {
                            plan.push(TensorPlan {
                                name: format!("{}.lora_a", t.name),
                                ty: GgmlType::F16,
                                ne: vec![t.ne[0], l.rank as u64],
                            });
                            plan.push(TensorPlan {
                                name: format!("{}.lora_b", t.name),
                                ty: GgmlType::F16,
                                ne: vec![l.rank as u64, t.ne[1]],
                            });
                        }
                    }
                }
                let name = kv
                    .iter()
                    .find(|(k, _)| k == keys::GENERAL_NAME)
                    .map(|(_, v)| v.clone());
                let mut akv = vec![
                    (keys::GENERAL_ARCHITECTURE.to_string(), Value::String(arch)),
                    (keys::GENERAL_TYPE.into(), Value::String("adapter".into())),
                    ("adapter.type".into(), Value::String("lora".into())),
                    ("adapter.lora.alpha".into(), Value::F32(l.alpha as f32)),
                ];
                if let Some(n) = name {
                    akv.push((keys::GENERAL_NAME.into(), n));
                }
                akv.extend(apiq_metadata(r, calib_hash));
                Some(GgufWriter::create(&adapter_path(out), &akv, plan)?)
            }
            None => None,
        };
        Ok(CalibratedWriter {
            src,
            base,
            adapter,
            blocks,
        })
    }

    /// Streams block `layer`: its calibrated linears and its other tensors, and its LoRA.
    pub fn write_block(&mut self, layer: usize, linears: &[FinalLinear]) -> Result<()> {
        let mut buf = Vec::new();
        for t in &self.blocks[layer] {
            buf.clear();
            match is_calibrated_linear(&t.name) {
                Some(i) => match &linears[i].q {
                    Some(q) => encode(GgmlType::F16, &q.weight, &mut buf)?,
                    None => encode(GgmlType::F16, &self.src.read(t)?, &mut buf)?,
                },
                None => encode(
                    if t.matrix {
                        GgmlType::F16
                    } else {
                        GgmlType::F32
                    },
                    &self.src.read(t)?,
                    &mut buf,
                )?,
            }
            self.base.write_tensor(&t.name, &buf)?;
            if let (Some(a), Some(i)) = (self.adapter.as_mut(), is_calibrated_linear(&t.name)) {
                let (la, lb, _) = linears[i]
                    .lora
                    .as_ref()
                    .context("calibrated linear without LoRA")?;
                for (suffix, m) in [("lora_a", la), ("lora_b", lb)] {
                    buf.clear();
                    let v: Vec<f32> = m
                        .to_dtype(candle_core::DType::F32)?
                        .flatten_all()?
                        .to_vec1()?;
                    encode(GgmlType::F16, &v, &mut buf)?;
                    a.write_tensor(&format!("{}.{suffix}", t.name), &buf)?;
                }
            }
        }
        Ok(())
    }

    /// Makes both files appear, the adapter first: an `OUT` never lacks its adapter.
    pub fn finish(self) -> Result<(u64, Option<u64>)> {
        let adapter = match self.adapter {
            Some(a) => Some(a.finish()?),
            None => None,
        };
        Ok((self.base.finish()?, adapter))
    }
}

/// FNV-1a 64 of the calibration token ids: identifies the calibration data in the metadata.
pub fn calib_hash(tokens: &[u32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tokens {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("fnv1a64:{h:016x}")
}
