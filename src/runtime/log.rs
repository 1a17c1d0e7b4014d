//! llama.cpp's and ggml's log: shown with `--verbose`, dropped otherwise, and read either way for
//! the buffers a model's weights were loaded into (`load_tensors: AMX model buffer size = …`).
//! Those buffer names are the one place llama.cpp says which CPU path holds each weight: `AMX`
//! (Intel's tile kernels), `CPU_REPACK` (interleaved SIMD kernels, APIQ2's among them),
//! `CPU_Mapped` / `CPU` (the plain dot products), `CUDA0` (offloaded layers).
#![allow(unsafe_code)] // a C callback handed to llama.cpp; it only reads the text it is given.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static VERBOSE: AtomicBool = AtomicBool::new(false);
/// Buffers of the weights of the models loaded since the last `take_weight_buffers`.
static WEIGHT_BUFFERS: Mutex<Vec<WeightBuffer>> = Mutex::new(Vec::new());

/// One buffer holding weights: llama.cpp's buffer-type name and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightBuffer {
    pub name: String,
    pub mib: f64,
}

/// Routes llama.cpp's and ggml's log through [`on_log`]; `verbose` prints it to stderr.
pub fn install(verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
    // SAFETY: `on_log` has the callback's signature, keeps no pointer it is given and never
    // unwinds; llama_log_set also sets ggml's logger, ggml_log_set is repeated for clarity.
    unsafe {
        llama_cpp_sys_2::llama_log_set(Some(on_log), std::ptr::null_mut());
        llama_cpp_sys_2::ggml_log_set(Some(on_log), std::ptr::null_mut());
    }
}

unsafe extern "C" fn on_log(
    _level: llama_cpp_sys_2::ggml_log_level,
    text: *const c_char,
    _: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that lives for the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if VERBOSE.load(Ordering::Relaxed) {
        eprint!("{text}");
    }
    if let Some(b) = parse_weight_buffer(&text) {
        if let Ok(mut v) = WEIGHT_BUFFERS.lock() {
            v.push(b);
        }
    }
}

/// `load_tensors:   CPU_REPACK model buffer size =    12.34 MiB` → (`CPU_REPACK`, 12.34).
fn parse_weight_buffer(line: &str) -> Option<WeightBuffer> {
    let rest = line.trim().strip_prefix("load_tensors:")?;
    let (name, size) = rest.split_once(" model buffer size =")?;
    let mib = size.trim().strip_suffix("MiB")?.trim().parse().ok()?;
    Some(WeightBuffer {
        name: name.trim().to_string(),
        mib,
    })
}

/// The weight buffers logged since the last call (the models loaded in between).
pub fn take_weight_buffers() -> Vec<WeightBuffer> {
    WEIGHT_BUFFERS
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llama_cpp_buffer_lines() {
        assert_eq!(
            parse_weight_buffer("load_tensors:          AMX model buffer size =    45.50 MiB\n"),
            Some(WeightBuffer {
                name: "AMX".into(),
                mib: 45.5
            })
        );
        assert_eq!(
            parse_weight_buffer("load_tensors:   CPU_Mapped model buffer size =   93.78 MiB"),
            Some(WeightBuffer {
                name: "CPU_Mapped".into(),
                mib: 93.78
            })
        );
        assert_eq!(
            parse_weight_buffer("llama_context:        CPU compute buffer size =     8.00 MiB"),
            None
        );
    }
}
