//! `--peft DIR`: the calibration as Hugging Face PEFT expects it, so finetuning continues in
//! Python the way the official ApiQ code does:
//! - `DIR/adapter_model.safetensors` + `DIR/adapter_config.json`: the LoRA pairs (f32 master
//!   weights) under PEFT names, in HF row order (no RoPE permutation);
//! - `DIR/base/`: the fake-quant base (F16 values on the learned grid) as `model.safetensors`
//!   with `config.json` (copied from an HF input, or written from the GGUF's hyper-parameters)
//!   and, for HF inputs, the tokenizer files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::safetensors_out::{StDtype, StPlan, StWriter};
use crate::apiq::recipe::Recipe;
use crate::arch::{self, Permute};
use crate::atomic::AtomicFile;
use crate::nn::block::linear_of;
use crate::nn::hparams::{HParams, RopeKind};
use crate::source::{ModelSource, SourceTensor};

const PEFT_PREFIX: &str = "base_model.model.";
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

pub struct PeftWriter {
    dir: PathBuf,
    base: StWriter,
    adapter: Option<StWriter>,
    config: String,
    adapter_config: Option<String>,
    copies: Vec<PathBuf>,
    hp: HParams,
    permute_qk: bool,
}

/// `…q_proj.weight` → the PEFT key of its `lora_A`/`lora_B`.
fn lora_key(hf_weight: &str, half: &str) -> String {
    let module = hf_weight.strip_suffix(".weight").unwrap_or(hf_weight);
    format!("{PEFT_PREFIX}{module}.{half}.weight")
}

/// Shape in PyTorch order from ggml's `ne`.
fn torch_shape(ne: &[u64]) -> Vec<usize> {
    ne.iter().rev().map(|&n| n as usize).collect()
}

fn hf(t: &SourceTensor) -> Result<String> {
    arch::hf_name(&t.name).with_context(|| format!("`{}` has no Hugging Face name", t.name))
}

/// config.json for a GGUF input, from what the GGUF holds.
fn config_from_gguf(src: &ModelSource, hp: &HParams, tied: bool, vocab: usize) -> Result<String> {
    let (arch_name, model_type) = match hp.arch.as_str() {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let kv = src.metadata();
    let token = |k: &str| {
        kv.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.as_u64())
    };
    let mut c = serde_json::json!({
        "architectures": [arch_name],
        "model_type": model_type,
        "hidden_size": hp.n_embd,
        "intermediate_size": hp.n_ff,
        "num_hidden_layers": hp.n_layer,
        "num_attention_heads": hp.n_head,
        "num_key_value_heads": hp.n_head_kv,
        "head_dim": hp.head_dim,
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_base,
        "max_position_embeddings": hp.n_ctx_train,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": "float16",
        "hidden_act": "silu",
    });
    for (key, gguf) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(v) = token(gguf) {
            c[key] = v.into();
        }
    }
    Ok(serde_json::to_string_pretty(&c)?)
}

impl PeftWriter {
    pub fn create(
        src: &ModelSource,
        dir: &Path,
        r: &Recipe,
        globals: &[SourceTensor],
        blocks: &[Vec<SourceTensor>],
    ) -> Result<PeftWriter> {
        std::fs::create_dir_all(dir.join("base"))
            .with_context(|| format!("{}: cannot create directory", dir.display()))?;
        let hp = crate::calib::load::hparams(src)?;
        let permute_qk =
            arch::by_gguf_name(&hp.arch).is_some_and(|a| a.permute_qk) && hp.rope == RopeKind::Norm;
        let tied = !globals.iter().any(|t| t.name == "output.weight");
        let kept = |t: &&SourceTensor| arch::hf_name(&t.name).is_some();
        let mut plan = Vec::new();
        for t in globals.iter().chain(blocks.iter().flatten()).filter(kept) {
            plan.push(StPlan {
                name: hf(t)?,
                dtype: StDtype::F16,
                shape: torch_shape(&t.ne),
            });
        }
        let base = StWriter::create(
            &dir.join("base").join("model.safetensors"),
            plan,
            &[("format", "pt".into())],
        )?;
        let (adapter, adapter_config) = match &r.lora {
            Some(l) => {
                let mut plan = Vec::new();
                let mut targets = Vec::new();
                for t in blocks.iter().flatten() {
                    if linear_of(&t.name).is_none() {
                        continue;
                    }
                    let name = hf(t)?;
                    let module = name
                        .trim_end_matches(".weight")
                        .rsplit('.')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if !targets.contains(&module) {
                        targets.push(module);
                    }
                    let (inp, out) = (t.ne[0] as usize, t.ne[1] as usize);
                    plan.push(StPlan {
                        name: lora_key(&name, "lora_A"),
                        dtype: StDtype::F32,
                        shape: vec![l.rank, inp],
                    });
                    plan.push(StPlan {
                        name: lora_key(&name, "lora_B"),
                        dtype: StDtype::F32,
                        shape: vec![out, l.rank],
                    });
                }
                let w = StWriter::create(
                    &dir.join("adapter_model.safetensors"),
                    plan,
                    &[("format", "pt".into())],
                )?;
                let cfg = serde_json::json!({
                    "peft_type": "LORA",
                    "task_type": "CAUSAL_LM",
                    "base_model_name_or_path": "base",
                    "r": l.rank,
                    "lora_alpha": l.alpha,
                    "lora_dropout": 0.0,
                    "target_modules": targets,
                    "bias": "none",
                    "fan_in_fan_out": false,
                    "use_rslora": false,
                    "use_dora": false,
                    "init_lora_weights": true,
                    "inference_mode": false,
                    "modules_to_save": null,
                });
                (Some(w), Some(serde_json::to_string_pretty(&cfg)?))
            }
            None => (None, None),
        };
        let (config, copies) = match src {
            ModelSource::Hf { dir: hf_dir, .. } => (
                std::fs::read_to_string(hf_dir.join("config.json"))
                    .with_context(|| format!("{}: cannot read", hf_dir.display()))?,
                TOKENIZER_FILES
                    .iter()
                    .map(|f| hf_dir.join(f))
                    .filter(|p| p.is_file())
                    .collect(),
            ),
            ModelSource::Gguf(_) => {
                let vocab = globals
                    .iter()
                    .find(|t| t.name == "token_embd.weight")
                    .map_or(0, |t| t.ne[1] as usize);
                (config_from_gguf(src, &hp, tied, vocab)?, Vec::new())
            }
        };
        let mut me = PeftWriter {
            dir: dir.to_path_buf(),
            base,
            adapter,
            config,
            adapter_config,
            copies,
            hp,
            permute_qk,
        };
        for t in globals.iter().filter(kept) {
            me.write_base(t, &src.read(t)?)?;
        }
        Ok(me)
    }

    /// Rows of a q/k tensor back in HF order.
    fn hf_rows(&self, t: &SourceTensor, x: &[f32]) -> Vec<f32> {
        let heads = match arch::permute_of(&t.name) {
            Permute::Q if self.permute_qk => self.hp.n_head,
            Permute::K if self.permute_qk => self.hp.n_head_kv,
            _ => return x.to_vec(),
        };
        let rows = *t.ne.get(1).unwrap_or(&t.ne[0]) as usize;
        let cols = x.len() / rows;
        arch::unpermute_rows(x, rows, cols, heads)
    }

    /// The base tensor `t` (GGUF layout, f32) as F16 under its HF name.
    pub fn write_base(&mut self, t: &SourceTensor, x: &[f32]) -> Result<()> {
        let Some(name) = arch::hf_name(&t.name) else {
            return Ok(());
        };
        let x = self.hf_rows(t, x);
        let mut buf = Vec::with_capacity(x.len() * 2);
        StDtype::F16.encode(&x, &mut buf);
        self.base.write(&name, &buf)
    }

    /// LoRA A `[r, in]` and B `[out, r]` of linear `t` (B's rows in GGUF order).
    pub fn write_lora(&mut self, t: &SourceTensor, a: &[f32], b: &[f32]) -> Result<()> {
        let name = hf(t)?;
        let out_rows = t.ne[1] as usize;
        let b = match arch::permute_of(&t.name) {
            Permute::Q if self.permute_qk => {
                arch::unpermute_rows(b, out_rows, b.len() / out_rows, self.hp.n_head)
            }
            Permute::K if self.permute_qk => {
                arch::unpermute_rows(b, out_rows, b.len() / out_rows, self.hp.n_head_kv)
            }
            _ => b.to_vec(),
        };
        let Some(w) = self.adapter.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        StDtype::F32.encode(a, &mut buf);
        w.write(&lora_key(&name, "lora_A"), &buf)?;
        buf.clear();
        StDtype::F32.encode(&b, &mut buf);
        w.write(&lora_key(&name, "lora_B"), &buf)
    }

    pub fn finish(self) -> Result<PathBuf> {
        let text_file = |path: PathBuf, text: &str| -> Result<()> {
            let mut f = AtomicFile::create(&path)?;
            f.write_all(text.as_bytes())
                .with_context(|| format!("{}: cannot write", path.display()))?;
            f.commit()
        };
        let base_dir = self.dir.join("base");
        for p in &self.copies {
            let name = p.file_name().expect("listed files have names");
            let data = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
            let mut f = AtomicFile::create(&base_dir.join(name))?;
            f.write_all(&data)
                .with_context(|| format!("{}: cannot write", base_dir.display()))?;
            f.commit()?;
        }
        text_file(base_dir.join("config.json"), &self.config)?;
        self.base.finish()?;
        if let (Some(w), Some(cfg)) = (self.adapter, &self.adapter_config) {
            w.finish()?;
            text_file(self.dir.join("adapter_config.json"), cfg)?;
        }
        Ok(self.dir)
    }
}
