//! stories260K HF → our F32 GGUF, run by llama.cpp: the golden perplexity and greedy
//! continuation of ../shared/models/README.md (measured with stock llama.cpp on its own GGUF).

use crate::common::*;

/// `llama-perplexity -c 256 --chunks 20` on stories260K.gguf (README golden table).
const GOLDEN_PPL: f64 = 6.2810;
/// The 40 greedy ids after "Once upon a time" (README, numpy re-implementation of hf/).
const GOLDEN_IDS: &str = "432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411 322 265 282 295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426";
const GOLDEN_TEXT: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.";

#[test]
fn stories260k_f32_matches_golden_perplexity_and_generation() {
    let dir = tempdir();
    let out = dir.path().join("stories-f32.gguf");
    run_ok(&[
        stories_hf().as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        "f32".as_ref(),
    ]);

    let ppl = perplexity(&out, &tiny_text(), 256, 20);
    assert!(
        (ppl / GOLDEN_PPL - 1.0).abs() < 1e-3,
        "PPL {ppl} vs golden {GOLDEN_PPL}"
    );

    let gen = run_ok(&[
        "generate".as_ref(),
        out.as_os_str(),
        "-p".as_ref(),
        "Once upon a time".as_ref(),
        "-n".as_ref(),
        "40".as_ref(),
        "--ids".as_ref(),
    ]);
    let ids = gen
        .lines()
        .find_map(|l| l.strip_prefix("generated ids: "))
        .expect("ids line");
    assert_eq!(ids, GOLDEN_IDS);
    let prompt_ids = gen
        .lines()
        .find_map(|l| l.strip_prefix("prompt ids: "))
        .expect("prompt ids line");
    assert_eq!(prompt_ids, "1 403 407 261 378");
    let text = gen.lines().next().expect("text line");
    assert_eq!(text.trim(), GOLDEN_TEXT);
}

#[test]
fn stories260k_f32_tensors_equal_the_reference_gguf() {
    // The reference GGUF was made by llama.cpp's own converter from the llama2.c checkpoint
    // (q/k in Meta order); our HF → GGUF path undoes the HF permutation, so every tensor must
    // be bit-identical.
    use apiq2gguf::gguf::GgufFile;
    let dir = tempdir();
    let out = dir.path().join("s.gguf");
    run_ok(&[
        stories_hf().as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        "f32".as_ref(),
    ]);
    let ours = GgufFile::open(&out).unwrap();
    let reference = GgufFile::open(&shared().join("models/stories260K/stories260K.gguf")).unwrap();
    let mut compared = 0;
    for t in &ours.tensors {
        let r = reference
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("{} not in the reference", t.name));
        assert_eq!(t.ne, r.ne, "{}", t.name);
        assert_eq!(
            ours.read_tensor_bytes(t, 0..t.size).unwrap(),
            reference.read_tensor_bytes(r, 0..r.size).unwrap(),
            "{}",
            t.name
        );
        compared += 1;
    }
    assert_eq!(compared, 47);
}

#[test]
fn stories260k_f16_bf16_q8_0_run_close_to_golden() {
    // Lossy types: perplexity moves a little, never far (independent bound: 2 %).
    let dir = tempdir();
    for ty in ["f16", "bf16", "q8_0"] {
        let out = dir.path().join(format!("s-{ty}.gguf"));
        run_ok(&[
            stories_hf().as_os_str(),
            out.as_os_str(),
            "--type".as_ref(),
            ty.as_ref(),
        ]);
        let ppl = perplexity(&out, &tiny_text(), 256, 20);
        assert!((ppl / GOLDEN_PPL - 1.0).abs() < 0.02, "{ty}: PPL {ppl}");
    }
}
