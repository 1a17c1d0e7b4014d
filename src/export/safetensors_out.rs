//! A streaming safetensors writer. The `safetensors` crate serializes tensors that are all in
//! memory at once; calibration produces them block by block and a 7B base does not fit in
//! memory as f16 twice over, so we plan the header from the known shapes, write it first, and
//! append each tensor as it comes (checked against the plan), through an atomic file.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::atomic::AtomicFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    F16,
    F32,
}

impl StDtype {
    fn name(self) -> &'static str {
        match self {
            StDtype::F16 => "F16",
            StDtype::F32 => "F32",
        }
    }

    fn size(self) -> usize {
        match self {
            StDtype::F16 => 2,
            StDtype::F32 => 4,
        }
    }

    pub fn encode(self, x: &[f32], out: &mut Vec<u8>) {
        match self {
            StDtype::F16 => x.iter().for_each(|v| {
                out.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes())
            }),
            StDtype::F32 => x
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        }
    }
}

/// One planned tensor: name, dtype, shape (row-major, PyTorch order).
#[derive(Debug, Clone)]
pub struct StPlan {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
}

impl StPlan {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

pub struct StWriter {
    file: AtomicFile,
    plan: Vec<StPlan>,
    next: usize,
    total: u64,
}

impl StWriter {
    pub fn create(path: &Path, plan: Vec<StPlan>, metadata: &[(&str, String)]) -> Result<StWriter> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> = metadata
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect();
            header.insert("__metadata__".into(), m.into());
        }
        let mut offset = 0usize;
        for p in &plan {
            let end = offset + p.bytes();
            header.insert(
                p.name.clone(),
                serde_json::json!({
                    "dtype": p.dtype.name(),
                    "shape": p.shape,
                    "data_offsets": [offset, end],
                }),
            );
            offset = end;
        }
        let mut text = serde_json::to_string(&header)?.into_bytes();
        // The data starts 8-byte aligned, as the safetensors crate writes it.
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let mut file = AtomicFile::create(path)?;
        let ctx = || format!("{}: cannot write", path.display());
        file.write_all(&(text.len() as u64).to_le_bytes())
            .with_context(ctx)?;
        file.write_all(&text).with_context(ctx)?;
        Ok(StWriter {
            file,
            plan,
            next: 0,
            total: 8 + text.len() as u64 + offset as u64,
        })
    }

    pub fn write(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(p) = self.plan.get(self.next) else {
            bail!("tensor `{name}` is not in the plan");
        };
        ensure!(
            p.name == name,
            "tensor `{name}` written where `{}` was planned",
            p.name
        );
        ensure!(
            data.len() == p.bytes(),
            "tensor `{name}`: {} bytes, planned {}",
            data.len(),
            p.bytes()
        );
        self.file
            .write_all(data)
            .with_context(|| format!("{}: cannot write", self.file.target().display()))?;
        self.next += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<u64> {
        if let Some(p) = self.plan.get(self.next) {
            bail!("tensor `{}` was planned but never written", p.name);
        }
        self.file.commit()?;
        Ok(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safetensors_crate_reads_what_we_stream() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.safetensors");
        let plan = vec![
            StPlan {
                name: "b".into(),
                dtype: StDtype::F16,
                shape: vec![3],
            },
            StPlan {
                name: "a".into(),
                dtype: StDtype::F32,
                shape: vec![2, 2],
            },
        ];
        let mut w = StWriter::create(&path, plan, &[("format", "pt".into())]).unwrap();
        let mut buf = Vec::new();
        StDtype::F16.encode(&[1.0, -2.0, 0.5], &mut buf);
        assert!(w.write("a", &buf).is_err(), "out of plan order");
        w.write("b", &buf).unwrap();
        buf.clear();
        StDtype::F32.encode(&[1.0, 2.0, 3.0, 4.0], &mut buf);
        w.write("a", &buf).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let a = st.tensor("a").unwrap();
        assert_eq!(a.shape(), &[2, 2]);
        assert_eq!(a.data(), &buf[..]);
        assert_eq!(st.tensor("b").unwrap().dtype(), safetensors::Dtype::F16);
    }
}
