//! Calibration on stories260K with a reduced recipe: the candle forward agrees with llama.cpp,
//! ApiQ beats its baselines block by block and in perplexity, and runs are reproducible and
//! resumable to the byte.

use std::path::{Path, PathBuf};

use apiq2gguf::calib::{data, load};
use apiq2gguf::nn::model::next_token_nll;
use apiq2gguf::source::ModelSource;
use candle_core::{DType, Device, Tensor};

use crate::common::*;

#[test]
fn candle_forward_reproduces_llama_cpp_perplexity() {
    // README golden: llama-perplexity with all-f32 attention on stories260K.gguf, c 256,
    // 20 chunks: 6.2814. Scoring as llama-perplexity: BOS first in each chunk, second half.
    let src = ModelSource::open(&stories_hf(), None).unwrap();
    let model = load::model(&src, DType::F32, &Device::Cpu).unwrap();
    let mut text = std::fs::read_to_string(tiny_text()).unwrap();
    text.pop();
    let tokens = data::tokenize(&src, &text).unwrap();
    assert_eq!(
        tokens.len(),
        134_730,
        "README: tiny.utf8 gives 134,730 tokens with BOS"
    );
    let (ctx, mut nll, mut n) = (256usize, 0.0f64, 0usize);
    for c in 0..20 {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        chunk[0] = 1;
        let ids = Tensor::from_slice(&chunk, (1, ctx), &Device::Cpu).unwrap();
        let logits = model.logits(&ids).unwrap().squeeze(0).unwrap();
        let v = next_token_nll(
            &logits.narrow(0, ctx / 2, ctx / 2 - 1).unwrap(),
            &chunk[ctx / 2 + 1..],
        )
        .unwrap();
        nll += v.iter().sum::<f64>();
        n += v.len();
    }
    let ppl = (nll / n as f64).exp();
    assert_eq!(n, 2540);
    assert!(
        (ppl / 6.2814 - 1.0).abs() < 1e-4,
        "candle PPL {ppl} vs llama.cpp 6.2814"
    );
}

fn calibrate(out: &Path, extra: &[&str]) -> String {
    String::from_utf8(calibrate_quick(&stories_hf(), out, extra).stdout).expect("utf-8 stdout")
}

fn ppl(model: &Path, lora: Option<&Path>) -> f64 {
    let lora_args: Vec<&std::ffi::OsStr> =
        lora.map_or(Vec::new(), |l| vec!["--lora".as_ref(), l.as_os_str()]);
    perplexity_with(model, &tiny_text(), 256, 20, &lora_args)
}

fn lora_of(out: &Path) -> PathBuf {
    out.with_file_name(
        out.file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".gguf", ".lora.gguf"),
    )
}

#[test]
fn apiq_beats_lwc_only_and_rtn_block_by_block_and_in_perplexity() {
    let d = tempdir();
    let out = d.path().join("apiq.gguf");
    let table = calibrate(&out, &["--baselines", "--format", "f16"]);
    // block  mse_rtn  mse_lwc  mse_apiqbw
    let rows: Vec<Vec<f64>> = table
        .lines()
        .skip(1)
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 5, "{table}");
    for (b, r) in rows.iter().enumerate() {
        assert!(
            r[2] < r[1] && r[1] < r[0],
            "block {b}: ApiQ {} < LWC-only {} < RTN {} fails",
            r[2],
            r[1],
            r[0]
        );
    }
    let rtn = d.path().join("rtn.gguf");
    calibrate(&rtn, &["--method", "rtn", "--format", "f16"]);
    assert!(!lora_of(&rtn).exists(), "RTN has no adapter");
    let (p_rtn, p_apiq) = (ppl(&rtn, None), ppl(&out, Some(&lora_of(&out))));
    assert!(p_apiq < p_rtn, "ApiQ+LoRA PPL {p_apiq} vs RTN {p_rtn}");
}

#[test]
fn apiq_lw_beats_rtn_block_by_block_and_in_perplexity() {
    let d = tempdir();
    let out = d.path().join("lw.gguf");
    let table = calibrate(&out, &["--method", "apiq-lw", "--format", "f16"]);
    // block  mse_rtn  -  mse_apiq-lw
    let rows: Vec<(f64, f64)> = table
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            (v[1].parse().unwrap(), v[3].parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 5, "{table}");
    for (b, (rtn, lw)) in rows.iter().enumerate() {
        assert!(lw < rtn, "block {b}: ApiQ-lw {lw} < RTN {rtn} fails");
    }
    let rtn = d.path().join("rtn.gguf");
    calibrate(&rtn, &["--method", "rtn", "--format", "f16"]);
    let (p_rtn, p_lw) = (ppl(&rtn, None), ppl(&out, Some(&lora_of(&out))));
    assert!(p_lw < p_rtn, "ApiQ-lw+LoRA PPL {p_lw} vs RTN {p_rtn}");
}

#[test]
fn same_seed_same_bytes_and_kill_resume_is_identical() {
    let d = tempdir();
    let a = d.path().join("a.gguf");
    let table_a = calibrate(&a, &[]);
    let b = d.path().join("b.gguf");
    calibrate(&b, &[]);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "same seed, different base bytes"
    );
    assert!(
        std::fs::read(lora_of(&a)).unwrap() == std::fs::read(lora_of(&b)).unwrap(),
        "same seed, different adapter"
    );

    // Kill (SIGKILL: no handler runs) once two blocks are saved, then run the same command.
    let c = d.path().join("c.gguf");
    let args = quick_args(&stories_hf(), &c, &shared().join("data/calib/c4.utf8"), &[]);
    let mut child = bin()
        .args(&args)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = d.path().join("c.gguf.apiq-state");
    let t = std::time::Instant::now();
    while !state.join("block-0001.safetensors").exists() {
        assert!(
            t.elapsed().as_secs() < 120 && child.try_wait().unwrap().is_none(),
            "run ended before block 1 was saved"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!c.exists(), "a killed run left an output");
    let resumed = bin().args(&args).output().unwrap();
    let log = String::from_utf8(resumed.stderr).unwrap();
    assert!(
        log.contains("blk.0   resumed") && log.contains("blk.1   resumed"),
        "{log}"
    );
    // The replayed blocks' RTN MSEs come from the saved state, not from a new requantization:
    // the table must still be the uninterrupted run's, digit for digit.
    assert_eq!(String::from_utf8(resumed.stdout).unwrap(), table_a);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&c).unwrap(),
        "resumed base differs"
    );
    assert!(
        std::fs::read(lora_of(&a)).unwrap() == std::fs::read(lora_of(&c)).unwrap(),
        "resumed adapter differs"
    );
    assert!(!state.exists(), "resume state left after success");
    let stray: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn data_parallel_ranks_reproduce_the_one_device_run() {
    // Steps of two windows on one device, and on two ranks (CPU threads) holding one window
    // of each step: the ranks' gradients summed in rank order are the one device's sum in
    // window order, so both runs write the same bytes.
    let d = tempdir();
    let one = d.path().join("one.gguf");
    calibrate(&one, &["--batch-size", "2"]);
    let two = d.path().join("two.gguf");
    calibrate(&two, &["--batch-size", "2", "--devices", "cpu,cpu"]);
    for (a, b) in [(one.clone(), two.clone()), (lora_of(&one), lora_of(&two))] {
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{} and {} differ",
            a.display(),
            b.display()
        );
    }
    // And steps of two windows do train differently from steps of one.
    let single = d.path().join("single.gguf");
    calibrate(&single, &[]);
    assert!(std::fs::read(&single).unwrap() != std::fs::read(&one).unwrap());

    // A step's windows must split evenly over the ranks.
    let args = quick_args(
        &stories_hf(),
        &d.path().join("uneven.gguf"),
        &shared().join("data/calib/c4.utf8"),
        &["--devices", "cpu,cpu"],
    );
    let o = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--batch-size must be a multiple"),
        "{err}"
    );
    assert!(!d.path().join("uneven.gguf").exists());
}
