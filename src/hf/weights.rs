//! Safetensors weights, single file or sharded (`model.safetensors.index.json`), memory-mapped.
//! Only the tensor being converted is materialised (as f32); the rest stays mapped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, Metadata, SafeTensorError};
use safetensors::SafeTensors;

use crate::mmap::MappedFile;

struct Shard {
    path: PathBuf,
    map: MappedFile,
    header_len: usize,
    meta: Metadata,
}

pub struct Weights {
    shards: Vec<Shard>,
    /// tensor name → shard index; ordered so iteration is deterministic.
    index: BTreeMap<String, usize>,
}

/// A tensor's shape as stored (row-major, outermost first) and dtype.
#[derive(Debug, Clone)]
pub struct WeightInfo {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

/// The shard file names of a `model.safetensors.index.json`, sorted and deduplicated; names
/// that would leave the model directory are refused.
pub fn shard_names(index_json: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(index_json).context("not valid JSON")?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("no `weight_map` object"))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    for n in &names {
        if n.is_empty() || n.contains('/') || n.contains('\\') || n.contains("..") {
            bail!("shard name `{n}` leaves the model directory");
        }
    }
    Ok(names)
}

/// Parses and checks a safetensors header against the file's size.
pub fn read_header(bytes: &[u8]) -> Result<(usize, Metadata)> {
    SafeTensors::read_metadata(bytes).map_err(|e| match e {
        // The header's tensors do not end where the file ends: usually a cut download.
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::InvalidHeaderLength => {
            anyhow!("truncated or padded safetensors file: its header does not match its size")
        }
        e => anyhow!("not a valid safetensors file: {e}"),
    })
}

impl Weights {
    pub fn open(dir: &Path) -> Result<Weights> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("{}: cannot read", index_path.display()))?;
            let names = shard_names(&text).with_context(|| format!("{}", index_path.display()))?;
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                bail!(
                    "{}: no model.safetensors or model.safetensors.index.json",
                    dir.display()
                );
            }
            vec![single]
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let map = MappedFile::open(&path)?;
            let (header_len, meta) =
                read_header(map.bytes()).with_context(|| format!("{}", path.display()))?;
            let si = shards.len();
            for name in meta.tensors().keys() {
                if index.insert(name.clone(), si).is_some() {
                    bail!(
                        "{}: tensor `{name}` appears in more than one shard",
                        path.display()
                    );
                }
            }
            shards.push(Shard {
                path,
                map,
                header_len,
                meta,
            });
        }
        Ok(Weights { shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<WeightInfo> {
        let shard = &self.shards[*self.index.get(name)?];
        let t = shard.meta.info(name)?;
        Some(WeightInfo {
            shape: t.shape.clone(),
            dtype: t.dtype,
        })
    }

    /// The first weights file, for errors about tensors that are missing altogether.
    pub fn file_of_any(&self) -> &Path {
        self.shards
            .first()
            .map(|s| s.path.as_path())
            .unwrap_or(Path::new("model.safetensors"))
    }

    /// Which file holds `name`, for error messages.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.shards[i].path.as_path())
    }

    /// Reads rows `rows` of one tensor (rows of `row_len` values; a 1-D tensor is one row per
    /// value with `row_len` 1) as f32, from f32, f16 or bf16 storage.
    pub fn read_rows(
        &self,
        name: &str,
        row_len: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        let &si = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("tensor `{name}` not found in the weights"))?;
        let shard = &self.shards[si];
        let t = shard
            .meta
            .info(name)
            .expect("indexed names exist in their shard");
        let start = 8 + shard.header_len + t.data_offsets.0;
        let end = 8 + shard.header_len + t.data_offsets.1;
        let n: usize = t.shape.iter().product();
        let ctx = || format!("{}: tensor `{name}`", shard.path.display());
        let width = match t.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => bail!(
                "{}: dtype {other:?} is not supported (f32, f16, bf16 are)",
                ctx()
            ),
        };
        if end - start != n * width {
            bail!(
                "{}: {} bytes for shape {:?} of {:?}",
                ctx(),
                end - start,
                t.shape,
                t.dtype
            );
        }
        if rows.end * row_len > n || rows.start > rows.end {
            bail!(
                "{}: rows {rows:?} of {row_len} values are outside the tensor",
                ctx()
            );
        }
        let raw = shard
            .map
            .read_at(
                (start + rows.start * row_len * width) as u64,
                rows.len() * row_len * width,
            )
            .with_context(|| format!("{}: cannot read", ctx()))?;
        Ok(match t.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => raw
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}
