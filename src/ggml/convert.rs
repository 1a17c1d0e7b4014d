//! f32 rows to the output types this tool writes without calibration (F32, F16, BF16, Q8_0,
//! Q4_0, Q4_1), and raw input bytes back to f32. The encoders follow ggml's reference code bit
//! for bit: `ggml_compute_fp32_to_bf16` and `quantize_row_q8_0_ref` (ggml/src/ggml-quants.c);
//! F16 is IEEE round-to-nearest-even like F16C's `vcvtps2ph`; Q4_0 and Q4_1 are ggml's own
//! quantizer (`ggml_quantize_chunk`, what llama-quantize runs without an importance matrix).

use anyhow::{bail, Result};
use half::{bf16, f16};

use super::types::GgmlType;

/// ggml's fp32 → bf16: round to nearest even, NaN kept quiet.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Appends `x` encoded as `ty` to `out`. `x.len()` must be a whole number of blocks.
pub fn encode(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    match ty {
        GgmlType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes())),
        GgmlType::BF16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f32_to_bf16_bits(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            if !x.len().is_multiple_of(32) {
                bail!(
                    "Q8_0 needs rows of a multiple of 32 values, got {}",
                    x.len()
                );
            }
            for block in x.chunks_exact(32) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                // roundf: half away from zero, as f32::round.
                out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            if !x.len().is_multiple_of(ty.block_size) {
                bail!(
                    "{ty} needs rows of a multiple of {} values, got {}",
                    ty.block_size,
                    x.len()
                );
            }
            // Blocks are independent without an importance matrix: any row length of whole
            // blocks quantizes the same.
            out.extend(super::stock::quantize(ty, x, ty.block_size)?);
        }
        other => bail!("writing {other} without calibration is not supported"),
    }
    Ok(())
}

/// Decodes `n` values of type `ty` from `raw` (little endian). Plain float types are read here;
/// block-quantized inputs go through candle's ggml dequantizers.
pub fn decode(ty: GgmlType, raw: &[u8], n: usize) -> Result<Vec<f32>> {
    let expect = ty
        .row_size(n as u64)
        .ok_or_else(|| anyhow::anyhow!("{n} values are not a whole number of {ty} blocks"))?;
    if raw.len() as u64 != expect {
        bail!(
            "{ty} data of {n} values needs {expect} bytes, got {}",
            raw.len()
        );
    }
    Ok(match ty {
        GgmlType::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => raw
            .chunks_exact(2)
            .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        GgmlType::BF16 => raw
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        _ => decode_with_candle(ty, raw, n)?,
    })
}

fn decode_with_candle(ty: GgmlType, raw: &[u8], n: usize) -> Result<Vec<f32>> {
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
    let dtype = match ty {
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        other => bail!(
            "reading {other} tensors is not supported (supported inputs: {})",
            SUPPORTED_INPUTS
        ),
    };
    let dev = candle_core::Device::Cpu;
    let q = qtensor_from_ggml(dtype, raw, vec![n], &dev)?;
    Ok(q.dequantize(&dev)?.to_vec1::<f32>()?)
}

/// What `decode` accepts, for error messages.
pub const SUPPORTED_INPUTS: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_encoder_matches_ggml() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let mut ours = Vec::new();
        encode(GgmlType::Q8_0, &x, &mut ours).unwrap();
        assert_eq!(
            crate::ggml::stock::quantize(GgmlType::Q8_0, &x, 64).unwrap(),
            ours
        );
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between two bf16 values: ties go to the even mantissa (1.0).
        assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3*2^-8 ties between 1+2^-7 (odd) and 1+2^-6 (even): up.
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(f32_to_bf16_bits(-2.0), 0xc000);
    }

    #[test]
    fn q8_0_reference_block() {
        // amax 127 gives d = 1 exactly, so codes are the rounded inputs (half away from zero).
        let mut x = vec![0.0f32; 32];
        x[0] = 127.0;
        x[1] = -2.5;
        x[2] = 2.5;
        x[3] = 0.49;
        let mut out = Vec::new();
        encode(GgmlType::Q8_0, &x, &mut out).unwrap();
        assert_eq!(out.len(), 34);
        assert_eq!(u16::from_le_bytes([out[0], out[1]]), 0x3c00); // f16 1.0
        assert_eq!(&out[2..6], &[127u8, (-3i8) as u8, 3, 0]);
        let back = decode(GgmlType::Q8_0, &out, 32).unwrap();
        assert_eq!(&back[..4], &[127.0, -3.0, 3.0, 0.0]);
    }

    #[test]
    fn f16_round_trip_is_exact_on_representable_values() {
        let x = [0.0f32, 1.0, -0.5, 65504.0, 6.1035156e-05];
        let mut out = Vec::new();
        encode(GgmlType::F16, &x, &mut out).unwrap();
        assert_eq!(decode(GgmlType::F16, &out, x.len()).unwrap(), x);
    }
}
