//! Streaming GGUF v3 writer. The whole layout (metadata, tensor names, types, dims, offsets) is
//! fixed up front; tensor data is then streamed in plan order, one tensor at a time, and each
//! write is checked against the plan (name, byte count, file position). The file appears at
//! its path only after every planned tensor was written (see [`crate::atomic`]).
//!
//! We write our own instead of using gguf-rs (wrong sizes for several stock types, cannot
//! write new type ids, zero-fills the file first) or candle's writer (needs every tensor in
//! memory at once, GGUF v2, no custom ids).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::limits::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME_BYTES};
use super::value::{Value, ValueType};
use crate::atomic::AtomicFile;
use crate::ggml::GgmlType;

#[derive(Debug, Clone)]
pub struct TensorPlan {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order.
    pub ne: Vec<u64>,
}

impl TensorPlan {
    pub fn size(&self) -> Result<u64> {
        self.ty.tensor_size(&self.ne).with_context(|| {
            format!(
                "tensor `{}`: dims {:?} are not whole {} blocks of {}",
                self.name, self.ne, self.ty, self.ty.block_size
            )
        })
    }
}

pub struct GgufWriter {
    out: AtomicFile,
    plan: Vec<TensorPlan>,
    sizes: Vec<u64>,
    next: usize,
    pos: u64,
    data_start: u64,
    offsets: Vec<u64>,
    /// Bytes written so far of the tensor in progress.
    open: Option<u64>,
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => put_string(buf, s),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Array(t, items) => {
            ensure!(
                *t != ValueType::Array,
                "nested arrays are not allowed in GGUF"
            );
            buf.extend_from_slice(&(*t as u32).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                ensure!(
                    it.value_type() == *t,
                    "array of {t:?} holds a {:?}",
                    it.value_type()
                );
                put_value(buf, it)?;
            }
        }
    }
    Ok(())
}

/// Checks the plan and returns each tensor's padded data offset.
pub fn layout(plan: &[TensorPlan]) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut offsets = Vec::with_capacity(plan.len());
    let mut sizes = Vec::with_capacity(plan.len());
    let mut off = 0u64;
    for (i, t) in plan.iter().enumerate() {
        ensure!(!t.name.is_empty(), "empty tensor name");
        ensure!(
            t.name.len() <= MAX_NAME_BYTES,
            "tensor name `{}` is longer than {MAX_NAME_BYTES} bytes",
            t.name
        );
        ensure!(
            !plan[..i].iter().any(|p| p.name == t.name),
            "duplicate tensor `{}`",
            t.name
        );
        ensure!(
            (1..=MAX_DIMS).contains(&t.ne.len()),
            "tensor `{}` has {} dims",
            t.name,
            t.ne.len()
        );
        let size = t.size()?;
        offsets.push(off);
        sizes.push(size);
        off += size.next_multiple_of(DEFAULT_ALIGNMENT);
    }
    Ok((offsets, sizes))
}

impl GgufWriter {
    /// Writes the header, metadata and tensor infos; tensors follow with [`Self::write_tensor`].
    pub fn create(
        path: &Path,
        kv: &[(String, Value)],
        plan: Vec<TensorPlan>,
    ) -> Result<GgufWriter> {
        for (i, (k, _)) in kv.iter().enumerate() {
            ensure!(!k.is_empty(), "empty metadata key");
            ensure!(
                !kv[..i].iter().any(|(q, _)| q == k),
                "duplicate metadata key `{k}`"
            );
        }
        let (offsets, sizes) = layout(&plan)?;
        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC.to_le_bytes());
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(plan.len() as u64).to_le_bytes());
        head.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            put_string(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut head, v).with_context(|| format!("metadata `{k}`"))?;
        }
        for (t, off) in plan.iter().zip(&offsets) {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for n in &t.ne {
                head.extend_from_slice(&n.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id.to_le_bytes());
            head.extend_from_slice(&off.to_le_bytes());
        }
        let data_start = (head.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT);
        head.resize(data_start as usize, 0);
        let mut out = AtomicFile::create(path)?;
        out.write_all(&head)
            .with_context(|| format!("{}: cannot write output", path.display()))?;
        Ok(GgufWriter {
            out,
            plan,
            sizes,
            next: 0,
            pos: 0,
            data_start,
            offsets,
            open: None,
        })
    }

    /// Streams one whole tensor; it must be the next one in the plan, with exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.begin_tensor(name)?;
        self.append(data)?;
        self.end_tensor()
    }

    /// Starts the next planned tensor, which must be `name`; its bytes follow with
    /// [`Self::append`], in as many pieces as the caller likes, then [`Self::end_tensor`].
    pub fn begin_tensor(&mut self, name: &str) -> Result<()> {
        ensure!(
            self.open.is_none(),
            "tensor `{name}` started before the previous one ended"
        );
        let Some(t) = self.plan.get(self.next) else {
            bail!("tensor `{name}` is not in the plan")
        };
        ensure!(
            t.name == name,
            "tensor `{name}` written out of order (expected `{}`)",
            t.name
        );
        debug_assert_eq!(self.pos, self.offsets[self.next]);
        self.open = Some(0);
        Ok(())
    }

    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        let Some(done) = self.open else {
            bail!("data written outside a tensor")
        };
        let size = self.sizes[self.next];
        let name = &self.plan[self.next].name;
        ensure!(
            done + data.len() as u64 <= size,
            "tensor `{name}`: more than the {size} planned bytes"
        );
        let target = self.out.target().display().to_string();
        self.out
            .write_all(data)
            .with_context(|| format!("{target}: cannot write output"))?;
        self.open = Some(done + data.len() as u64);
        Ok(())
    }

    pub fn end_tensor(&mut self) -> Result<()> {
        let Some(done) = self.open.take() else {
            bail!("no tensor was started")
        };
        let size = self.sizes[self.next];
        let name = &self.plan[self.next].name;
        ensure!(
            done == size,
            "tensor `{name}`: {done} bytes given, {size} planned"
        );
        let padded = size.next_multiple_of(DEFAULT_ALIGNMENT);
        let target = self.out.target().display().to_string();
        self.out
            .write_all(&vec![0u8; (padded - size) as usize])
            .with_context(|| format!("{target}: cannot write output"))?;
        self.pos += padded;
        self.next += 1;
        Ok(())
    }

    /// Checks that every planned tensor was written, then makes the file appear.
    pub fn finish(self) -> Result<u64> {
        ensure!(self.open.is_none(), "the last tensor was not finished");
        ensure!(
            self.next == self.plan.len(),
            "only {} of {} planned tensors were written",
            self.next,
            self.plan.len()
        );
        let total = self.data_start + self.pos;
        self.out.commit()?;
        Ok(total)
    }
}
