//! Calibration's edges as a user meets them: outputs checked before any work, the resume hint
//! on Ctrl-C, what a format really wrote, input errors before the banner.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A quick calibration that must fail at once: one error line, no banner, nothing created.
fn fails_before_work(model: &Path, out: &Path, extra: &[&str]) -> String {
    let o = bin()
        .args(quick_args(model, out, &tiny_text(), extra))
        .output()
        .expect("run apiq2gguf");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        !err.contains("calibrating"),
        "banner before the error:\n{err}"
    );
    lines[0].to_string()
}

#[test]
fn missing_output_folder_is_refused_before_any_work() {
    let d = tempdir();
    let out = d.path().join("nodir/x.gguf");
    let err = fails_before_work(&stories_hf(), &out, &[]);
    assert!(
        err.contains(&out.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!d.path().join("nodir").exists(), "nodir/ was created");
    // The same for the PEFT folder's parent, with OUT itself fine.
    let out = d.path().join("x.gguf");
    let peft = d.path().join("no/peft");
    let err = fails_before_work(&stories_hf(), &out, &["--peft", peft.to_str().unwrap()]);
    assert!(err.contains(&peft.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        0,
        "something was created"
    );
}

#[test]
fn read_only_output_folder_is_refused_before_any_work() {
    let Some(fs) = Tmpfs::mount("ro,size=64k") else {
        eprintln!("tmpfs not permitted here: read-only case skipped");
        return;
    };
    let out = fs.0.join("x.gguf");
    let err = fails_before_work(&stories_hf(), &out, &[]);
    assert!(
        err.contains(&out.display().to_string()) && err.contains("Read-only file system"),
        "{err}"
    );
}

#[test]
fn truncated_model_fails_before_the_banner() {
    let d = tempdir();
    let bytes = std::fs::read(shared().join("models/stories260K/stories260K.gguf")).unwrap();
    let model = d.path().join("cut.gguf");
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails_before_work(&model, &d.path().join("x.gguf"), &[]);
    assert!(err.contains("cut.gguf"), "{err}");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        1,
        "outputs appeared"
    );
}

#[test]
fn ctrl_c_says_how_many_blocks_are_saved_and_that_the_same_command_resumes() {
    let d = tempdir();
    let out = d.path().join("x.gguf");
    let calib = tiny_text();
    // Enough epochs that blocks 1-4 are still to come when block 0 is saved.
    let mut child = bin()
        .args([
            stories_hf().as_os_str(),
            out.as_os_str(),
            "--quick".as_ref(),
            "--epochs".as_ref(),
            "20".as_ref(),
            "--calib".as_ref(),
            calib.as_os_str(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let first = d.path().join("x.gguf.apiq-state/block-0000.safetensors");
    let t = Instant::now();
    while !first.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "block 0 never saved"
        );
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("interrupted: ")
            && last.contains("of 5 blocks saved in")
            && last.contains("x.gguf.apiq-state")
            && last.contains("run the same command again to resume"),
        "{err}"
    );
    let saved: usize = last["interrupted: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let on_disk = (0..5)
        .filter(|l| {
            d.path()
                .join(format!("x.gguf.apiq-state/block-{l:04}.safetensors"))
                .exists()
        })
        .count();
    assert!(
        saved >= 1 && saved <= on_disk,
        "said {saved}, {on_disk} on disk"
    );
}

#[test]
fn q2_k_fallback_is_reported_with_the_real_bits_per_weight() {
    let d = tempdir();
    let out = d.path().join("k.gguf");
    // stories260K: rows of 64 (no Q2_K block fits) and an ffn_down of 172 inputs (F16).
    let o = calibrate_quick(&stories_hf(), &out, &["--format", "q2_k", "--epochs", "1"]);
    let err = stderr(&o);
    let summary = err
        .lines()
        .find(|l| l.starts_with(&format!("{}: ", out.display())) && l.contains("bpw"))
        .unwrap_or_else(|| panic!("no summary line:\n{err}"));
    assert!(summary.contains("30 q4_0, 5 f16"), "{summary}");
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning: --format q2_k stored 35 of 35 linears"))
        .unwrap_or_else(|| panic!("no fallback warning:\n{err}"));
    assert!(
        warning.contains("30 q4_0") && warning.contains("5 f16"),
        "{warning}"
    );
    // Q4_0 stores 32 weights in 18 bytes (4.5 bpw), F16 16 bpw: per block 34,304 weights in
    // q4_0 (q, k, v, o 64 inputs; gate, up 64 inputs, 172 rows) and 11,008 in f16 (down).
    let want = (34_304.0 * 4.5 + 11_008.0 * 16.0) / (34_304.0 + 11_008.0);
    let bpw: f64 = summary
        .split(" at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((bpw - want).abs() < 0.005, "{bpw} vs {want:.3}: {summary}");
}
