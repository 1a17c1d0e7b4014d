//! Outputs of a calibration, streamed block by block:
//! - `OUT`: the base model, calibrated linears in the chosen [`Format`], embeddings and output
//!   after llama.cpp's conventions for that file type, norms F32;
//! - `OUT.f16.gguf` (optional twin): `OUT` with the calibrated linears as F16 values of the
//!   learned grid instead (embeddings, output and the rest identical);
//! - `OUT.lora.gguf`: the LoRA adapter (`llama.cpp --lora`, Ollama `ADAPTER`);
//! - `OUT.Modelfile`: `FROM` + `ADAPTER` for Ollama;
//! - optionally a PEFT directory ([`super::peft`]).
//!
//! Every file appears only complete, the adapter and twin before `OUT`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use super::peft::PeftWriter;
use crate::apiq::qblock::{quantizable, FinalLinear};
use crate::apiq::recipe::Recipe;
use crate::atomic::AtomicFile;
use crate::ggml::convert::encode;
use crate::ggml::{stock, GgmlType};
use crate::gguf::keys;
use crate::gguf::{GgufWriter, TensorPlan, Value};
use crate::nn::block::{linear_of, LINEARS};
use crate::pack::format::fallback;
use crate::pack::kquants;
use crate::pack::mix::{self, ModelShape};
use crate::pack::overrides::{self, TensorType};
use crate::pack::{self, EmbedType, Format, LoraType, MappingError};
use crate::quant::{KGrid, Requantized};
use crate::source::{ModelSource, SourceTensor};

/// How the outputs are written (the calibration itself is the [`Recipe`]).
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    pub embed: EmbedType,
    pub lora_type: LoraType,
    /// Also write `OUT.f16.gguf`, the F16 fake-quant twin of `OUT`.
    pub f16_twin: bool,
    /// Also write a PEFT adapter + fake-quant base into this directory.
    pub peft: Option<PathBuf>,
    /// `--tensor-type PATTERN=TYPE`, in order.
    pub tensor_types: Vec<TensorType>,
    /// `--pure`: every calibrated linear in the format's type, no llama-quantize mixture.
    pub pure: bool,
}

impl ExportOptions {
    /// The type calibrated linear `name` (rows of `row` values) is stored in, before and after
    /// llama-quantize's fallback for rows its blocks do not divide: an override, else
    /// llama-quantize's mixture for the file type (not with `--pure`), else the format's type.
    /// The pipeline trains and quantizes with it, the writer plans with it.
    pub fn linear_type(&self, name: &str, row: u64, shape: ModelShape) -> (GgmlType, GgmlType) {
        let chosen = overrides::type_for(&self.tensor_types, name).unwrap_or_else(|| {
            match (self.pure, linear_of(name), block_of(name)) {
                (false, Some(i), Some(layer)) => {
                    mix::linear_type(self.format, LINEARS[i], layer, shape)
                }
                _ => self.format.ggml_type(),
            }
        });
        (chosen, fallback(chosen, row))
    }

    /// The K grid calibrated linear `name` trains through in a K format (its own type's, where
    /// its rows are whole super-blocks; else none: it trains on the groups).
    pub fn kgrid_of(&self, name: &str, row: u64, shape: ModelShape) -> Option<KGrid> {
        self.format.kgrid()?;
        kquants::grid_of(self.linear_type(name, row, shape).1)
    }

    /// `general.file_type` of the output.
    pub fn file_type(&self) -> u32 {
        self.format.file_type(self.pure)
    }

    /// Refuses, before any work, overrides that the outputs cannot honour.
    pub fn check_overrides(&self, tensors: &[SourceTensor]) -> Result<()> {
        for t in tensors.iter().filter(|t| t.matrix) {
            let Some(o) = self
                .tensor_types
                .iter()
                .find(|o| o.pattern.is_match(&t.name))
            else {
                continue;
            };
            if linear_of(&t.name).is_none() {
                overrides::check_plain(o, &t.name)?;
            } else if self.format.kgrid().is_some() {
                if kquants::grid_of(o.ty).is_none() {
                    bail!(
                        "--tensor-type {}={}: {} is calibrated through a K grid in --format {}; give it a K type (q2_k … q6_k)",
                        o.pattern,
                        o.ty.name.to_lowercase(),
                        t.name,
                        self.format.name()
                    );
                }
            } else if !self.format.frozen() {
                bail!(
                    "--tensor-type {}={}: {} is calibrated through --format {}'s grid; types per linear need a K format (q2_k … q6_k) or a frozen one (iq2_xxs … iq3_s)",
                    o.pattern,
                    o.ty.name.to_lowercase(),
                    t.name,
                    self.format.name()
                );
            }
        }
        Ok(())
    }
}

fn with_suffix(out: &Path, suffix: &str) -> PathBuf {
    let s = out.to_string_lossy();
    PathBuf::from(match s.strip_suffix(".gguf") {
        Some(stem) => format!("{stem}{suffix}"),
        None => format!("{s}{suffix}"),
    })
}

/// `OUT.gguf` → `OUT.lora.gguf` (`OUT` without `.gguf` gets `.lora.gguf` appended).
pub fn adapter_path(out: &Path) -> PathBuf {
    with_suffix(out, ".lora.gguf")
}

/// `OUT.gguf` → `OUT.f16.gguf`.
pub fn twin_path(out: &Path) -> PathBuf {
    with_suffix(out, ".f16.gguf")
}

/// `OUT.gguf` → `OUT.Modelfile`.
pub fn modelfile_path(out: &Path) -> PathBuf {
    with_suffix(out, ".Modelfile")
}

fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The `apiq.*` provenance keys of every output.
fn apiq_metadata(
    r: &Recipe,
    o: &ExportOptions,
    format: Format,
    hash: &str,
) -> Vec<(String, Value)> {
    let s = |v: &str| Value::String(v.to_string());
    let mut kv = vec![
        ("apiq.format".to_string(), s(format.name())),
        (
            "apiq.method".into(),
            s(r.method
                .to_possible_value()
                .expect("no skipped values")
                .get_name()),
        ),
        ("apiq.bits".into(), Value::U32(r.quant.bits)),
        (
            "apiq.group_size".into(),
            Value::U32(r.quant.group_size as u32),
        ),
        ("apiq.symmetric".into(), Value::Bool(r.quant.symmetric)),
        (
            "apiq.recipe".into(),
            s(&serde_json::to_string(r).expect("plain data")),
        ),
        ("apiq.epochs".into(), Value::U32(r.epochs as u32)),
        ("apiq.nsamples".into(), Value::U32(r.nsamples as u32)),
        ("apiq.seqlen".into(), Value::U32(r.seqlen as u32)),
        ("apiq.seed".into(), Value::U64(r.seed)),
        ("apiq.calibration_hash".into(), s(hash)),
        ("apiq.tool_version".into(), s(env!("CARGO_PKG_VERSION"))),
    ];
    if r.batch != 1 {
        kv.push(("apiq.batch_size".into(), Value::U32(r.batch as u32)));
    }
    if let Some((lo, hi)) = r.quant.zero_range {
        kv.push(("apiq.zero_range".into(), s(&format!("{lo}..={hi}"))));
    }
    if let Some(l) = &r.lora {
        kv.push(("apiq.lora_rank".into(), Value::U32(l.rank as u32)));
        kv.push(("apiq.lora_alpha".into(), Value::F32(l.alpha as f32)));
        kv.push(("apiq.lora_type".into(), s(o.lora_type.name())));
    }
    kv
}

/// One base-model output and the rules for its tensor types.
/// Embeddings and output are as in `OUT` in every output (the twin copies `OUT`'s, so that the
/// two differ only in how the calibrated linears are stored).
struct Base {
    w: GgufWriter,
    format: Format,
}

/// Bytes of a tensor ApiQ does not calibrate, in `ty`: our encoders for the plain types,
/// ggml's own quantizers (as llama-quantize) for the rest.
fn encode_plain(ty: GgmlType, x: &[f32], row_len: usize, out: &mut Vec<u8>) -> Result<()> {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => encode(ty, x, out),
        _ => {
            out.extend_from_slice(&stock::quantize(ty, x, row_len)?);
            Ok(())
        }
    }
}

/// What the writer needs of a deployed linear, on the host: the block's device tensors can go
/// while a writer thread packs it.
pub struct HostLinear {
    pub q: Option<Requantized>,
    /// LoRA A `[r, in]` and B `[out, r]`, row-major, in f32.
    pub lora: Option<(Vec<f32>, Vec<f32>)>,
}

impl HostLinear {
    pub fn of(l: FinalLinear) -> Result<HostLinear> {
        let host = |t: &candle_core::Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?)
        };
        Ok(HostLinear {
            lora: match &l.lora {
                Some((a, b, _)) => Some((host(a)?, host(b)?)),
                None => None,
            },
            q: l.q,
        })
    }
}

pub struct CalibratedWriter<'a> {
    src: &'a ModelSource,
    recipe: Recipe,
    export: ExportOptions,
    /// `OUT` first, then the twin.
    bases: Vec<Base>,
    adapter: Option<GgufWriter>,
    peft: Option<PeftWriter>,
    lora_type: LoraType,
    /// Source tensors of each block, in plan order.
    blocks: Vec<Vec<SourceTensor>>,
    tied: bool,
    shape: ModelShape,
    mapping: MappingError,
    summary: TypeSummary,
    out: PathBuf,
}

/// What a finished export wrote.
pub struct Written {
    /// Paths and byte sizes: `OUT`, the twin, the adapter.
    pub base: (PathBuf, u64),
    pub twin: Option<(PathBuf, u64)>,
    pub adapter: Option<(PathBuf, u64)>,
    pub modelfile: PathBuf,
    pub peft: Option<PathBuf>,
    /// Error the format added to the calibrated weights (the fallback types that cannot hold
    /// the grid, e.g. Q4_0 for Q2_K's rows of no whole super-blocks).
    pub mapping: MappingError,
    /// What `OUT` holds, by type.
    pub summary: TypeSummary,
}

/// What a file holds by type: the run-time summary of what a format really wrote.
#[derive(Debug, Clone, Default)]
pub struct TypeSummary {
    /// Tensors per type name, most numerous first.
    pub tensors: Vec<(&'static str, usize)>,
    /// Calibrated linears per type name, most numerous first.
    pub linears: Vec<(&'static str, usize)>,
    pub linear_bytes: u64,
    pub linear_weights: u64,
    /// Elements of all tensors.
    pub weights: u64,
    /// Calibrated linears stored in another type than they were given (llama-quantize's
    /// fallback, or F16 where ApiQ cannot quantize them), per type name.
    pub fallbacks: Vec<(&'static str, usize)>,
}

impl TypeSummary {
    fn of(plan: &[TensorPlan], fell: impl Fn(&TensorPlan) -> bool) -> Result<TypeSummary> {
        let mut s = TypeSummary::default();
        let count = |v: &mut Vec<(&'static str, usize)>, name: &'static str| match v
            .iter_mut()
            .find(|(n, _)| *n == name)
        {
            Some((_, c)) => *c += 1,
            None => v.push((name, 1)),
        };
        for t in plan {
            let n: u64 = t.ne.iter().product();
            s.weights += n;
            count(&mut s.tensors, t.ty.name);
            if linear_of(&t.name).is_some() {
                count(&mut s.linears, t.ty.name);
                s.linear_bytes += t.size()?;
                s.linear_weights += n;
                if fell(t) {
                    count(&mut s.fallbacks, t.ty.name);
                }
            }
        }
        for v in [&mut s.tensors, &mut s.linears, &mut s.fallbacks] {
            v.sort_by_key(|t| std::cmp::Reverse(t.1));
        }
        Ok(s)
    }

    pub fn linear_bpw(&self) -> f64 {
        self.linear_bytes as f64 * 8.0 / self.linear_weights.max(1) as f64
    }
}

/// What the output files are planned from.
struct PlanContext<'a> {
    o: &'a ExportOptions,
    spec: &'a crate::quant::QuantSpec,
    tied: bool,
    shape: ModelShape,
}

/// The type of `t` in an output of `format`: calibrated linears in their type
/// ([`ExportOptions::linear_type`]; F16 where ApiQ could not quantize them, and in the twin),
/// embeddings/output after llama.cpp, vectors F32.
fn tensor_type(format: Format, c: &PlanContext, t: &SourceTensor) -> GgmlType {
    if !t.matrix {
        return GgmlType::F32;
    }
    let (o, row) = (c.o, t.ne[0]);
    let (embed_of, embed, tied) = (o.format, o.embed, c.tied);
    if linear_of(&t.name).is_some() {
        return if format == Format::F16 || !(format.frozen() || quantizable(row as usize, c.spec)) {
            GgmlType::F16
        } else {
            o.linear_type(&t.name, row, c.shape).1
        };
    }
    if let Some(ty) = overrides::type_for(&o.tensor_types, &t.name) {
        return fallback(ty, row);
    }
    match t.name.as_str() {
        "output.weight" => embed_of.embed_type(true, tied, row, embed),
        "token_embd.weight" => embed_of.embed_type(false, tied, row, embed),
        _ => GgmlType::F16,
    }
}

impl<'a> CalibratedWriter<'a> {
    fn tensor_type(&self, b: &Base, t: &SourceTensor) -> GgmlType {
        let c = PlanContext {
            o: &self.export,
            spec: &self.recipe.quant,
            tied: self.tied,
            shape: self.shape,
        };
        tensor_type(b.format, &c, t)
    }

    /// Plans every file and writes everything that does not depend on calibration.
    pub fn create(
        src: &'a ModelSource,
        out: &Path,
        r: &Recipe,
        o: &ExportOptions,
        shape: ModelShape,
        calib_hash: &str,
    ) -> Result<Self> {
        let n_layer = shape.n_layer;
        o.format.check(&r.quant)?;
        let arch = src.arch_name()?.to_string();
        let tensors = src.tensors();
        o.check_overrides(&tensors)?;
        let tied = !tensors.iter().any(|t| t.name == "output.weight");
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
        let mut me = CalibratedWriter {
            src,
            recipe: r.clone(),
            export: o.clone(),
            bases: Vec::new(),
            adapter: None,
            peft: None,
            lora_type: o.lora_type,
            blocks,
            tied,
            shape,
            mapping: MappingError::default(),
            summary: TypeSummary::default(),
            out: out.to_path_buf(),
        };
        let mut src_kv = src.metadata();
        src_kv.retain(|(k, _)| !k.starts_with("apiq.") && k != keys::GENERAL_FILE_TYPE);
        let model_name = src_kv
            .iter()
            .find(|(k, _)| k == keys::GENERAL_NAME)
            .map(|(_, v)| v.clone());

        let mut outputs = vec![(out.to_path_buf(), o.format)];
        if o.f16_twin && o.format != Format::F16 {
            outputs.push((twin_path(out), Format::F16));
        }
        let c = PlanContext {
            o,
            spec: &r.quant,
            tied,
            shape,
        };
        for (path, format) in outputs {
            let plan: Vec<TensorPlan> = globals
                .iter()
                .chain(me.blocks.iter().flatten())
                .map(|t| TensorPlan {
                    name: t.name.clone(),
                    ty: tensor_type(format, &c, t),
                    ne: t.ne.clone(),
                })
                .collect();
            if path == out {
                // A fallback: a linear not in the type it was given (F16: not quantizable).
                let fell = |t: &TensorPlan| o.linear_type(&t.name, t.ne[0], shape).0 != t.ty;
                me.summary = TypeSummary::of(&plan, fell)?;
            }
            let mut kv = src_kv.clone();
            let at = kv
                .iter()
                .position(|(k, _)| k == keys::GENERAL_ARCHITECTURE)
                .map_or(0, |i| i + 1);
            kv.insert(
                at,
                (
                    keys::GENERAL_FILE_TYPE.into(),
                    Value::U32(if format == o.format {
                        o.file_type()
                    } else {
                        format.file_type(true)
                    }),
                ),
            );
            if format != Format::F16
                && !kv
                    .iter()
                    .any(|(k, _)| k == keys::GENERAL_QUANTIZATION_VERSION)
            {
                kv.push((keys::GENERAL_QUANTIZATION_VERSION.into(), Value::U32(2)));
            }
            if !kv.iter().any(|(k, _)| k == keys::GENERAL_QUANTIZED_BY) {
                kv.push((
                    keys::GENERAL_QUANTIZED_BY.into(),
                    Value::String(format!("apiq2gguf {}", env!("CARGO_PKG_VERSION"))),
                ));
            }
            kv.extend(apiq_metadata(r, o, format, calib_hash));
            let mut base = Base {
                w: GgufWriter::create(&path, &kv, plan)?,
                format,
            };
            let mut buf = Vec::new();
            for t in &globals {
                buf.clear();
                let ty = me.tensor_type(&base, t);
                encode_plain(ty, &src.read(t)?, t.row_len(), &mut buf)
                    .with_context(|| format!("{}: {ty}", t.name))?;
                base.w.write_tensor(&t.name, &buf)?;
            }
            me.bases.push(base);
        }

        if let Some(l) = &r.lora {
            let mut plan = Vec::new();
            for t in me.blocks.iter().flatten() {
                if linear_of(&t.name).is_some() {
                    let rank = l.rank as u64;
                    plan.push(TensorPlan {
                        name: format!("{}.lora_a", t.name),
                        ty: o.lora_type.for_row(t.ne[0]),
                        ne: vec![t.ne[0], rank],
                    });
                    plan.push(TensorPlan {
                        name: format!("{}.lora_b", t.name),
                        ty: o.lora_type.for_row(rank),
                        ne: vec![rank, t.ne[1]],
                    });
                }
            }
            let mut akv = vec![
                (keys::GENERAL_ARCHITECTURE.to_string(), Value::String(arch)),
                (keys::GENERAL_TYPE.into(), Value::String("adapter".into())),
                ("adapter.type".into(), Value::String("lora".into())),
                ("adapter.lora.alpha".into(), Value::F32(l.alpha as f32)),
            ];
            if let Some(n) = &model_name {
                let name = n.as_str().unwrap_or("model");
                akv.push((
                    keys::GENERAL_NAME.into(),
                    Value::String(format!("{name} ApiQ LoRA")),
                ));
                akv.push(("general.base_model.count".into(), Value::U32(1)));
                akv.push(("general.base_model.0.name".into(), n.clone()));
            }
            akv.extend(apiq_metadata(r, o, o.format, calib_hash));
            me.adapter = Some(GgufWriter::create(&adapter_path(out), &akv, plan)?);
        }
        if let Some(dir) = &o.peft {
            me.peft = Some(PeftWriter::create(src, dir, r, &globals, &me.blocks)?);
        }
        Ok(me)
    }

    /// Streams block `layer`: its calibrated linears and its other tensors, and its LoRA.
    pub fn write_block(&mut self, layer: usize, linears: &[HostLinear]) -> Result<()> {
        let mut buf = Vec::new();
        let group = self.recipe.quant.group_size;
        for ti in 0..self.blocks[layer].len() {
            let t = &self.blocks[layer][ti];
            let lin = linear_of(&t.name);
            let plain = match lin.map(|i| &linears[i].q) {
                Some(Some(_)) => None,
                _ => Some(self.src.read(t)?),
            };
            for bi in 0..self.bases.len() {
                let ty = self.tensor_type(&self.bases[bi], t);
                buf.clear();
                match (lin.map(|i| &linears[i].q), &plain) {
                    (Some(Some(q)), _) => {
                        let e = pack::encode_linear(ty, q, group, &mut buf)
                            .with_context(|| format!("{}: {ty}", t.name))?;
                        if bi == 0 {
                            self.mapping.add(&e);
                        }
                    }
                    (_, Some(x)) => encode_plain(ty, x, t.row_len(), &mut buf)
                        .with_context(|| format!("{}: {ty}", t.name))?,
                    (_, None) => unreachable!("plain data read when not calibrated"),
                }
                self.bases[bi].w.write_tensor(&t.name, &buf)?;
            }
            if let Some(p) = self.peft.as_mut() {
                match (lin.map(|i| &linears[i].q), &plain) {
                    (Some(Some(q)), _) => p.write_base(t, q.weight())?,
                    (_, Some(x)) => p.write_base(t, x)?,
                    (_, None) => unreachable!("plain data read when not calibrated"),
                }
            }
            let Some(i) = lin else { continue };
            let Some((a, b)) = linears[i].lora.as_ref() else {
                continue;
            };
            if let Some(w) = self.adapter.as_mut() {
                let rank = a.len() / t.ne[0] as usize;
                for (suffix, m, row) in [("lora_a", a, t.ne[0]), ("lora_b", b, rank as u64)] {
                    buf.clear();
                    encode(self.lora_type.for_row(row), m, &mut buf)?;
                    w.write_tensor(&format!("{}.{suffix}", t.name), &buf)?;
                }
            }
            if let Some(p) = self.peft.as_mut() {
                p.write_lora(t, a, b)?;
            }
        }
        Ok(())
    }

    /// Makes the files appear: adapter, twin and PEFT first, `OUT` and its Modelfile last, so
    /// an `OUT` never lacks its companions.
    pub fn finish(self) -> Result<Written> {
        let adapter = match self.adapter {
            Some(a) => Some((adapter_path(&self.out), a.finish()?)),
            None => None,
        };
        let peft = match self.peft {
            Some(p) => Some(p.finish()?),
            None => None,
        };
        let mut bases = self.bases.into_iter();
        let main = bases.next().expect("OUT is always planned");
        let twin = match bases.next() {
            Some(t) => Some((twin_path(&self.out), t.w.finish()?)),
            None => None,
        };
        let base = (self.out.clone(), main.w.finish()?);
        let modelfile = modelfile_path(&self.out);
        write_modelfile(
            &modelfile,
            &self.out,
            adapter.as_ref().map(|a| a.0.as_path()),
            main.format,
        )?;
        Ok(Written {
            base,
            twin,
            adapter,
            modelfile,
            peft,
            mapping: self.mapping,
            summary: self.summary,
        })
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Ollama's Modelfile beside the outputs (paths relative to the Modelfile).
fn write_modelfile(path: &Path, base: &Path, adapter: Option<&Path>, f: Format) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    let note = match f {
        Format::Apiq2 => "# APIQ2 needs a runtime with the APIQ2 type (see vendor/); stock Ollama cannot load it.\n",
        Format::Q2_0 => "# Q2_0 loads in llama.cpp but not in Ollama's GGUF reader (up to at least v0.33); use --format q2_k for Ollama.\n",
        _ => "",
    };
    let mut text = format!(
        "# Ollama: ollama create NAME -f {}\n{note}FROM ./{}\n",
        file_name(path),
        file_name(base)
    );
    if let Some(a) = adapter {
        text.push_str(&format!(
            "# Creating models with an ADAPTER needs Ollama before 0.34.1.\nADAPTER ./{}\n",
            file_name(a)
        ));
    }
    file.write_all(text.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    file.commit()
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
