//! Outputs appear only complete: every output is written to a temporary file beside its final
//! path and renamed into place after an fsync. The temporary files are registered so that a
//! Ctrl-C (SIGINT/SIGTERM) removes them before the process exits.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static NOTE: Mutex<Option<String>> = Mutex::new(None);
static HANDLER: Once = Once::new();

fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        // If a handler cannot be installed (another library owns the signal) outputs stay atomic
        // but a temporary file may remain after Ctrl-C; nothing else depends on this.
        let _ = ctrlc::set_handler(|| {
            if let Ok(paths) = LIVE.lock() {
                for p in paths.iter() {
                    let _ = std::fs::remove_file(p);
                }
            }
            if let Ok(note) = NOTE.lock() {
                if let Some(n) = note.as_deref() {
                    eprintln!("\n{n}");
                }
            }
            exit_now(130);
        });
    });
}

/// Ends the process without C `atexit` handlers and static destructors: run from here, while
/// the main thread may still be scoring on the GPU, ggml's CUDA teardown would meet a busy
/// stream and print a CUDA error with a backtrace over the note. The handler has already done
/// all that must be done (temporary files removed, note printed).
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` reads no memory of ours and does not return.
    unsafe { libc::_exit(code) }
}

/// One line for the user if the run is interrupted now (what is saved, how to go on); `None`
/// for none. Installs the Ctrl-C / SIGTERM handler.
pub fn set_interrupt_note(note: Option<String>) {
    install_interrupt_handler();
    if let Ok(mut n) = NOTE.lock() {
        *n = note;
    }
}

/// Removes temporary files a killed run (SIGKILL, power loss) left for the same output.
fn remove_stale(parent: &Path, name: &str) {
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let f = e.file_name();
        let f = f.to_string_lossy();
        if f.starts_with(&prefix) && f.ends_with(".partial") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A file being written; `commit` renames it to its final path, dropping it deletes it.
pub struct AtomicFile {
    target: PathBuf,
    writer: BufWriter<NamedTempFile>,
    _registration: Registration,
}

/// Keeps a temporary file's path in the interrupt handler's list while it exists.
struct Registration(PathBuf);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|q| *q != self.0);
        }
    }
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<AtomicFile> {
        install_interrupt_handler();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if target.is_dir() {
            anyhow::bail!("{}: is a directory", target.display());
        }
        remove_stale(&parent, &name);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(&parent)
            .with_context(|| format!("{}: cannot create output", target.display()))?;
        let temp_path = tmp.path().to_path_buf();
        LIVE.lock()
            .expect("no panics while holding the lock")
            .push(temp_path.clone());
        Ok(AtomicFile {
            target: target.to_path_buf(),
            writer: BufWriter::with_capacity(1 << 20, tmp),
            _registration: Registration(temp_path),
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes, fsyncs and renames into place.
    pub fn commit(self) -> Result<()> {
        let target = self.target.clone();
        let ctx = || format!("{}: cannot write output", target.display());
        let tmp = self
            .writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(ctx)?;
        // tempfile creates 0600; outputs are ordinary files (0644 before the umask).
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .with_context(ctx)?;
        }
        tmp.as_file().sync_all().with_context(ctx)?;
        tmp.persist(&target)
            .map_err(|e| e.error)
            .with_context(ctx)?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}
