//! ggml's own quantizers and dequantizers, called through the pinned llama-cpp-sys-2 build: the
//! exact code `llama-quantize` runs. Used for the tensors ApiQ does not calibrate (embeddings,
//! output) so they follow llama.cpp's conventions byte for byte, and by the tests as the
//! independent reference for our Rust block codecs.
#![allow(unsafe_code)] // FFI into ggml; every call is bounds-checked on the Rust side first.

use anyhow::{bail, Result};

use super::types::GgmlType;

fn check_known(ty: GgmlType) -> Result<()> {
    // ggml_type is unsigned or signed depending on the platform's bindings.
    let count: i64 = llama_cpp_sys_2::GGML_TYPE_COUNT.into();
    if i64::from(ty.id) >= count {
        bail!("{ty} is not a type of the pinned ggml");
    }
    Ok(())
}

/// Rows of `n_per_row` f32 values quantized to `ty` by `ggml_quantize_chunk` (no imatrix).
pub fn quantize(ty: GgmlType, x: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    quantize_imatrix(ty, x, n_per_row, None)
}

/// [`quantize`] with an importance matrix: one weight per column (`n_per_row` values), as
/// `llama-imatrix` computes them (the mean squared input activation of each column).
pub fn quantize_imatrix(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>> {
    check_known(ty)?;
    if let Some(im) = imatrix {
        if im.len() != n_per_row {
            bail!(
                "an importance matrix of {} values for rows of {n_per_row}",
                im.len()
            );
        }
    }
    if n_per_row == 0 || !x.len().is_multiple_of(n_per_row) {
        bail!("{} values are not whole rows of {n_per_row}", x.len());
    }
    let Some(row) = ty.row_size(n_per_row as u64) else {
        bail!(
            "{ty} needs rows of a multiple of {} values, got {n_per_row}",
            ty.block_size
        );
    };
    let nrows = x.len() / n_per_row;
    let row = row as usize;
    let mut out = vec![0u8; row * nrows];
    let t = ty.id as llama_cpp_sys_2::ggml_type;
    // SAFETY: plain queries; the type's tables are initialised once, before any thread.
    unsafe {
        if imatrix.is_none() && llama_cpp_sys_2::ggml_quantize_requires_imatrix(t) {
            bail!("{ty} needs an importance matrix");
        }
        llama_cpp_sys_2::ggml_quantize_init(t);
    }
    // Rows quantize independently (the imatrix is per column), so the rows are shared out
    // over the cores as llama-quantize does: the IQ searches are slow.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = nrows.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (xs, os) in x.chunks(per * n_per_row).zip(out.chunks_mut(per * row)) {
            scope.spawn(move || {
                let n = os.len() / row;
                // SAFETY: `os` holds exactly n rows of ty's row size, `xs` n × n_per_row floats,
                // the imatrix (if any) n_per_row floats (checked above).
                let written = unsafe {
                    llama_cpp_sys_2::ggml_quantize_chunk(
                        t,
                        xs.as_ptr(),
                        os.as_mut_ptr().cast(),
                        0,
                        n as i64,
                        n_per_row as i64,
                        imatrix.map_or(std::ptr::null(), <[f32]>::as_ptr),
                    )
                };
                debug_assert_eq!(written, os.len());
            });
        }
    });
    Ok(out)
}

/// `raw` (whole blocks of `ty`) back to f32 by ggml's `to_float`.
pub fn dequantize(ty: GgmlType, raw: &[u8]) -> Result<Vec<f32>> {
    check_known(ty)?;
    if !raw.len().is_multiple_of(ty.type_size) {
        bail!("{} bytes are not whole {ty} blocks", raw.len());
    }
    let n = raw.len() / ty.type_size * ty.block_size;
    let mut out = vec![0f32; n];
    // SAFETY: the traits of a known type are static; `raw` holds n / blck whole blocks and
    // `out` n floats, as to_float requires.
    unsafe {
        let traits = &*llama_cpp_sys_2::ggml_get_type_traits(ty.id as llama_cpp_sys_2::ggml_type);
        let Some(to_float) = traits.to_float else {
            bail!("ggml has no dequantizer for {ty}");
        };
        to_float(raw.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trips() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let q = quantize(GgmlType::Q8_0, &x, 64).unwrap();
        assert_eq!(q.len(), 2 * 34);
        let back = dequantize(GgmlType::Q8_0, &q).unwrap();
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 0.02, "{a} vs {b}");
        }
        assert!(quantize(GgmlType::Q2_K, &x, 64).is_err());
    }
}
