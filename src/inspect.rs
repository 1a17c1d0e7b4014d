//! `inspect`: a GGUF file's metadata and tensor table, for people (stdout).

use std::fmt::Write;

use crate::gguf::GgufFile;

pub fn render(g: &GgufFile) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "file: {}", g.path.display());
    let _ = writeln!(
        s,
        "GGUF v{}, {} bytes, alignment {}, data at {}",
        g.version,
        g.file_size(),
        g.alignment,
        g.data_offset
    );
    let _ = writeln!(s, "\nmetadata ({} keys):", g.kv.len());
    for (k, v) in &g.kv {
        let _ = writeln!(s, "  {k:<44} {v}");
    }
    let _ = writeln!(s, "\ntensors ({}):", g.tensors.len());
    let _ = writeln!(
        s,
        "  {:<36} {:<8} {:>20} {:>12} {:>6}",
        "name", "type", "shape (ggml)", "bytes", "bpw"
    );
    let (mut n_weights, mut n_bytes) = (0u64, 0u64);
    for t in &g.tensors {
        let shape = format!("{:?}", t.ne);
        let bpw = t.size as f64 * 8.0 / t.n_elements().max(1) as f64;
        let _ = writeln!(
            s,
            "  {:<36} {:<8} {:>20} {:>12} {:>6.3}",
            t.name, t.ty.name, shape, t.size, bpw
        );
        n_weights += t.n_elements();
        n_bytes += t.size;
    }
    let _ = writeln!(
        s,
        "\ntotal: {n_weights} weights, {n_bytes} bytes of tensor data, {:.4} bits per weight",
        n_bytes as f64 * 8.0 / n_weights.max(1) as f64
    );
    s
}
