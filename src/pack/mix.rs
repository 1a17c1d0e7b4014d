//! llama-quantize's tensor mixtures: which linears of a file type it stores in more bits than
//! the type's own (`llama_tensor_get_type_impl` of the pinned llama.cpp), for the models this
//! tool calibrates (Llama, Mistral, Qwen2: no experts, not Falcon). A calibration follows the
//! same mixture unless `--pure`, so that its file and llama-quantize's of the same name cost
//! the same bytes; each linear then trains through the grid of its own type.

use crate::ggml::GgmlType;

use super::format::Format;

/// What the mixtures read of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub n_layer: usize,
    /// Query heads per KV head.
    pub n_gqa: usize,
}

/// llama-quantize's `use_more_bits`: the first and last eighth of the layers and every third
/// one between.
fn use_more_bits(layer: usize, n_layer: usize) -> bool {
    layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2
}

/// The type llama-quantize gives linear `linear` (`attn_v`, `ffn_down`, … as in GGUF names) of
/// block `layer` in a file of `format`'s type, before the fallback for rows its blocks do not
/// divide. An importance matrix is assumed (the frozen formats compute one). `iq2_s` follows
/// llama-quantize's IQ2_M, the file type whose linears are IQ2_S (its "IQ2_S" is IQ2_XS's).
pub fn linear_type(format: Format, linear: &str, layer: usize, s: ModelShape) -> GgmlType {
    use Format as F;
    use GgmlType as T;
    let main = format.ggml_type();
    let n = s.n_layer;
    let gqa4 = s.n_gqa >= 4;
    if matches!(format, F::Iq2Xxs | F::Iq2Xs | F::Iq2S) {
        let wide = format == F::Iq2S;
        return match linear {
            "attn_v" if gqa4 => T::Q4_K,
            "attn_v" if wide => T::IQ3_S,
            "attn_v" => T::Q2_K,
            "ffn_down" if layer < n / 8 && wide => T::IQ3_S,
            "ffn_down" if layer < n / 8 => T::Q2_K,
            "attn_output" if wide => T::IQ3_S,
            _ => main,
        };
    }
    match (linear, format) {
        ("attn_v", F::Q2K) => {
            if gqa4 {
                T::Q4_K
            } else {
                T::Q3_K
            }
        }
        ("attn_v", F::Q2KS | F::Iq3S) if gqa4 => T::Q4_K,
        ("attn_v", F::Iq3Xxs) if gqa4 => T::Q4_K,
        ("attn_v", F::Q3KM) if layer < 2 => T::Q5_K,
        ("attn_v", F::Q3KM) => T::Q4_K,
        ("attn_v", F::Q3KL) => T::Q5_K,
        ("attn_v", F::Q4KM | F::Q5KM) if use_more_bits(layer, n) => T::Q6_K,
        ("attn_v", F::Q4K) if layer < 4 => T::Q5_K,
        ("attn_k" | "attn_q", F::Iq3Xxs) => T::IQ2_S,
        ("ffn_down", F::Q2K) => T::Q3_K,
        ("ffn_down", F::Q2KS) if layer < n / 8 => T::Q4_K,
        ("ffn_down", F::Q3KM) if layer < n / 16 => T::Q5_K,
        ("ffn_down", F::Q3KM) => T::Q4_K,
        ("ffn_down", F::Q3KL) => T::Q5_K,
        ("ffn_down", F::Q4KM | F::Q5KM) if use_more_bits(layer, n) => T::Q6_K,
        ("ffn_down", F::Q4K) if layer < n / 8 => T::Q5_K,
        ("attn_output", F::Q2K) => T::Q3_K,
        ("attn_output", F::Iq3Xxs) => T::IQ3_S,
        ("attn_output", F::Q3KM) => T::Q4_K,
        ("attn_output", F::Q3KL) => T::Q5_K,
        _ => main,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen2_5_1_5b_mixtures_are_llama_quantizes() {
        // Qwen2.5-1.5B: 28 blocks, 12 query heads over 2 KV heads. The counts are those that
        // `llama-quantize --dry-run` of the pinned llama.cpp lists for Qwen2.5-Coder-1.5B-Instruct
        // (IQ3_XXS's ffn_down is the one rule that reads whether an imatrix is given).
        let s = ModelShape {
            n_layer: 28,
            n_gqa: 6,
        };
        let count = |f: Format, want: GgmlType| -> usize {
            (0..28)
                .flat_map(|l| crate::nn::block::LINEARS.map(|n| linear_type(f, n, l, s)))
                .filter(|t| *t == want)
                .count()
        };
        // Q2_K: attn_v Q4_K (GQA ≥ 4), ffn_down and attn_output Q3_K.
        assert_eq!(count(Format::Q2K, GgmlType::Q4_K), 28);
        assert_eq!(count(Format::Q2K, GgmlType::Q3_K), 56);
        assert_eq!(count(Format::Q2K, GgmlType::Q2_K), 4 * 28);
        // Q4_K_M: attn_v and ffn_down of use_more_bits' layers in Q6_K: 0–2, 24–27 and every
        // third between (5, 8, …, 23): 7 + 7 = 14 layers each.
        assert_eq!(count(Format::Q4KM, GgmlType::Q6_K), 2 * 14);
        // Q3_K_M: attn_v Q5_K in blocks 0–1, ffn_down Q5_K in block 0, the rest Q4_K.
        assert_eq!(count(Format::Q3KM, GgmlType::Q5_K), 3);
        assert_eq!(count(Format::Q3KM, GgmlType::Q4_K), 26 + 27 + 28);
        // IQ2_XS: attn_v Q4_K, the first 3 ffn_down Q2_K.
        assert_eq!(count(Format::Iq2Xs, GgmlType::Q2_K), 3);
        assert_eq!(count(Format::Iq2Xs, GgmlType::Q4_K), 28);
        // IQ2_M (iq2_s): attn_v Q4_K, ffn_down of the first 3 and every attn_output IQ3_S.
        assert_eq!(count(Format::Iq2S, GgmlType::IQ3_S), 3 + 28);
        assert_eq!(count(Format::Iq2S, GgmlType::IQ2_S), 137);
        // IQ3_XXS with an imatrix: attn_q and attn_k IQ2_S, attn_output IQ3_S, attn_v Q4_K.
        assert_eq!(count(Format::Iq3Xxs, GgmlType::IQ2_S), 56);
        assert_eq!(count(Format::Iq3Xxs, GgmlType::IQ3_S), 28);
        assert_eq!(count(Format::Iq3Xxs, GgmlType::IQ3_XXS), 3 * 28);
        assert_eq!(count(Format::Iq3S, GgmlType::Q4_K), 28);
        // Q2_K_S: attn_v and the first 3 ffn_down Q4_K; Q4_K_S: attn_v of blocks 0–3 and the
        // first 3 ffn_down Q5_K; Q3_K_L: attn_v, ffn_down, attn_output Q5_K; Q5_K_M as Q4_K_M.
        assert_eq!(count(Format::Q2KS, GgmlType::Q4_K), 31);
        assert_eq!(count(Format::Q4K, GgmlType::Q5_K), 7);
        assert_eq!(count(Format::Q3KL, GgmlType::Q5_K), 84);
        assert_eq!(count(Format::Q5KM, GgmlType::Q6_K), 28);
        // Q5_K_S, Q6_K and Q3_K_S keep every linear in their type.
        for f in [Format::Q5K, Format::Q6K, Format::Q3K] {
            assert_eq!(count(f, f.ggml_type()), 7 * 28, "{f:?}");
        }
    }
}
