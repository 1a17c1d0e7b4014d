//! The demo's pieces (`scripts/demo.sh`, which the README's first command runs on SmolLM2) on
//! stories260K, with the source model as the reference: both answers printed and agreeing at
//! the start, and the table of sizes and held-out perplexity with the quantized model close to
//! the source.

use std::process::Command;

use crate::common::{shared, tempdir, tiny_heldout, tiny_text};

/// The last value of the markdown table row that starts with `label`.
fn row<'a>(stdout: &'a str, label: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row `{label}` in:\n{stdout}"));
    line.split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

fn answer<'a>(stdout: &'a str, label: &str) -> &'a str {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no answer `{label}` in:\n{stdout}"));
    line.split_once(":   ").map_or("", |(_, a)| a).trim()
}

#[test]
fn demo_answers_side_by_side_and_reports_sizes_and_heldout_perplexity() {
    let dir = tempdir();
    let held = tiny_heldout(dir.path());
    let src = shared().join("models/stories260K/stories260K.gguf");
    let out = dir.path().join("st4.gguf");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh");
    let run = Command::new("bash")
        .arg(script)
        .arg(&src)
        .arg(&out)
        .arg(&held)
        .arg("Once upon a time")
        .arg("--calib")
        .arg(tiny_text())
        .args(["--calib-max-bytes", "200000"])
        .env("APIQ2GGUF", env!("CARGO_BIN_EXE_apiq2gguf"))
        .output()
        .expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("Q: Once upon a time"), "{stdout}");
    let source = answer(&stdout, "source stories260K:");
    let quantized = answer(&stdout, "ApiQ 4-bit g64 (Q4_1) + LoRA adapter:");
    let words = |s: &str| s.split_whitespace().take(8).collect::<Vec<_>>().join(" ");
    assert_eq!(words(source).split(' ').count(), 8, "{stdout}");
    assert_eq!(words(quantized), words(source), "{stdout}");

    let src_row = row(&stdout, "| source stories260K");
    let q_row = row(&stdout, "| ApiQ 4-bit g64 Q4_1 + LoRA r16 Q8_0");
    let rtn_row = row(&stdout, "| RTN 4-bit g64 Q4_1");
    let q40_row = row(&stdout, "| llama.cpp Q4_0");
    let num = |c: &str| -> f64 { c.parse().unwrap_or_else(|_| panic!("`{c}`: {stdout}")) };
    let (src_mib, src_ppl) = (num(src_row[1]), num(src_row[3]));
    let (q_mib, adapter_mib, q_ppl) = (num(q_row[1]), num(q_row[2]), num(q_row[3]));
    assert!(q_mib < src_mib && adapter_mib > 0.0, "{stdout}");
    // 4 bits + LoRA on the quick recipe stays within 15 % of the F32 source.
    assert!(
        q_ppl > src_ppl * 0.9 && q_ppl < src_ppl * 1.15,
        "held-out PPL {q_ppl} vs source {src_ppl}"
    );
    // The same bits, groups and format by round-to-nearest: the same model file size, and
    // worse than ApiQ's calibration with its adapter.
    let (rtn_mib, rtn_ppl) = (num(rtn_row[1]), num(rtn_row[3]));
    assert_eq!(rtn_mib, q_mib, "{stdout}");
    assert!(rtn_ppl > q_ppl, "RTN {rtn_ppl} vs ApiQ {q_ppl}");
    let q40_ppl = num(q40_row[3]);
    assert!(q40_ppl > src_ppl * 0.9 && q40_ppl.is_finite(), "{stdout}");
}
