//! Bad inputs: each gives a one-line error naming the file and the problem, a non-zero exit,
//! and leaves no output (nor a temporary file) behind.

use std::path::{Path, PathBuf};

use crate::common::*;

/// Runs a conversion that must fail; returns its one-line error.
fn convert_fails(model: &Path, out: &Path) -> String {
    let o = run(&[
        model.as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        "f16".as_ref(),
    ]);
    assert!(
        !o.status.success(),
        "conversion of {} unexpectedly succeeded",
        model.display()
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(!out.exists(), "{} was left behind", out.display());
    if let Some(parent) = out.parent().filter(|p| p.is_dir()) {
        let leftovers: Vec<PathBuf> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
    lines[0].to_string()
}

fn assert_mentions(err: &str, file: &Path, problem: &str) {
    assert!(
        err.contains(&file.display().to_string()),
        "error does not name {}: {err}",
        file.display()
    );
    assert!(
        err.contains(problem),
        "error does not say `{problem}`: {err}"
    );
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn missing_config_json() {
    let m = copy_dir(&stories_hf());
    std::fs::remove_file(m.path().join("config.json")).unwrap();
    let out = tempdir();
    let err = convert_fails(m.path(), &out.path().join("o.gguf"));
    assert_mentions(&err, &m.path().join("config.json"), "missing");
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let m = copy_dir(&stories_hf());
    edit_config(m.path(), |v| {
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    let out = tempdir();
    let err = convert_fails(m.path(), &out.path().join("o.gguf"));
    assert_mentions(
        &err,
        &m.path().join("config.json"),
        "unsupported architecture GPT2LMHeadModel",
    );
    assert!(
        err.contains("LlamaForCausalLM") && err.contains("Qwen2ForCausalLM"),
        "{err}"
    );
}

#[test]
fn truncated_safetensors() {
    let m = copy_dir(&stories_hf());
    let st = m.path().join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let out = tempdir();
    let err = convert_fails(m.path(), &out.path().join("o.gguf"));
    assert_mentions(&err, &st, "truncated");
}

#[test]
fn tensor_shape_mismatch() {
    let m = copy_dir(&stories_hf());
    edit_config(m.path(), |v| v["intermediate_size"] = 160.into());
    let out = tempdir();
    let err = convert_fails(m.path(), &out.path().join("o.gguf"));
    assert_mentions(
        &err,
        &m.path().join("model.safetensors"),
        "has shape [172, 64], expected [160, 64]",
    );
}

#[test]
fn non_finite_weights() {
    for bad in [f32::NAN, f32::INFINITY] {
        let m = copy_dir(&stories_hf());
        let st = m.path().join("model.safetensors");
        let mut bytes = std::fs::read(&st).unwrap();
        let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let info = meta.info("model.layers.2.mlp.up_proj.weight").unwrap();
        let at = 8 + n + info.data_offsets.0 + 4 * 77;
        bytes[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        std::fs::write(&st, bytes).unwrap();
        let out = tempdir();
        let err = convert_fails(m.path(), &out.path().join("o.gguf"));
        assert_mentions(&err, &st, "non-finite value");
        assert!(
            err.contains("blk.2.ffn_up.weight") && err.contains("element 77"),
            "{err}"
        );
    }
}

#[test]
fn unwritable_output() {
    // A parent that is a file: no user, root included, can create anything under it.
    let d = tempdir();
    let blocker = d.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("o.gguf");
    let err = convert_fails(&stories_hf(), &out);
    assert_mentions(&err, &out, "cannot create output");
}

/// Byte position of the tensor-info record of `name` in a GGUF file (just after its name).
fn info_pos(bytes: &[u8], name: &str) -> usize {
    let needle = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("tensor name in header")
        + needle.len()
}

fn corrupt_reference(edit: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let d = tempdir();
    let mut bytes = std::fs::read(shared().join("models/stories260K/stories260K.gguf")).unwrap();
    edit(&mut bytes);
    std::fs::write(d.path().join("in.gguf"), bytes).unwrap();
    d
}

#[test]
fn gguf_with_unknown_type_id() {
    let d = corrupt_reference(|b| {
        // token_embd.weight: n_dims u32, 2 × ne u64, then the type id.
        let p = info_pos(b, "token_embd.weight") + 4 + 16;
        b[p..p + 4].copy_from_slice(&99u32.to_le_bytes());
    });
    let input = d.path().join("in.gguf");
    let err = convert_fails(&input, &d.path().join("o.gguf"));
    assert_mentions(
        &err,
        &input,
        "tensor `token_embd.weight` has unknown ggml type id 99",
    );
}

#[test]
fn gguf_with_a_lying_tensor_offset() {
    let d = corrupt_reference(|b| {
        let p = info_pos(b, "output_norm.weight") + 4 + 8 + 4;
        b[p..p + 8].copy_from_slice(&4096u64.to_le_bytes());
    });
    let input = d.path().join("in.gguf");
    let err = convert_fails(&input, &d.path().join("o.gguf"));
    assert_mentions(
        &err,
        &input,
        "tensor `output_norm.weight` has offset 4096, expected 131072",
    );
}

#[test]
fn gguf_whose_header_claims_billions_of_tensors_fails_fast() {
    let d = corrupt_reference(|b| b[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes()));
    let input = d.path().join("in.gguf");
    let err = convert_fails(&input, &d.path().join("o.gguf"));
    assert_mentions(&err, &input, "more than the file can hold");
}

#[test]
fn missing_model_path() {
    let d = tempdir();
    let input = d.path().join("nope");
    let err = convert_fails(&input, &d.path().join("o.gguf"));
    assert_mentions(&err, &input, "no such file or directory");
}

#[test]
fn interrupt_leaves_nothing_behind() {
    // SIGINT once the temporary output exists, i.e. in the middle of writing.
    let d = tempdir();
    let out = d.path().join("big.gguf");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_apiq2gguf"))
        .args([
            smollm2_gguf().as_os_str(),
            out.as_os_str(),
            "--type".as_ref(),
            "f32".as_ref(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let partial = || {
        std::fs::read_dir(d.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
    };
    while !partial() {
        assert!(
            started.elapsed().as_secs() < 30,
            "no temporary output appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        0,
        "files left after Ctrl-C"
    );
}

#[test]
fn gpu_layers_without_a_gpu_backend() {
    if cfg!(feature = "cuda") {
        return; // a CUDA build takes the flag
    }
    let model = shared().join("models/stories260K/stories260K.gguf");
    let o = run(&[
        "perplexity".as_ref(),
        model.as_os_str(),
        "-f".as_ref(),
        tiny_text().as_os_str(),
        "--gpu-layers".as_ref(),
        "99".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: --gpu-layers 99:") && err.contains("--features cuda"),
        "{err}"
    );
}
