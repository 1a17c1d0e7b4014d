//! Tokenizer export: tokenizer.json (+ tokenizer_config.json, generation_config.json, config.json)
//! → the `tokenizer.*` GGUF keys llama.cpp reads (src/llama-vocab.cpp).
//!
//! Two families: SentencePiece-style BPE with byte fallback (`llama`) and byte-level BPE
//! (`gpt2`). For `llama`, llama.cpp merges by token score; tokenizer.json has no scores, but
//! its merges are ordered by score (transformers' `SentencePieceExtractor`), so each piece's
//! score is minus the rank of the first merge that makes it. That reproduces the merge order of
//! the original SentencePiece model, unlike a constant score.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;

use crate::gguf::keys::{self, token_type};
use crate::gguf::Value;

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The BPE pre-tokenizers we recognise from tokenizer.json's `pre_tokenizer`, as llama.cpp names
/// them. Anything else needs `--tokenizer-pre`.
fn detect_pre(pre: &Json) -> Option<&'static str> {
    const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let ty = |v: &Json| {
        v.get("type")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string()
    };
    let parts: Vec<&Json> = match ty(pre).as_str() {
        "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let kinds: Vec<String> = parts.iter().map(|p| ty(p)).collect();
    let regex = parts
        .iter()
        .find(|p| ty(p) == "Split")
        .and_then(|p| p.get("pattern")?.get("Regex")?.as_str());
    match (
        kinds
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        regex,
    ) {
        (["Digits", "ByteLevel"], None)
            if parts[0].get("individual_digits").and_then(Json::as_bool) == Some(true) =>
        {
            Some("smollm")
        }
        (["Split", "ByteLevel"], Some(r)) if r == LLAMA3_REGEX => Some("llama-bpe"),
        (["Split", "ByteLevel"], Some(r)) if r == QWEN2_REGEX => Some("qwen2"),
        (["ByteLevel"], None) => Some("gpt-2"),
        _ => None,
    }
}

fn merge_pair(m: &Json) -> Option<(String, String)> {
    match m {
        Json::String(s) => {
            let (a, b) = s.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        }
        Json::Array(v) if v.len() == 2 => {
            Some((v[0].as_str()?.to_string(), v[1].as_str()?.to_string()))
        }
        _ => None,
    }
}

/// A token given in tokenizer_config.json either as a string or as `{"content": ...}`.
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn first_id(v: Option<&Json>) -> Option<u32> {
    match v? {
        Json::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        Json::Array(a) => first_id(a.first()),
        _ => None,
    }
}

fn mentions_metaspace(v: &Json) -> bool {
    let s = v.to_string();
    s.contains("Metaspace") || s.contains('\u{2581}')
}

/// Builds the tokenizer keys for an HF directory. `n_vocab` is config.json's `vocab_size`: the
/// token list is padded with unused `[PAD{i}]` tokens up to it, as llama.cpp's converter does.
pub fn export(
    dir: &Path,
    n_vocab: usize,
    pre_override: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    let tj_path = dir.join("tokenizer.json");
    if !tj_path.exists() {
        bail!(
            "{}: missing (only tokenizer.json tokenizers are supported)",
            tj_path.display()
        );
    }
    let tj = read_json(&tj_path)?;
    let tcfg = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let gen = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
    let mcfg = read_json_opt(&dir.join("config.json"))?.unwrap_or(Json::Null);
    let bad = |what: &str| anyhow!("{}: {what}", tj_path.display());

    let model = tj.get("model").ok_or_else(|| bad("no `model`"))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("BPE");
    if mtype != "BPE" {
        bail!(
            "{}: tokenizer model `{mtype}` is not supported (BPE is)",
            tj_path.display()
        );
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| bad("no `model.vocab`"))?;
    let added: Vec<(u32, String, bool)> = tj
        .get("added_tokens")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    let id = u32::try_from(t.get("id")?.as_u64()?).ok()?;
                    Some((
                        id,
                        t.get("content")?.as_str()?.to_string(),
                        t.get("special").and_then(Json::as_bool).unwrap_or(false),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();

    let max_id = vocab
        .values()
        .filter_map(Json::as_u64)
        .chain(added.iter().map(|a| u64::from(a.0)))
        .max()
        .ok_or_else(|| bad("empty vocabulary"))?;
    let n_tokens = n_vocab.max(max_id as usize + 1);
    if n_tokens > 10_000_000 {
        return Err(bad("vocabulary larger than 10 million tokens"));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n_tokens];
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad("non-numeric token id"))? as usize;
        tokens[id] = Some(text.clone());
    }
    let mut types = vec![token_type::NORMAL; n_tokens];
    for (id, text, special) in &added {
        tokens[*id as usize] = Some(text.clone());
        types[*id as usize] = if *special {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_none() {
            *t = Some(format!("[PAD{i}]"));
            types[i] = token_type::UNUSED;
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .map(|t| t.expect("filled above"))
        .collect();
    let id_of: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();

    let merges: Vec<(String, String)> = model
        .get("merges")
        .and_then(Json::as_array)
        .map(|m| {
            m.iter()
                .map(|x| merge_pair(x).ok_or_else(|| bad("malformed merge")))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();

    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let normalizer = tj.get("normalizer").cloned().unwrap_or(Json::Null);
    let pre = tj.get("pre_tokenizer").cloned().unwrap_or(Json::Null);
    let spm = byte_fallback || mentions_metaspace(&normalizer) || mentions_metaspace(&pre);

    let mut kv: Vec<(String, Value)> = Vec::new();
    if spm {
        kv.push((keys::TOKENIZER_MODEL.into(), Value::String("llama".into())));
        let unk = token_text(tcfg.get("unk_token")).or_else(|| {
            model
                .get("unk_token")
                .and_then(Json::as_str)
                .map(str::to_string)
        });
        let mut rank: HashMap<String, usize> = HashMap::new();
        for (i, (a, b)) in merges.iter().enumerate() {
            rank.entry(format!("{a}{b}")).or_insert(i);
        }
        let mut scores = Vec::with_capacity(n_tokens);
        for (i, t) in tokens.iter().enumerate() {
            let is_byte = t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
            if is_byte && types[i] == token_type::NORMAL {
                types[i] = token_type::BYTE;
            }
            if unk.as_deref() == Some(t.as_str()) {
                types[i] = token_type::UNKNOWN;
            }
            let score = if types[i] != token_type::NORMAL {
                0.0
            } else if let Some(r) = rank.get(t) {
                -(*r as f32)
            } else {
                // Pieces no merge produces (single characters) never compete in a merge.
                -((merges.len() + i) as f32)
            };
            scores.push(score);
        }
        kv.push((
            keys::TOKENIZER_TOKENS.into(),
            Value::string_array(tokens.iter().cloned()),
        ));
        kv.push((
            keys::TOKENIZER_SCORES.into(),
            Value::Array(
                crate::gguf::ValueType::F32,
                scores.into_iter().map(Value::F32).collect(),
            ),
        ));
        kv.push((keys::TOKENIZER_TOKEN_TYPE.into(), int_array(&types)));
        let prefix = normalizer.to_string().contains("Prepend")
            || pre
                .get("prepend_scheme")
                .and_then(Json::as_str)
                .is_some_and(|s| s != "never");
        kv.push((keys::TOKENIZER_ADD_SPACE_PREFIX.into(), Value::Bool(prefix)));
    } else {
        let pre_name = match pre_override {
            Some(p) => p.to_string(),
            None => detect_pre(&pre)
                .ok_or_else(|| anyhow!("{}: unrecognised pre-tokenizer; name llama.cpp's with --tokenizer-pre (e.g. llama-bpe, qwen2, smollm, gpt-2)", tj_path.display()))?
                .to_string(),
        };
        kv.push((keys::TOKENIZER_MODEL.into(), Value::String("gpt2".into())));
        kv.push((keys::TOKENIZER_PRE.into(), Value::String(pre_name)));
        kv.push((
            keys::TOKENIZER_TOKENS.into(),
            Value::string_array(tokens.iter().cloned()),
        ));
        kv.push((keys::TOKENIZER_TOKEN_TYPE.into(), int_array(&types)));
        if merges.is_empty() {
            return Err(bad("byte-level BPE without merges"));
        }
        kv.push((
            keys::TOKENIZER_MERGES.into(),
            Value::string_array(merges.iter().map(|(a, b)| format!("{a} {b}"))),
        ));
        let prefix = pre.to_string().contains("\"add_prefix_space\":true");
        kv.push((keys::TOKENIZER_ADD_SPACE_PREFIX.into(), Value::Bool(prefix)));
    }

    // Special ids: tokenizer_config's token texts first, then config/generation_config ids.
    let special = |name: &str, id_key: &str| -> Option<u32> {
        token_text(tcfg.get(name))
            .and_then(|t| id_of.get(t.as_str()).copied())
            .or_else(|| first_id(gen.get(id_key)))
            .or_else(|| first_id(mcfg.get(id_key)))
    };
    let ids = [
        (keys::TOKENIZER_BOS_ID, special("bos_token", "bos_token_id")),
        (keys::TOKENIZER_EOS_ID, special("eos_token", "eos_token_id")),
        (keys::TOKENIZER_UNK_ID, special("unk_token", "unk_token_id")),
        (keys::TOKENIZER_PAD_ID, special("pad_token", "pad_token_id")),
    ];
    for (key, id) in ids {
        if let Some(id) = id.filter(|&i| (i as usize) < n_tokens) {
            kv.push((key.into(), Value::U32(id)));
        }
    }
    let post = tj.get("post_processor").cloned().unwrap_or(Json::Null);
    let template_adds = |pos: &str| -> bool {
        let single = post.get("single").and_then(Json::as_array);
        let item = match pos {
            "first" => single.and_then(|s| s.first()),
            _ => single.and_then(|s| s.last()),
        };
        item.is_some_and(|i| i.get("SpecialToken").is_some())
    };
    let add_bos = tcfg
        .get("add_bos_token")
        .and_then(Json::as_bool)
        .unwrap_or_else(|| template_adds("first"));
    let add_eos = tcfg
        .get("add_eos_token")
        .and_then(Json::as_bool)
        .unwrap_or_else(|| template_adds("last"));
    kv.push((keys::TOKENIZER_ADD_BOS.into(), Value::Bool(add_bos)));
    kv.push((keys::TOKENIZER_ADD_EOS.into(), Value::Bool(add_eos)));
    let template = match tcfg.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
    .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    if let Some(t) = template {
        kv.push((keys::TOKENIZER_CHAT_TEMPLATE.into(), Value::String(t)));
    }
    Ok(kv)
}

fn int_array(v: &[i32]) -> Value {
    Value::Array(
        crate::gguf::ValueType::I32,
        v.iter().map(|&x| Value::I32(x)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_smollm_pre_tokenizer() {
        let pre: Json = serde_json::from_str(
            r#"{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]}"#,
        )
        .unwrap();
        assert_eq!(detect_pre(&pre), Some("smollm"));
        let plain: Json =
            serde_json::from_str(r#"{"type":"ByteLevel","add_prefix_space":false}"#).unwrap();
        assert_eq!(detect_pre(&plain), Some("gpt-2"));
        let other: Json = serde_json::from_str(r#"{"type":"Whitespace"}"#).unwrap();
        assert_eq!(detect_pre(&other), None);
    }

    #[test]
    fn merges_in_both_encodings() {
        assert_eq!(
            merge_pair(&Json::String("a b".into())),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(
            merge_pair(&serde_json::json!(["Ġ", "t"])),
            Some(("Ġ".into(), "t".into()))
        );
        assert_eq!(merge_pair(&Json::String("ab".into())), None);
    }
}
