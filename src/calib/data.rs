//! Calibration windows: the calibration text tokenized once with the model's own tokenizer
//! (the `tokenizers` crate on tokenizer.json for HF directories, llama.cpp's vocabulary for
//! GGUF files), one BOS at the start of the stream if the vocabulary adds BOS, then N windows
//! of L tokens at seeded random offsets, with no per-window BOS (as ApiQ's `data_utils.py`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gguf::keys;
use crate::gguf::Value;
use crate::source::ModelSource;

/// The calibration files: the given ones, or the default set (the C4 and Wikipedia samples of
/// exllamav2 0.3.2) fetched by `scripts/fetch-calib.sh` into [`default_dir`].
pub fn resolve_files(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    let dir = default_dir();
    let files: Vec<PathBuf> = ["c4.utf8", "wiki.utf8"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    if files.iter().all(|f| f.exists()) {
        Ok(files)
    } else {
        bail!(
            "no calibration text in {} (hint: run scripts/fetch-calib.sh, or give --calib FILE)",
            dir.display()
        )
    }
}

/// `$APIQ2GGUF_CALIB_DIR`, else `~/.cache/apiq2gguf/calib`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("APIQ2GGUF_CALIB_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/apiq2gguf/calib")
}

/// Reads and concatenates the calibration files, keeping at most `max_bytes` (cut back to a
/// character boundary).
pub fn read_text(files: &[PathBuf], max_bytes: Option<usize>) -> Result<String> {
    let mut bytes = Vec::new();
    for f in files {
        bytes.extend(
            std::fs::read(f)
                .with_context(|| format!("{}: cannot read calibration text", f.display()))?,
        );
    }
    if let Some(max) = max_bytes {
        bytes.truncate(max);
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let mut b = e.into_bytes();
            if max_bytes.is_some() && b.len() - valid < 4 {
                b.truncate(valid);
                String::from_utf8(b).expect("valid prefix")
            } else {
                bail!("calibration text is not valid UTF-8 (byte {valid})");
            }
        }
    };
    if text.is_empty() {
        bail!("calibration text is empty");
    }
    Ok(text)
}

fn add_bos(src: &ModelSource) -> (bool, Option<u32>) {
    let kv = src.metadata();
    let get = |k: &str| kv.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let model = get(keys::TOKENIZER_MODEL)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let add = match get(keys::TOKENIZER_ADD_BOS) {
        Some(Value::Bool(b)) => b,
        // llama.cpp's default: SentencePiece vocabularies add BOS.
        _ => model == "llama",
    };
    (
        add,
        get(keys::TOKENIZER_BOS_ID)
            .and_then(|v| v.as_u64())
            .map(|v| v as u32),
    )
}

/// The whole text as token ids, tokenized as the model's runtime would.
pub fn tokenize(src: &ModelSource, text: &str) -> Result<Vec<u32>> {
    let (bos, bos_id) = add_bos(src);
    let mut ids = Vec::new();
    if bos {
        ids.push(bos_id.context("the vocabulary adds BOS but has no BOS id")?);
    }
    match src {
        ModelSource::Hf { dir, .. } => {
            let path = dir.join("tokenizer.json");
            let tok = tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            // Special tokens are added by hand above; the text itself is not parsed for them.
            let enc = tok
                .encode_fast(text, false)
                .map_err(|e| anyhow::anyhow!("tokenizing calibration text: {e}"))?;
            ids.extend_from_slice(enc.get_ids());
        }
        ModelSource::Gguf(g) => ids.extend(tokenize_with_llama_cpp(&g.path, text)?),
    }
    Ok(ids)
}

fn tokenize_with_llama_cpp(model: &Path, text: &str) -> Result<Vec<u32>> {
    let rt = crate::runtime::Runtime::init(false)?;
    let ids = crate::runtime::generate::tokenize(&rt, model, text.as_bytes(), false, false)?;
    Ok(ids.into_iter().map(|t| t as u32).collect())
}

/// `n` windows of `len` tokens at offsets drawn uniformly from `0..=T−len−1` with a seeded
/// ChaCha8 generator, in draw order.
pub fn windows(tokens: &[u32], n: usize, len: usize, seed: u64) -> Result<Vec<Vec<u32>>> {
    if tokens.len() < len + 1 {
        bail!(
            "calibration text has {} tokens, fewer than one window of {len} (+1)",
            tokens.len()
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok((0..n)
        .map(|_| {
            let i = rng.random_range(0..=tokens.len() - len - 1);
            tokens[i..i + len].to_vec()
        })
        .collect())
}
