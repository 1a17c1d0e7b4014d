//! The GGUF reader on arbitrary bytes: errors are fine, panics, hangs and large allocations
//! are not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = apiq2gguf::gguf::reader::check_bytes(data);
});
