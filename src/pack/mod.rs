//! Packing ApiQ's result into GGUF tensor types: our APIQ2, exact stock mappings (Q2_0,
//! Q4_1), Q2_K for reach, and F16 fake-quant; plus which type every other tensor gets.

pub mod blocks;
pub mod format;
pub mod q2k;

use anyhow::Result;

use crate::ggml::convert::encode;
use crate::ggml::GgmlType;
use crate::quant::quantizer::Quantized;
pub use format::{EmbedType, Format, LoraType};
pub use q2k::MappingError;

/// The bytes of one calibrated linear of `row_len` inputs in type `ty` (from
/// [`Format::linear_type`]), and the error the type adds to the calibrated weights (zero for
/// the exact types).
pub fn encode_linear(
    ty: GgmlType,
    q: &Quantized,
    group: usize,
    out: &mut Vec<u8>,
) -> Result<MappingError> {
    let mut err = MappingError::default();
    let raw = match ty {
        GgmlType::APIQ2 => blocks::encode_apiq2(q, group)?,
        GgmlType::Q2_0 => blocks::encode_q2_0(q, group)?,
        GgmlType::Q4_1 => blocks::encode_q4_1(q, group)?,
        GgmlType::Q2_K => {
            let (raw, e) = q2k::encode_q2_k(q, group)?;
            err = e;
            raw
        }
        GgmlType::Q4_0 => {
            let raw = blocks::encode_q4_0(q, group)?;
            err = MappingError::measure(&blocks::decode_q4_0(&raw)?, &q.weight);
            raw
        }
        other => {
            let mut raw = Vec::new();
            encode(other, &q.weight, &mut raw)?;
            raw
        }
    };
    out.extend_from_slice(&raw);
    Ok(err)
}

/// Decodes bytes of any type this tool writes for calibrated linears (the Rust reference).
pub fn decode_linear(ty: GgmlType, raw: &[u8]) -> Result<Vec<f32>> {
    match ty {
        GgmlType::APIQ2 => blocks::decode_apiq2(raw),
        GgmlType::Q2_0 => blocks::decode_q2_0(raw),
        GgmlType::Q4_1 => blocks::decode_q4_1(raw),
        GgmlType::Q4_0 => blocks::decode_q4_0(raw),
        GgmlType::Q2_K => q2k::decode_q2_k(raw),
        other => {
            let n = raw.len() / other.type_size * other.block_size;
            crate::ggml::convert::decode(other, raw, n)
        }
    }
}
