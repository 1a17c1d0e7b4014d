//! tokenizer.json export on arbitrary files (written to a temporary model directory).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tokenizer.json"), data).expect("write");
    let _ = apiq2gguf::hf::tokenizer::export(dir.path(), 0, None);
});
