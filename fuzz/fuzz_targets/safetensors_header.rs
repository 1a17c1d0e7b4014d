//! Safetensors headers and `model.safetensors.index.json` on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = apiq2gguf::hf::weights::read_header(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = apiq2gguf::hf::weights::shard_names(text);
    }
});
