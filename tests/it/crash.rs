//! Crash safety: SIGKILL at random points during calibration and writing never loses finished
//! blocks or leaves a file that looks complete; full and read-only destinations fail with a
//! clear error and leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common::*;

fn calib_args(out: &Path) -> Vec<std::ffi::OsString> {
    vec![
        stories_hf().into(),
        out.into(),
        "--quick".into(),
        "--calib".into(),
        shared().join("data/calib/c4.utf8").into(),
    ]
}

fn outputs(out: &Path) -> [PathBuf; 3] {
    let s = out.to_string_lossy();
    let stem = s.strip_suffix(".gguf").unwrap();
    [
        out.to_path_buf(),
        PathBuf::from(format!("{stem}.lora.gguf")),
        PathBuf::from(format!("{stem}.Modelfile")),
    ]
}

/// Base and adapter bytes (the Modelfile names its own files, so it differs by name).
fn read_all(out: &Path) -> Vec<Vec<u8>> {
    outputs(out)[..2]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn twenty_random_sigkills_in_a_row_then_identical_bytes() {
    let d = tempdir();
    let reference = d.path().join("ref.gguf");
    let t0 = Instant::now();
    bin().args(calib_args(&reference)).output().unwrap();
    let undisturbed = t0.elapsed().as_secs_f64();
    let want = read_all(&reference);

    // Kill points uniform over an undisturbed run (seeded, so a failure can be replayed):
    // they land in start-up, training, state saves, block streaming and the final renames.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let out = d.path().join("k.gguf");
    let (mut kills, mut completed) = (0, 0);
    let mut log = Vec::new();
    while kills < 20 {
        let delay = rng.random_range(0.0..undisturbed * 1.1);
        let mut child = Command::new(env!("CARGO_BIN_EXE_apiq2gguf"))
            .arg("--quiet")
            .args(calib_args(&out))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs_f64(delay);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            log.push(format!("{delay:.2}s kill"));
            // OUT never appears without its adapter, and what appeared is complete and right
            // (the Modelfile comes last and may lag).
            let [base, adapter, _] = outputs(&out);
            if base.exists() {
                assert!(adapter.exists(), "OUT without its adapter after {log:?}");
                assert!(
                    std::fs::read(&base).unwrap() == want[0]
                        && std::fs::read(&adapter).unwrap() == want[1],
                    "complete outputs differ after {log:?}"
                );
            }
        } else {
            // Finished before its kill point: it must match, and the next cycle starts over.
            completed += 1;
            log.push(format!("{delay:.2}s done"));
            assert!(read_all(&out) == want, "outputs differ after {log:?}");
            for p in outputs(&out) {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    let o = bin().args(calib_args(&out)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(read_all(&out) == want, "final outputs differ after {log:?}");
    let mut left = listing(d.path());
    left.retain(|n| !n.starts_with("ref."));
    assert_eq!(
        left,
        vec!["k.Modelfile", "k.gguf", "k.lora.gguf"],
        "state or temp files left after {log:?}"
    );
    eprintln!("{kills} kills, {completed} runs completed first: {log:?}");
}

fn convert_into(out: &Path, shell_prefix: &str) -> std::process::Output {
    let cmd = format!("{shell_prefix} exec \"$0\" --quiet \"$1\" \"$2\" --type f32",);
    Command::new("sh")
        .args(["-c", &cmd])
        .arg(env!("CARGO_BIN_EXE_apiq2gguf"))
        .arg(stories_hf())
        .arg(out)
        .output()
        .unwrap()
}

fn assert_clean_failure(o: &std::process::Output, out: &Path, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&out.display().to_string()) && err.contains(needle),
        "{err}"
    );
    assert!(
        listing(out.parent().unwrap()).is_empty(),
        "left {:?}",
        listing(out.parent().unwrap())
    );
}

#[test]
fn full_disk_gives_a_clear_error_and_leaves_nothing() {
    // stories260K as F32 is about 1 MiB: a 256 KiB tmpfs fills up part way through.
    match Tmpfs::mount("size=256k") {
        Some(fs) => {
            let out = fs.0.join("o.gguf");
            let o = convert_into(&out, "");
            assert_clean_failure(&o, &out, "No space left on device");
        }
        None => eprintln!("tmpfs not permitted here: only the size-limited file case runs"),
    }
    // A size-limited file (RLIMIT_FSIZE, SIGXFSZ ignored so write fails with EFBIG).
    let d = tempdir();
    let out = d.path().join("o.gguf");
    let o = convert_into(&out, "trap '' XFSZ; ulimit -f 256;");
    assert_clean_failure(&o, &out, "File too large");
}

#[test]
fn read_only_destination_gives_a_clear_error_and_leaves_nothing() {
    let Some(fs) = Tmpfs::mount("ro,size=64k") else {
        eprintln!("tmpfs not permitted here: read-only case skipped");
        return;
    };
    let out = fs.0.join("o.gguf");
    let o = convert_into(&out, "");
    assert_clean_failure(&o, &out, "Read-only file system");
}
