use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `../shared` beside the checkout: test models and text, never committed.
pub fn shared() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        p.join("models").is_dir(),
        "{} is missing: the tests read models and data from it",
        p.display()
    );
    p
}

pub fn stories_hf() -> PathBuf {
    shared().join("models/stories260K/hf")
}

pub fn tiny_text() -> PathBuf {
    shared().join("data/calib/tiny.utf8")
}

/// Held-out text for stories260K in `dir`: the last 60 kB of tiny.utf8 from a line start
/// (calibrations in the tests read at most its first 200 kB).
pub fn tiny_heldout(dir: &Path) -> PathBuf {
    let text = std::fs::read(tiny_text()).unwrap();
    let tail = &text[text.len() - 60_000..];
    let start = tail.iter().position(|&b| b == b'\n').unwrap() + 1;
    let held = dir.join("held.txt");
    std::fs::write(&held, &tail[start..]).unwrap();
    held
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF fetched by scripts/fetch-smollm2.sh.
pub fn smollm2_gguf() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.exists() {
        let st =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-smollm2.sh"))
                .status()
                .expect("run scripts/fetch-smollm2.sh");
        assert!(st.success(), "scripts/fetch-smollm2.sh failed");
    }
    p
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apiq2gguf"));
    c.arg("--quiet");
    c
}

pub fn run_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = bin().args(args).output().expect("run apiq2gguf");
    assert!(
        out.status.success(),
        "apiq2gguf {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `MODEL OUT --quick --calib CALIB EXTRA…` as arguments.
pub fn quick_args(
    model: &Path,
    out: &Path,
    calib: &Path,
    extra: &[&str],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        model.into(),
        out.into(),
        "--quick".into(),
        "--calib".into(),
        calib.into(),
    ];
    args.extend(extra.iter().map(std::ffi::OsString::from));
    args
}

/// `apiq2gguf MODEL OUT --quick --calib c4.utf8 EXTRA…`, which must succeed.
pub fn calibrate_quick(model: &Path, out: &Path, extra: &[&str]) -> Output {
    let args = quick_args(model, out, &shared().join("data/calib/c4.utf8"), extra);
    let o = bin().args(&args).output().expect("run apiq2gguf");
    assert!(
        o.status.success(),
        "{extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn run(args: &[&std::ffi::OsStr]) -> Output {
    bin().args(args).output().expect("run apiq2gguf")
}

/// Parses `Final estimate: PPL = X +/- Y`.
pub fn final_ppl(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Final estimate"))
        .expect("a final estimate line");
    line.split_whitespace()
        .nth(4)
        .expect("PPL value")
        .parse()
        .expect("a number")
}

pub fn perplexity(model: &Path, text: &Path, ctx: usize, chunks: usize) -> f64 {
    perplexity_with(model, text, ctx, chunks, &[])
}

/// `perplexity` with more arguments (`--lora FILE`, `--no-repack`, …).
pub fn perplexity_with(
    model: &Path,
    text: &Path,
    ctx: usize,
    chunks: usize,
    extra: &[&std::ffi::OsStr],
) -> f64 {
    let (c, n) = (ctx.to_string(), chunks.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "perplexity".as_ref(),
        model.as_os_str(),
        "-f".as_ref(),
        text.as_os_str(),
        "-c".as_ref(),
        c.as_ref(),
        "--chunks".as_ref(),
        n.as_ref(),
    ];
    args.extend_from_slice(extra);
    final_ppl(&run_ok(&args))
}

pub fn tokenize(model: &Path, text: &str, parse_special: bool) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "tokenize".as_ref(),
        model.as_os_str(),
        "-p".as_ref(),
        text.as_ref(),
    ];
    if parse_special {
        args.push("--parse-special".as_ref());
    }
    run_ok(&args).trim().to_string()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Copies a directory's files (flat) into a new temp dir.
pub fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dir = tempdir();
    for e in std::fs::read_dir(src).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
    }
    dir
}

/// A tmpfs mounted at a fresh directory, unmounted on drop; `None` where mounting is not
/// permitted (not root, or no CAP_SYS_ADMIN).
pub struct Tmpfs(pub PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    pub fn mount(options: &str) -> Option<Tmpfs> {
        let d = tempdir();
        let at = d.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(at, d))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
