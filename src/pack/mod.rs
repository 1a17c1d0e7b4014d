//! Packing ApiQ's result into GGUF tensor types: our APIQ2, exact stock mappings (Q2_0,
//! Q4_1), the K types it was trained through (Q2_K … Q6_K), and F16 fake-quant; plus
//! which type every other tensor gets.

pub mod blocks;
pub mod format;
pub mod kquants;
pub mod mapping;
pub mod mix;
pub mod overrides;

use anyhow::{bail, Result};

use crate::ggml::convert::encode;
use crate::ggml::{stock, GgmlType};
use crate::quant::Requantized;
pub use format::{EmbedType, Format, LoraType};
pub use mapping::MappingError;

/// The bytes of one calibrated linear of `row_len` inputs in type `ty` (from
/// `ExportOptions::linear_type`), and the error the type adds to the calibrated weights (zero for
/// the exact types).
pub fn encode_linear(
    ty: GgmlType,
    q: &Requantized,
    group: usize,
    out: &mut Vec<u8>,
) -> Result<MappingError> {
    let mut err = MappingError::default();
    let raw = match (ty, q) {
        (_, Requantized::Frozen(f)) if f.ty == ty => f.raw.clone(),
        (_, Requantized::K(k)) if kquants::grid_of(ty) == Some(k.grid) => kquants::encode(k)?,
        (_, Requantized::Groups(_)) | (_, Requantized::K(_)) if kquants::grid_of(ty).is_some() => {
            bail!("{ty} holds only weights calibrated through its own grid")
        }
        (GgmlType::APIQ2, Requantized::Groups(q)) => blocks::encode_apiq2(q, group)?,
        (GgmlType::Q2_0, Requantized::Groups(q)) => blocks::encode_q2_0(q, group)?,
        (GgmlType::Q4_1, Requantized::Groups(q)) => blocks::encode_q4_1(q, group)?,
        (GgmlType::Q4_0, Requantized::Groups(q)) => {
            let raw = blocks::encode_q4_0(q, group)?;
            err = MappingError::measure(&blocks::decode_q4_0(&raw)?, &q.weight);
            raw
        }
        (GgmlType::F16 | GgmlType::F32, q) => {
            let mut raw = Vec::new();
            encode(ty, q.weight(), &mut raw)?;
            raw
        }
        (other, q) => {
            // A fallback type that cannot hold the grid (Q5_0 for Q4_K's rows of no whole
            // super-blocks...): ggml's quantizer of the calibrated weights, its error reported.
            // Blocks are independent without an importance matrix, so any row of whole blocks
            // quantizes the same.
            let raw = stock::quantize(other, q.weight(), other.block_size)?;
            err = MappingError::measure(&stock::dequantize(other, &raw)?, q.weight());
            raw
        }
    };
    out.extend_from_slice(&raw);
    Ok(err)
}

/// Decodes bytes of any type this tool writes for calibrated linears (the Rust reference).
pub fn decode_linear(ty: GgmlType, raw: &[u8]) -> Result<Vec<f32>> {
    if let Some(k) = kquants::grid_of(ty) {
        return kquants::decode(k, raw);
    }
    match ty {
        GgmlType::APIQ2 => blocks::decode_apiq2(raw),
        GgmlType::Q2_0 => blocks::decode_q2_0(raw),
        GgmlType::Q4_1 => blocks::decode_q4_1(raw),
        GgmlType::Q4_0 => blocks::decode_q4_0(raw),
        // Frozen bases are ggml's bytes: ggml's own dequantizer is their reference.
        GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ4_NL => stock::dequantize(ty, raw),
        other => {
            let n = raw.len() / other.type_size * other.block_size;
            crate::ggml::convert::decode(other, raw, n)
        }
    }
}
