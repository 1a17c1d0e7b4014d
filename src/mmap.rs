//! Input files: a read-only memory map for headers (the one place that needs `unsafe`) and
//! positioned reads for tensor data, so that converted data does not stay resident: peak
//! memory follows the chunk being converted, not the model.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use memmap2::Mmap;

pub struct MappedFile {
    file: File,
    map: Option<Mmap>,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", path.display()))?
            .len();
        if len == 0 {
            // mmap of an empty file fails on Linux; an empty slice says the same.
            return Ok(MappedFile { file, map: None });
        }
        #[allow(unsafe_code)]
        // SAFETY: the map is read-only and private to this process. Model files are inputs we
        // never write; a concurrent truncation by another process could fault, as with every
        // mmap-based loader (llama.cpp, safetensors).
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map", path.display()))?;
        Ok(MappedFile {
            file,
            map: Some(map),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Reads `len` bytes at `offset` (callers check the range against the file size first).
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}
