//! The CPU paths llama.cpp picks for the weights (ggml's AMX tile kernels, its repacked SIMD
//! kernels, the plain dot products): `bench` names them, and on a CPU with AMX (`amx_int8` in
//! /proc/cpuinfo) Q4_0, Q4_1, Q8_0 and APIQ2 files run through `perplexity` and `generate` on the
//! AMX kernels and agree with the plain dot products (`--no-repack`, llama.cpp's own switch).
//! Elsewhere the AMX tests say on one line that they were skipped.

use std::path::{Path, PathBuf};

use crate::common::*;

fn cpu_has_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|s| s.split_whitespace().any(|w| w == "amx_int8"))
}

/// The buffers `bench` says the weights were loaded into (`weights in AMX 1.00 MiB, …`).
fn weight_buffers(model: &Path, lora: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "bench".as_ref(),
        model.as_os_str(),
        "-p".as_ref(),
        "16".as_ref(),
        "-n".as_ref(),
        "4".as_ref(),
        "-r".as_ref(),
        "1".as_ref(),
    ];
    with_lora(&mut args, lora);
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let out = run_ok(&args);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("cpu paths: "))
        .unwrap_or_else(|| panic!("no `cpu paths:` line in:\n{out}"));
    let (_, buffers) = line
        .split_once("| weights in ")
        .unwrap_or_else(|| panic!("no weight buffers in `{line}`"));
    buffers
        .split(", ")
        .map(|b| b.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// stories260K as Q4_0, Q4_1 and Q8_0 (ggml's quantizers, `--type`) and as APIQ2 + LoRA (a
/// quick calibration): (name, model, adapter).
fn stories_files(dir: &Path) -> Vec<(&'static str, PathBuf, Option<PathBuf>)> {
    let src = shared().join("models/stories260K/stories260K.gguf");
    let mut files = Vec::new();
    for (name, ty) in [("Q4_0", "q4_0"), ("Q4_1", "q4_1"), ("Q8_0", "q8_0")] {
        let out = dir.join(format!("stories-{ty}.gguf"));
        run_ok(&[
            src.as_os_str(),
            out.as_os_str(),
            "--type".as_ref(),
            ty.as_ref(),
        ]);
        files.push((name, out, None));
    }
    let out = dir.join("stories-apiq2.gguf");
    calibrate_quick(&stories_hf(), &out, &["--embed-type", "q8_0"]);
    files.push(("APIQ2", out.clone(), Some(out.with_extension("lora.gguf"))));
    files
}

fn with_lora<'a>(args: &mut Vec<&'a std::ffi::OsStr>, lora: Option<&'a Path>) {
    if let Some(l) = lora {
        args.extend(["--lora".as_ref(), l.as_os_str()]);
    }
}

fn ppl(model: &Path, lora: &Option<PathBuf>, text: &Path, extra: &[&str]) -> f64 {
    let mut args = Vec::new();
    with_lora(&mut args, lora.as_deref());
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    perplexity_with(model, text, 128, 8, &args)
}

/// Greedy token ids of 16 generated tokens.
fn generated_ids(model: &Path, lora: &Option<PathBuf>, prompt: &str, extra: &[&str]) -> Vec<i64> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "generate".as_ref(),
        model.as_os_str(),
        "-p".as_ref(),
        prompt.as_ref(),
        "-n".as_ref(),
        "16".as_ref(),
        "--ids".as_ref(),
    ];
    with_lora(&mut args, lora.as_deref());
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let out = run_ok(&args);
    out.lines()
        .find_map(|l| l.strip_prefix("generated ids: "))
        .unwrap_or_else(|| panic!("no generated ids in:\n{out}"))
        .split_whitespace()
        .map(|t| t.parse().expect("a token id"))
        .collect()
}

/// The AMX run of one file against its plain run: both complete, perplexity within 0.5 %, and
/// the same first 8 greedy tokens.
fn check_against_plain(
    name: &str,
    model: &Path,
    lora: &Option<PathBuf>,
    text: &Path,
    prompt: &str,
) {
    let buffers = weight_buffers(model, lora.as_deref(), &[]);
    assert!(
        buffers.iter().any(|b| b == "AMX"),
        "{name}: no weight in llama.cpp's AMX buffer ({buffers:?}): the AMX path was not run"
    );
    let (amx, plain) = (
        ppl(model, lora, text, &[]),
        ppl(model, lora, text, &["--no-repack"]),
    );
    assert!(
        amx.is_finite() && (amx / plain - 1.0).abs() < 5e-3,
        "{name}: PPL on AMX {amx}, plain {plain}"
    );
    let (amx, plain) = (
        generated_ids(model, lora, prompt, &[]),
        generated_ids(model, lora, prompt, &["--no-repack"]),
    );
    assert_eq!(amx.len(), 16, "{name}: {amx:?}");
    assert_eq!(amx[..8], plain[..8], "{name}: AMX {amx:?}, plain {plain:?}");
}

#[test]
fn amx_runs_q4_0_q4_1_q8_0_and_apiq2_like_the_plain_kernels() {
    if !cpu_has_amx() {
        eprintln!("skipped: this CPU has no AMX (no amx_int8 in /proc/cpuinfo)");
        return;
    }
    let dir = tempdir();
    let text = tiny_heldout(dir.path());
    for (name, model, lora) in stories_files(dir.path()) {
        check_against_plain(name, &model, &lora, &text, "Once upon a time");
    }
}

#[test]
fn amx_runs_smollm2_q4_1_like_the_plain_kernels() {
    if !cpu_has_amx() {
        eprintln!("skipped: this CPU has no AMX (no amx_int8 in /proc/cpuinfo)");
        return;
    }
    let wiki = shared().join("data/wikitext-2-raw/wiki.test.raw");
    check_against_plain(
        "SmolLM2 Q4_1",
        &smollm2_gguf(),
        &None,
        &wiki,
        "The capital of France is",
    );
}

#[test]
fn bench_names_the_buffers_of_the_weights() {
    let dir = tempdir();
    let files = stories_files(dir.path());
    for (name, model, lora) in &files {
        let plain = weight_buffers(model, lora.as_deref(), &["--no-repack"]);
        assert!(
            !plain.is_empty() && plain.iter().all(|b| b == "CPU_Mapped" || b == "CPU"),
            "{name} with --no-repack: {plain:?}"
        );
        let default = weight_buffers(model, lora.as_deref(), &[]);
        assert!(!default.is_empty(), "{name}: {default:?}");
        if cpu_has_amx() && *name != "APIQ2" {
            assert!(default.iter().any(|b| b == "AMX"), "{name}: {default:?}");
        }
    }
    // APIQ2's matrix kernels work on repacked rows wherever this build has them (x86 AVX2,
    // ARM NEON): its linears must be in llama.cpp's repack buffer.
    let (_, apiq2, lora) = files.iter().find(|f| f.0 == "APIQ2").unwrap();
    if cfg!(any(target_feature = "avx2", target_arch = "aarch64")) {
        let default = weight_buffers(apiq2, lora.as_deref(), &[]);
        assert!(
            default.iter().any(|b| b == "CPU_REPACK"),
            "APIQ2: {default:?}"
        );
    }
}
