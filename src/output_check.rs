//! Where a run will write, checked before it does any work: each output's folder must exist
//! and take a new file. The error names the path as the user gave it; nothing is created (the
//! probe is an unnamed temporary file).

use std::path::Path;

use anyhow::{bail, Result};

/// `path` can be created (or replaced) as a file.
pub fn file(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{}: cannot create output: it is a folder", path.display());
    }
    folder_takes_files(path, parent(path))
}

/// `dir` exists and takes files, or can be created in a folder that does.
pub fn folder(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return folder_takes_files(dir, dir);
    }
    if dir.exists() {
        bail!(
            "{}: cannot create output: it is not a folder",
            dir.display()
        );
    }
    folder_takes_files(dir, parent(dir))
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn folder_takes_files(given: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        bail!(
            "{}: cannot create output: folder {} does not exist",
            given.display(),
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!(
            "{}: cannot create output: {} is not a folder",
            given.display(),
            dir.display()
        );
    }
    if let Err(e) = tempfile::tempfile_in(dir) {
        bail!("{}: cannot create output: {e}", given.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_file_parents_are_refused_and_nothing_is_created() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nodir/x.gguf");
        let e = file(&missing).unwrap_err().to_string();
        assert!(
            e.contains("nodir/x.gguf") && e.contains("does not exist"),
            "{e}"
        );
        let blocker = d.path().join("f");
        std::fs::write(&blocker, b"x").unwrap();
        let e = file(&blocker.join("x.gguf")).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        let e = folder(&blocker).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        assert!(file(&d.path().join("ok.gguf")).is_ok());
        assert!(folder(&d.path().join("peft")).is_ok());
        assert!(folder(d.path()).is_ok());
        let e = file(d.path()).unwrap_err().to_string();
        assert!(e.contains("it is a folder"), "{e}");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the blocker file: {names:?}");
    }
}
