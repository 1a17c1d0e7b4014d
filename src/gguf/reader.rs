//! A checking GGUF reader over a memory map. Every count and length from the header is checked
//! against the bytes left in the file before anything is allocated, and tensor offsets must be
//! exactly where ggml's own reader expects them (`gguf_init_from_reader`): a file that loads here
//! loads in llama.cpp, and a lying header gives an error that names the file and the problem.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::limits::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME_BYTES};
use super::value::{Value, ValueType};
use crate::ggml::GgmlType;
use crate::mmap::MappedFile;

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `ne[0]` is the contiguous dimension.
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    map: MappedFile,
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let map = MappedFile::open(path)?;
        let p = parse(map.bytes())
            .with_context(|| format!("{}: not a valid GGUF file", path.display()))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version: p.version,
            kv: p.kv,
            tensors: p.tensors,
            alignment: p.alignment,
            data_offset: p.data_offset,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Bytes `range` of one tensor's data (the tensor was checked to lie inside the file).
    pub fn read_tensor_bytes(
        &self,
        t: &TensorInfo,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>> {
        anyhow::ensure!(
            range.start <= range.end && range.end <= t.size,
            "bytes {range:?} outside tensor `{}`",
            t.name
        );
        self.map
            .read_at(
                self.data_offset + t.offset + range.start,
                (range.end - range.start) as usize,
            )
            .with_context(|| format!("{}: cannot read tensor `{}`", self.path.display(), t.name))
    }

    pub fn file_size(&self) -> u64 {
        self.map.bytes().len() as u64
    }
}

struct Parsed {
    version: u32,
    kv: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            bail!(
                "{what} at byte {} needs {n} bytes but the file ends after {}",
                self.pos,
                self.left()
            );
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.left() as u64 {
            bail!(
                "{what} claims {len} bytes but only {} are left",
                self.left()
            );
        }
        let b = self.take(len as usize, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| anyhow!("{what} is not valid UTF-8"))
    }

    fn scalar(&mut self, t: ValueType, what: &str) -> Result<Value> {
        let n = t.scalar_size().expect("scalar type");
        let b = self.take(n, what)?;
        Ok(match t {
            ValueType::U8 => Value::U8(b[0]),
            ValueType::I8 => Value::I8(b[0] as i8),
            ValueType::Bool => match b[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                v => bail!("{what}: bool value {v} is neither 0 nor 1"),
            },
            ValueType::U16 => Value::U16(u16::from_le_bytes([b[0], b[1]])),
            ValueType::I16 => Value::I16(i16::from_le_bytes([b[0], b[1]])),
            ValueType::U32 => Value::U32(u32::from_le_bytes(b.try_into().expect("4"))),
            ValueType::I32 => Value::I32(i32::from_le_bytes(b.try_into().expect("4"))),
            ValueType::F32 => Value::F32(f32::from_le_bytes(b.try_into().expect("4"))),
            ValueType::U64 => Value::U64(u64::from_le_bytes(b.try_into().expect("8"))),
            ValueType::I64 => Value::I64(i64::from_le_bytes(b.try_into().expect("8"))),
            ValueType::F64 => Value::F64(f64::from_le_bytes(b.try_into().expect("8"))),
            ValueType::String | ValueType::Array => unreachable!("not scalars"),
        })
    }

    fn value(&mut self, t: ValueType, what: &str) -> Result<Value> {
        match t {
            ValueType::String => Ok(Value::String(self.string(what)?)),
            ValueType::Array => {
                let et = self.u32(what)?;
                let et = ValueType::from_u32(et)
                    .ok_or_else(|| anyhow!("{what}: unknown array element type {et}"))?;
                if et == ValueType::Array {
                    bail!("{what}: nested arrays are not allowed");
                }
                let n = self.u64(what)?;
                // Each element takes at least its scalar size (8 for a string's length).
                let min = et.scalar_size().unwrap_or(8) as u64;
                if n.checked_mul(min).is_none_or(|b| b > self.left() as u64) {
                    bail!(
                        "{what}: array of {n} elements does not fit in the {} bytes left",
                        self.left()
                    );
                }
                let items = (0..n)
                    .map(|_| self.value(et, what))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Value::Array(et, items))
            }
            _ => self.scalar(t, what),
        }
    }
}

/// Checks a whole GGUF file held in memory, as [`GgufFile::open`] does; returns the numbers of
/// metadata entries and tensors.
pub fn check_bytes(bytes: &[u8]) -> Result<(usize, usize)> {
    let p = parse(bytes)?;
    Ok((p.kv.len(), p.tensors.len()))
}

fn parse(bytes: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.u32("magic")?;
    if magic != MAGIC {
        bail!("bad magic {:#010x} (expected \"GGUF\")", magic);
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        bail!("unsupported GGUF version {version} (2 and 3 are supported)");
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info
    // at least 8 + 4 + 4 + 8 bytes: counts beyond that are lies, refused before allocating.
    if n_kv.saturating_mul(13) > c.left() as u64 {
        bail!("header claims {n_kv} metadata entries, more than the file can hold");
    }
    if n_tensors.saturating_mul(24) > c.left() as u64 {
        bail!("header claims {n_tensors} tensors, more than the file can hold");
    }

    let mut kv: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        if key.is_empty() {
            bail!("metadata key #{i} is empty");
        }
        if kv.iter().any(|(k, _)| *k == key) {
            bail!("duplicate metadata key `{key}`");
        }
        let t = c.u32(&key)?;
        let t = ValueType::from_u32(t)
            .ok_or_else(|| anyhow!("metadata `{key}` has unknown value type {t}"))?;
        let v = c.value(t, &format!("metadata `{key}`"))?;
        kv.push((key, v));
    }

    let alignment = match kv.iter().find(|(k, _)| k == super::keys::GENERAL_ALIGNMENT) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => bail!("general.alignment must be a power-of-two u32, got {v}"),
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut expected_offset = 0u64;
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor name #{i}"))?;
        if name.len() > MAX_NAME_BYTES {
            bail!(
                "tensor name `{name}` is longer than {} bytes",
                MAX_NAME_BYTES
            );
        }
        if tensors.iter().any(|t| t.name == name) {
            bail!("duplicate tensor `{name}`");
        }
        let n_dims = c.u32(&name)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            bail!("tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)");
        }
        let ne = (0..n_dims)
            .map(|_| c.u64(&name))
            .collect::<Result<Vec<_>>>()?;
        if ne.iter().any(|&n| n > i64::MAX as u64) {
            bail!("tensor `{name}` has a negative dimension");
        }
        let id = c.u32(&name)?;
        let ty = GgmlType::from_id(id)
            .ok_or_else(|| anyhow!("tensor `{name}` has unknown ggml type id {id}"))?;
        let size = ty.tensor_size(&ne).ok_or_else(|| {
            anyhow!(
                "tensor `{name}` of type {ty} has dims {ne:?}: not whole blocks of {} or too large",
                ty.block_size
            )
        })?;
        let offset = c.u64(&name)?;
        if offset != expected_offset {
            bail!("tensor `{name}` has offset {offset}, expected {expected_offset}");
        }
        expected_offset = offset
            .checked_add(size.next_multiple_of(alignment))
            .ok_or_else(|| anyhow!("tensor `{name}` is too large"))?;
        tensors.push(TensorInfo {
            name,
            ne,
            ty,
            offset,
            size,
        });
    }

    let data_offset = (c.pos as u64).next_multiple_of(alignment);
    let file_len = bytes.len() as u64;
    for t in &tensors {
        let end = data_offset + t.offset + t.size;
        if end > file_len {
            bail!(
                "tensor `{}` data ends at byte {end}, past the end of the file ({file_len} bytes)",
                t.name
            );
        }
    }
    Ok(Parsed {
        version,
        kv,
        tensors,
        alignment,
        data_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::{GgufWriter, TensorPlan};

    fn write_sample(dir: &Path) -> PathBuf {
        let p = dir.join("s.gguf");
        let kv = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("a.u32".to_string(), Value::U32(7)),
            ("a.f32".to_string(), Value::F32(0.5)),
            ("a.bool".to_string(), Value::Bool(true)),
            (
                "a.arr".to_string(),
                Value::string_array(["x".to_string(), "yz".to_string()]),
            ),
            ("a.i64".to_string(), Value::I64(-3)),
        ];
        let plan = vec![
            TensorPlan {
                name: "v".into(),
                ty: GgmlType::F32,
                ne: vec![3],
            },
            TensorPlan {
                name: "m".into(),
                ty: GgmlType::Q8_0,
                ne: vec![32, 2],
            },
        ];
        let mut w = GgufWriter::create(&p, &kv, plan).unwrap();
        w.write_tensor("v", &[1u8; 12]).unwrap();
        w.begin_tensor("m").unwrap();
        w.append(&[2u8; 34]).unwrap();
        w.append(&[3u8; 34]).unwrap();
        w.end_tensor().unwrap();
        w.finish().unwrap();
        p
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let g = GgufFile::open(&write_sample(d.path())).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_u64("a.u32"), Some(7));
        assert_eq!(g.get("a.f32"), Some(&Value::F32(0.5)));
        assert_eq!(g.get("a.i64"), Some(&Value::I64(-3)));
        assert_eq!(
            g.get("a.arr").and_then(Value::as_array).map(<[Value]>::len),
            Some(2)
        );
        assert_eq!(
            g.tensors[1].offset, 32,
            "12 bytes padded to the 32-byte alignment"
        );
        assert_eq!(g.data_offset % 32, 0);
        assert_eq!(
            g.read_tensor_bytes(&g.tensors[1], 34..68).unwrap(),
            vec![3u8; 34]
        );
    }

    fn rejects(edit: impl FnOnce(&mut Vec<u8>), needle: &str) {
        let d = tempfile::tempdir().unwrap();
        let p = write_sample(d.path());
        let mut b = std::fs::read(&p).unwrap();
        edit(&mut b);
        std::fs::write(&p, &b).unwrap();
        let err = format!("{:#}", GgufFile::open(&p).err().expect("must be rejected"));
        assert!(err.contains(needle), "{err}");
    }

    #[test]
    fn malformed_files_are_rejected() {
        rejects(|b| b[0] = b'X', "bad magic");
        rejects(|b| b[4] = 9, "unsupported GGUF version 9");
        rejects(|b| b.truncate(40), "more than the file can hold");
        rejects(|b| b.truncate(120), "only 1 are left");
        rejects(
            |b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes()),
            "more than the file can hold",
        );
        // Duplicate key: rename `a.f32` to `a.u32`.
        rejects(
            |b| {
                let p = b.windows(5).position(|w| w == b"a.f32").unwrap();
                b[p..p + 5].copy_from_slice(b"a.u32");
            },
            "duplicate metadata key `a.u32`",
        );
        // A string array that claims 2^40 elements.
        rejects(
            |b| {
                let p = b.windows(5).position(|w| w == b"a.arr").unwrap() + 5 + 4 + 4;
                b[p..p + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            },
            "does not fit",
        );
        // Cut inside the data section.
        rejects(|b| b.truncate(b.len() - 40), "past the end of the file");
    }

    #[test]
    fn writer_refuses_out_of_order_and_short_tensors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.gguf");
        let plan = vec![
            TensorPlan {
                name: "a".into(),
                ty: GgmlType::F32,
                ne: vec![2],
            },
            TensorPlan {
                name: "b".into(),
                ty: GgmlType::F32,
                ne: vec![2],
            },
        ];
        let mut w = GgufWriter::create(&p, &[], plan.clone()).unwrap();
        assert!(w.write_tensor("b", &[0; 8]).is_err());
        assert!(w.write_tensor("a", &[0; 4]).is_err());
        drop(w);
        let mut w = GgufWriter::create(&p, &[], plan).unwrap();
        w.write_tensor("a", &[0; 8]).unwrap();
        assert!(w.finish().is_err(), "one tensor missing");
        assert!(!p.exists(), "no output after a failed write");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no temporary file left"
        );
    }
}
