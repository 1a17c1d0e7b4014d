//! A model to convert: an HF directory or a GGUF file, seen through one interface: the GGUF
//! metadata it implies, its tensors under GGUF names and ggml dims, and each tensor as f32
//! (dequantized, and for HF llama checkpoints with q/k rows permuted to GGUF's RoPE order).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::arch::{self, Permute, Role, BLOCK_TENSORS};
use crate::ggml::convert::decode;
use crate::gguf::keys::{self, arch_key};
use crate::gguf::{GgufFile, Value};
use crate::hf::config::{ModelSpec, RopeScaling};
use crate::hf::weights::Weights;

#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// GGUF name.
    pub name: String,
    /// ggml dims.
    pub ne: Vec<u64>,
    /// 2-D weights take the requested output type; vectors stay F32.
    pub matrix: bool,
    origin: Origin,
}

impl SourceTensor {
    pub fn row_len(&self) -> usize {
        self.ne[0] as usize
    }

    /// Rows of `row_len` values; a 1-D tensor is a single row.
    pub fn n_rows(&self) -> usize {
        self.ne[1..].iter().product::<u64>() as usize
    }

    /// Rows per read so that one chunk holds about `target` values; whole RoPE heads for
    /// permuted tensors, since the permutation moves rows only within a head.
    pub fn rows_per_chunk(&self, target: usize) -> usize {
        let unit = match &self.origin {
            Origin::Hf {
                permute_heads: Some(h),
                ..
            } => (self.n_rows() / h).max(1),
            _ => 1,
        };
        (target / self.row_len().max(1) / unit).max(1) * unit
    }
}

#[derive(Debug, Clone)]
enum Origin {
    Gguf(usize),
    Hf {
        name: String,
        permute_heads: Option<usize>,
    },
    RopeFreqs,
}

pub enum ModelSource {
    Hf {
        dir: PathBuf,
        spec: ModelSpec,
        weights: Weights,
        tokenizer: Vec<(String, Value)>,
        tensors: Vec<SourceTensor>,
    },
    Gguf(GgufFile),
}

impl ModelSource {
    /// Opens an HF directory or a `.gguf` file. `tokenizer_pre` overrides pre-tokenizer detection.
    pub fn open(path: &Path, tokenizer_pre: Option<&str>) -> Result<ModelSource> {
        if path.is_dir() {
            Self::open_hf(path, tokenizer_pre)
        } else if path.is_file() {
            Ok(ModelSource::Gguf(GgufFile::open(path)?))
        } else {
            bail!("{}: no such file or directory", path.display())
        }
    }

    fn open_hf(dir: &Path, tokenizer_pre: Option<&str>) -> Result<ModelSource> {
        let cfg = dir.join("config.json");
        if !cfg.exists() {
            bail!(
                "{}: missing (an HF model directory needs config.json)",
                cfg.display()
            );
        }
        let spec = ModelSpec::load(&cfg)?;
        let weights = Weights::open(dir)?;
        let tokenizer = crate::hf::tokenizer::export(dir, spec.vocab_size, tokenizer_pre)?;
        let n_tokens = tokenizer
            .iter()
            .find(|(k, _)| k == keys::TOKENIZER_TOKENS)
            .and_then(|(_, v)| v.as_array().map(<[Value]>::len))
            .unwrap_or(0);
        if n_tokens != spec.vocab_size {
            bail!(
                "{}: the tokenizer has {n_tokens} tokens but config.json says vocab_size {}",
                dir.join("tokenizer.json").display(),
                spec.vocab_size
            );
        }
        let tensors = hf_tensors(&spec, &weights)?;
        Ok(ModelSource::Hf {
            dir: dir.to_path_buf(),
            spec,
            weights,
            tokenizer,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Hf { dir, .. } => dir,
            ModelSource::Gguf(g) => &g.path,
        }
    }

    /// `general.architecture` of the output.
    pub fn arch_name(&self) -> Result<&str> {
        match self {
            ModelSource::Hf { spec, .. } => Ok(spec.arch.gguf_name),
            ModelSource::Gguf(g) => g
                .get_str(keys::GENERAL_ARCHITECTURE)
                .with_context(|| format!("{}: no general.architecture", g.path.display())),
        }
    }

    /// Metadata of the output model, apart from the file type and our own provenance keys.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        match self {
            ModelSource::Gguf(g) => {
                g.kv.iter()
                    .filter(|(k, _)| {
                        ![
                            keys::GENERAL_FILE_TYPE,
                            keys::GENERAL_ALIGNMENT,
                            keys::GENERAL_QUANTIZED_BY,
                        ]
                        .contains(&k.as_str())
                    })
                    .cloned()
                    .collect()
            }
            ModelSource::Hf {
                dir,
                spec,
                tokenizer,
                ..
            } => {
                let a = spec.arch.gguf_name;
                let name = dir
                    .canonicalize()
                    .ok()
                    .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
                let u32v = |v: usize| Value::U32(v as u32);
                let mut kv: Vec<(String, Value)> = vec![
                    (keys::GENERAL_ARCHITECTURE.into(), Value::String(a.into())),
                    (keys::GENERAL_TYPE.into(), Value::String("model".into())),
                ];
                if let Some(n) = name {
                    kv.push((keys::GENERAL_NAME.into(), Value::String(n)));
                }
                kv.extend([
                    (arch_key(a, keys::VOCAB_SIZE), u32v(spec.vocab_size)),
                    (arch_key(a, keys::CONTEXT_LENGTH), u32v(spec.n_ctx)),
                    (arch_key(a, keys::EMBEDDING_LENGTH), u32v(spec.n_embd)),
                    (arch_key(a, keys::BLOCK_COUNT), u32v(spec.n_layer)),
                    (arch_key(a, keys::FEED_FORWARD_LENGTH), u32v(spec.n_ff)),
                    (arch_key(a, keys::HEAD_COUNT), u32v(spec.n_head)),
                    (arch_key(a, keys::HEAD_COUNT_KV), u32v(spec.n_head_kv)),
                    (
                        arch_key(a, keys::ROPE_FREQ_BASE),
                        Value::F32(spec.rope_theta),
                    ),
                    (arch_key(a, keys::RMS_EPS), Value::F32(spec.rms_eps)),
                    (arch_key(a, keys::ROPE_DIMENSION_COUNT), u32v(spec.head_dim)),
                ]);
                if spec.head_dim * spec.n_head != spec.n_embd {
                    kv.push((arch_key(a, keys::KEY_LENGTH), u32v(spec.head_dim)));
                    kv.push((arch_key(a, keys::VALUE_LENGTH), u32v(spec.head_dim)));
                }
                if let RopeScaling::Linear { factor } = spec.rope_scaling {
                    kv.push((
                        arch_key(a, keys::ROPE_SCALING_TYPE),
                        Value::String("linear".into()),
                    ));
                    kv.push((arch_key(a, keys::ROPE_SCALING_FACTOR), Value::F32(factor)));
                }
                kv.extend(tokenizer.iter().cloned());
                kv
            }
        }
    }

    pub fn tensors(&self) -> Vec<SourceTensor> {
        match self {
            ModelSource::Hf { tensors, .. } => tensors.clone(),
            ModelSource::Gguf(g) => g
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| SourceTensor {
                    name: t.name.clone(),
                    ne: t.ne.clone(),
                    matrix: t.ne.len() >= 2 && !t.name.ends_with("_norm.weight"),
                    origin: Origin::Gguf(i),
                })
                .collect(),
        }
    }

    /// The tensor with this GGUF name.
    pub fn tensor(&self, name: &str) -> Option<SourceTensor> {
        self.tensors().into_iter().find(|t| t.name == name)
    }

    /// A whole tensor as f32 in ggml order (row `r` of a `[out, in]` weight is values `r*in..`).
    pub fn read(&self, t: &SourceTensor) -> Result<Vec<f32>> {
        self.read_rows(t, 0..t.n_rows())
    }

    /// Rows `rows` of a tensor as f32 (a 1-D tensor is one row). Permuted tensors must be read
    /// in whole heads ([`SourceTensor::rows_per_chunk`]). Refuses NaN and Inf: a model that has
    /// them is broken, and they would poison calibration.
    pub fn read_rows(&self, t: &SourceTensor, rows: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let first = rows.start * t.row_len();
        let (values, file) = match (&t.origin, self) {
            (Origin::Gguf(i), ModelSource::Gguf(g)) => {
                let info = &g.tensors[*i];
                let row_size = info.ty.row_size(info.ne[0]).expect("checked by the reader");
                let data = g.read_tensor_bytes(
                    info,
                    rows.start as u64 * row_size..rows.end as u64 * row_size,
                )?;
                let v = decode(info.ty, &data, rows.len() * t.row_len())
                    .with_context(|| format!("{}: tensor `{}`", g.path.display(), info.name))?;
                (v, g.path.clone())
            }
            (
                Origin::Hf {
                    name,
                    permute_heads,
                },
                ModelSource::Hf { weights, .. },
            ) => {
                let v = weights.read_rows(name, t.row_len(), rows.clone())?;
                let v = match permute_heads {
                    Some(h) if t.ne.len() == 1 => arch::permute_rows(&v, v.len(), 1, *h),
                    Some(h) => {
                        let heads_here = rows.len() * h / t.n_rows();
                        arch::permute_rows(&v, rows.len(), t.row_len(), heads_here)
                    }
                    None => v,
                };
                (
                    v,
                    weights
                        .file_of(name)
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                )
            }
            (Origin::RopeFreqs, ModelSource::Hf { spec, dir, .. }) => (
                spec.rope_factors()
                    .expect("planned only with llama3 rope scaling"),
                dir.join("config.json"),
            ),
            _ => unreachable!("tensors come from their own source"),
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: tensor `{}` has a non-finite value ({}) at element {}",
                file.display(),
                t.name,
                values[i],
                first + i
            );
        }
        Ok(values)
    }
}

/// The GGUF tensor list of an HF checkpoint, each checked against the shape config.json implies.
fn hf_tensors(spec: &ModelSpec, w: &Weights) -> Result<Vec<SourceTensor>> {
    let mut out = Vec::new();
    let mut add = |hf: &str, gguf: String, shape: Vec<usize>, role: Role| -> Result<()> {
        let info = w
            .info(hf)
            .with_context(|| format!("{}: tensor `{hf}` is missing", w.file_of_any().display()))?;
        if info.shape != shape {
            bail!(
                "{}: tensor `{hf}` has shape {:?}, expected {:?} from config.json",
                w.file_of(hf).expect("present").display(),
                info.shape,
                shape
            );
        }
        let permute = match role {
            Role::Matrix { permute } | Role::Vector { permute } => permute,
        };
        let permute_heads = match (spec.arch.permute_qk, permute) {
            (true, Permute::Q) => Some(spec.n_head),
            (true, Permute::K) => Some(spec.n_head_kv),
            _ => None,
        };
        out.push(SourceTensor {
            name: gguf,
            ne: shape.iter().rev().map(|&n| n as u64).collect(),
            matrix: matches!(role, Role::Matrix { .. }),
            origin: Origin::Hf {
                name: hf.to_string(),
                permute_heads,
            },
        });
        Ok(())
    };
    let (e, d, v, ff) = (spec.n_embd, spec.head_dim, spec.vocab_size, spec.n_ff);
    let mat = Role::Matrix {
        permute: Permute::None,
    };
    let vec_ = Role::Vector {
        permute: Permute::None,
    };
    add(arch::EMBED.0, arch::EMBED.1.into(), vec![v, e], mat)?;
    add(
        arch::OUTPUT_NORM.0,
        arch::OUTPUT_NORM.1.into(),
        vec![e],
        vec_,
    )?;
    if w.contains(arch::OUTPUT.0) && !spec.tied_embeddings {
        add(arch::OUTPUT.0, arch::OUTPUT.1.into(), vec![v, e], mat)?;
    } else if !spec.tied_embeddings {
        bail!(
            "{}: `lm_head.weight` is missing and tie_word_embeddings is false",
            w.file_of_any().display()
        );
    }
    for l in 0..spec.n_layer {
        for bt in BLOCK_TENSORS {
            if bt.bias && !spec.arch.qkv_bias {
                continue;
            }
            let rows = match bt.gguf {
                "attn_q.weight" | "attn_q.bias" => spec.n_head * d,
                "attn_k.weight" | "attn_k.bias" | "attn_v.weight" | "attn_v.bias" => {
                    spec.n_head_kv * d
                }
                "ffn_gate.weight" | "ffn_up.weight" => ff,
                _ => e,
            };
            let cols = match bt.gguf {
                "attn_output.weight" => spec.n_head * d,
                "ffn_down.weight" => ff,
                _ => e,
            };
            let shape = match bt.role {
                Role::Matrix { .. } => vec![rows, cols],
                Role::Vector { .. } => vec![rows],
            };
            add(
                &format!("model.layers.{l}.{}", bt.hf),
                format!("blk.{l}.{}", bt.gguf),
                shape,
                bt.role,
            )?;
        }
    }
    if spec.rope_factors().is_some() {
        out.push(SourceTensor {
            name: arch::ROPE_FREQS.into(),
            ne: vec![(spec.head_dim / 2) as u64],
            matrix: false,
            origin: Origin::RopeFreqs,
        });
    }
    Ok(out)
}
