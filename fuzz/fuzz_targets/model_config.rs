//! config.json on arbitrary text, through to the derived rope factors.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = apiq2gguf::hf::config::ModelSpec::parse(text) {
            let _ = spec.rope_factors();
        }
    }
});
