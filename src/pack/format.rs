//! Output formats of a calibration and the tensor types each one writes: the calibrated
//! linears in the format's type, the rest after llama.cpp's conventions (`llama-quantize`'s
//! `llama_tensor_get_type` and `tensor_type_fallback` for the same file type).

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde::Serialize;

use crate::ggml::GgmlType;
use crate::quant::{KGrid, QuantSpec};

/// How the calibrated linears are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Format {
    /// APIQ2 (2.5 bpw): exactly what ApiQ learned; runs in the patched runtime (vendor/).
    Apiq2,
    /// Q2_0 (2.25 bpw), stock llama.cpp: calibrates with the zero point restricted to {1, 2}.
    #[value(name = "q2_0")]
    Q2_0,
    /// Q4_1 (5 bpw), stock everywhere: exact for any bits ≤ 4 (made for 4-bit, group 32).
    #[value(name = "q4_1")]
    Q4_1,
    /// llama-quantize's Q2_K (Q2_K linears, attn_v/ffn_down/attn_output in Q3_K or Q4_K; --pure:
    /// all Q2_K), stock everywhere: each linear calibrated through its own type's two-level grid
    /// and written bit for bit; rows not a multiple of 256 train on the groups and fall back to
    /// Q4_0 as llama-quantize does.
    #[value(name = "q2_k")]
    Q2K,
    /// llama-quantize's Q2_K_S (attn_v and the first eighth of ffn_down in Q4_K).
    #[value(name = "q2_k_s")]
    Q2KS,
    /// Q3_K (3.44 bpw), stock everywhere, calibrated through its own symmetric grid (needs
    /// --bits 3; one clipping factor per sub-block); fallback Q4_0.
    #[value(name = "q3_k")]
    Q3K,
    /// llama-quantize's Q3_K_M (attn_v, ffn_down, attn_output in Q4_K/Q5_K; needs --bits 3).
    #[value(name = "q3_k_m")]
    Q3KM,
    /// llama-quantize's Q3_K_L (attn_v, ffn_down, attn_output in Q5_K; needs --bits 3).
    #[value(name = "q3_k_l")]
    Q3KL,
    /// llama-quantize's Q4_K_S: Q4_K (4.5 bpw), attn_v of blocks 0–3 and the first eighth of
    /// ffn_down in Q5_K, calibrated through their own grids (needs --bits 4); fallback Q5_0.
    #[value(name = "q4_k")]
    Q4K,
    /// llama-quantize's Q4_K_M (attn_v and ffn_down of half the blocks in Q6_K; --bits 4).
    #[value(name = "q4_k_m")]
    Q4KM,
    /// Q5_K (5.5 bpw), stock everywhere, calibrated through its own grid (needs --bits 5);
    /// fallback Q5_1.
    #[value(name = "q5_k")]
    Q5K,
    /// llama-quantize's Q5_K_M (attn_v and ffn_down of half the blocks in Q6_K; --bits 5).
    #[value(name = "q5_k_m")]
    Q5KM,
    /// Q6_K (6.56 bpw), stock everywhere, calibrated through its own symmetric grid (needs
    /// --bits 6); fallback Q8_0.
    #[value(name = "q6_k")]
    Q6K,
    /// IQ2_XXS (2.06 bpw): ggml's own quantization with the chain's importance matrix, frozen;
    /// only the LoRA trains over it (as IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S). llama-quantize's mixture
    /// of the type (attn_v Q4_K …; --pure: none). Rows not a multiple of 256 fall back to
    /// IQ4_NL as llama-quantize does.
    #[value(name = "iq2_xxs")]
    Iq2Xxs,
    /// IQ2_XS (2.31 bpw), frozen base + LoRA.
    #[value(name = "iq2_xs")]
    Iq2Xs,
    /// IQ2_S (2.5 bpw), frozen base + LoRA; llama-quantize's IQ2_M mixture.
    #[value(name = "iq2_s")]
    Iq2S,
    /// IQ3_XXS (3.06 bpw), frozen base + LoRA.
    #[value(name = "iq3_xxs")]
    Iq3Xxs,
    /// IQ3_S (3.44 bpw), frozen base + LoRA.
    #[value(name = "iq3_s")]
    Iq3S,
    /// F16 values on the learned grid (fake-quant): any runtime, and for checking the others.
    F16,
}

/// Type of the token embeddings and the output matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum EmbedType {
    /// llama.cpp's choice for the file type (e.g. Q6_K or Q8_0 output, Q4_K embeddings).
    Auto,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    /// ggml's Q6_K (llama-quantize's usual output type); Q8_0 where rows are not whole
    /// super-blocks.
    #[value(name = "q6_k")]
    Q6K,
    /// ggml's Q4_K (llama-quantize's embeddings at Q2_K–Q4_K_M); Q5_0 where rows are not whole
    /// super-blocks.
    #[value(name = "q4_k")]
    Q4K,
}

/// Type of the adapter's lora_a and lora_b.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum LoraType {
    F16,
    /// Q8_0 where the row is a multiple of 32 (lora_b rows have `rank` values), else F16.
    #[value(name = "q8_0")]
    Q8_0,
}

impl LoraType {
    pub fn for_row(self, row_len: u64) -> GgmlType {
        match self {
            LoraType::Q8_0 if row_len.is_multiple_of(32) => GgmlType::Q8_0,
            _ => GgmlType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LoraType::F16 => "f16",
            LoraType::Q8_0 => "q8_0",
        }
    }
}

/// `llama_ftype` of our own type (ggml type id 160, see vendor/README.md).
pub const FTYPE_MOSTLY_APIQ2: u32 = 160;

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Apiq2 => "apiq2",
            Format::Q2_0 => "q2_0",
            Format::Q4_1 => "q4_1",
            Format::Q2K => "q2_k",
            Format::Q2KS => "q2_k_s",
            Format::Q3K => "q3_k",
            Format::Q3KM => "q3_k_m",
            Format::Q3KL => "q3_k_l",
            Format::Q4K => "q4_k",
            Format::Q4KM => "q4_k_m",
            Format::Q5K => "q5_k",
            Format::Q5KM => "q5_k_m",
            Format::Q6K => "q6_k",
            Format::Iq2Xxs => "iq2_xxs",
            Format::Iq2Xs => "iq2_xs",
            Format::Iq2S => "iq2_s",
            Format::Iq3Xxs => "iq3_xxs",
            Format::Iq3S => "iq3_s",
            Format::F16 => "f16",
        }
    }

    /// The format a calibration writes when `--format` is not given.
    pub fn default_for(spec: &QuantSpec) -> Format {
        if spec.bits == 2 && spec.group_size == 64 {
            Format::Apiq2
        } else if spec.bits == 5 {
            Format::Q5K
        } else if spec.bits == 6 {
            Format::Q6K
        } else {
            Format::Q4_1
        }
    }

    /// The main type of the calibrated linears.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            Format::Apiq2 => GgmlType::APIQ2,
            Format::Q2_0 => GgmlType::Q2_0,
            Format::Q4_1 => GgmlType::Q4_1,
            Format::Q2K | Format::Q2KS => GgmlType::Q2_K,
            Format::Q3K | Format::Q3KM | Format::Q3KL => GgmlType::Q3_K,
            Format::Q4K | Format::Q4KM => GgmlType::Q4_K,
            Format::Q5K | Format::Q5KM => GgmlType::Q5_K,
            Format::Q6K => GgmlType::Q6_K,
            Format::Iq2Xxs => GgmlType::IQ2_XXS,
            Format::Iq2Xs => GgmlType::IQ2_XS,
            Format::Iq2S => GgmlType::IQ2_S,
            Format::Iq3Xxs => GgmlType::IQ3_XXS,
            Format::Iq3S => GgmlType::IQ3_S,
            Format::F16 => GgmlType::F16,
        }
    }

    /// `general.file_type` (`llama_ftype`) of the format's mixture (`pure`: every linear in
    /// the format's type, which only `iq2_s` names otherwise: IQ2_M is its mixture).
    pub fn file_type(self, pure: bool) -> u32 {
        match self {
            Format::Iq2S if !pure => 29,
            _ => self.pure_file_type(),
        }
    }

    fn pure_file_type(self) -> u32 {
        match self {
            Format::Apiq2 => FTYPE_MOSTLY_APIQ2,
            Format::Q2_0 => 41,
            Format::Q4_1 => 3,
            Format::Q2K => 10,
            Format::Q2KS => 21,
            Format::Q3K => 11,
            Format::Q3KM => 12,
            Format::Q3KL => 13,
            Format::Q4K => 14,
            Format::Q4KM => 15,
            Format::Q5K => 16,
            Format::Q5KM => 17,
            Format::Q6K => 18,
            Format::Iq2Xxs => 19,
            Format::Iq2Xs => 20,
            Format::Iq2S => 28,
            Format::Iq3Xxs => 23,
            Format::Iq3S => 26,
            Format::F16 => 1,
        }
    }

    /// Refuses quantizer settings the format cannot hold exactly.
    pub fn check(self, spec: &QuantSpec) -> Result<()> {
        let (bits, g) = (spec.bits, spec.group_size);
        match self {
            Format::Apiq2 | Format::Q2_0 if bits != 2 || g != 64 => bail!(
                "--format {} holds 2-bit weights in groups of 64, not {bits}-bit in groups of {g} \
                 (q4_1 holds any bits up to 4 and groups of 32/64/128; f16 holds anything)",
                self.name()
            ),
            Format::Q4_1 if bits > 4 => {
                bail!(
                    "--format q4_1 holds up to 4-bit weights, not {bits}-bit (q5_k holds 5, \
                     q6_k 6)"
                )
            }
            Format::Apiq2
            | Format::Q2_0
            | Format::Q4_1
            | Format::Iq2Xxs
            | Format::Iq2Xs
            | Format::Iq2S
            | Format::Iq3Xxs
            | Format::Iq3S
            | Format::F16 => Ok(()),
            Format::Q2K
            | Format::Q2KS
            | Format::Q3K
            | Format::Q3KM
            | Format::Q3KL
            | Format::Q4K
            | Format::Q4KM
            | Format::Q5K
            | Format::Q5KM
            | Format::Q6K => {
                let k = self.kgrid().expect("a K format");
                if bits != k.bits() {
                    bail!(
                        "--format {} holds {}-bit weights, not {bits}-bit (give --bits {})",
                        self.name(),
                        k.bits(),
                        k.bits()
                    );
                }
                if spec.symmetric && !k.symmetric() {
                    bail!(
                        "--format {} is asymmetric (a scale and a min per sub-block): drop \
                         --symmetric",
                        self.name()
                    );
                }
                Ok(())
            }
        }
    }

    /// Whether the linears are a frozen quantization by ggml that only the LoRA trains over.
    pub fn frozen(self) -> bool {
        matches!(
            self,
            Format::Iq2Xxs | Format::Iq2Xs | Format::Iq2S | Format::Iq3Xxs | Format::Iq3S
        )
    }

    /// The K grid the format's linears are calibrated through.
    pub fn kgrid(self) -> Option<KGrid> {
        match self {
            Format::Q2K | Format::Q2KS => Some(KGrid::Q2K),
            Format::Q3K | Format::Q3KM | Format::Q3KL => Some(KGrid::Q3K),
            Format::Q4K | Format::Q4KM => Some(KGrid::Q4K),
            Format::Q5K | Format::Q5KM => Some(KGrid::Q5K),
            Format::Q6K => Some(KGrid::Q6K),
            _ => None,
        }
    }

    /// The quantizer as the format needs it: Q2_0's grid `(q − 1)·d` only reaches asymmetric
    /// zero points 1 and 2 (through the sign of `d`), so calibration must stay within them; a
    /// K format trains its linears of whole super-blocks through its own grid.
    pub fn constrain(self, spec: QuantSpec) -> QuantSpec {
        match self {
            Format::Q2_0 if !spec.symmetric => QuantSpec {
                zero_range: Some((1, 2)),
                ..spec
            },
            _ if self.kgrid().is_some() => QuantSpec {
                kgrid: self.kgrid(),
                ..spec
            },
            _ => spec,
        }
    }

    /// Type of `token_embd.weight` / `output.weight` (`tied`: the embeddings also serve as the
    /// output, which llama.cpp then quantizes like the output).
    pub fn embed_type(self, is_output: bool, tied: bool, row_len: u64, opt: EmbedType) -> GgmlType {
        let ty = match opt {
            EmbedType::F16 => GgmlType::F16,
            EmbedType::Q8_0 => GgmlType::Q8_0,
            EmbedType::Q6K => GgmlType::Q6_K,
            EmbedType::Q4K => GgmlType::Q4_K,
            EmbedType::Auto if self == Format::F16 => GgmlType::F16,
            EmbedType::Auto if is_output || tied => {
                if !row_len.is_multiple_of(self.ggml_type().block_size as u64) {
                    GgmlType::Q8_0
                } else if self.frozen() && self != Format::Iq3S {
                    GgmlType::Q5_K
                } else {
                    GgmlType::Q6_K
                }
            }
            EmbedType::Auto => match self {
                Format::Apiq2 | Format::Q2_0 => GgmlType::Q4_K,
                Format::Iq2Xxs | Format::Iq2Xs => GgmlType::Q2_K,
                Format::Iq2S | Format::Iq3Xxs => GgmlType::IQ3_S,
                other => other.ggml_type(),
            },
        };
        fallback(ty, row_len)
    }
}

/// llama-quantize's `tensor_type_fallback`: a type whose blocks do not divide the row.
pub fn fallback(ty: GgmlType, row_len: u64) -> GgmlType {
    if row_len.is_multiple_of(ty.block_size as u64) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q2_0 | GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::APIQ2 => GgmlType::Q4_0,
        GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if row_len.is_multiple_of(next.block_size as u64) {
        next
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_shapes_follow_llama_quantize() {
        // SmolLM2-135M: hidden 576 (not a multiple of 256), ffn 1536, tied embeddings.
        let linear = |f: Format, row: u64| fallback(f.ggml_type(), row);
        assert_eq!(linear(Format::Q2K, 576), GgmlType::Q4_0);
        assert_eq!(linear(Format::Q2K, 1536), GgmlType::Q2_K);
        assert_eq!(linear(Format::Q2_0, 576), GgmlType::Q2_0);
        assert_eq!(linear(Format::Q4K, 576), GgmlType::Q5_0);
        assert_eq!(linear(Format::Q5K, 576), GgmlType::Q5_1);
        assert_eq!(linear(Format::Q4K, 1536), GgmlType::Q4_K);
        assert_eq!(linear(Format::Q3K, 576), GgmlType::Q4_0);
        assert_eq!(linear(Format::Q6K, 576), GgmlType::Q8_0);
        assert_eq!(linear(Format::Q6K, 1536), GgmlType::Q6_K);
        assert_eq!(linear(Format::Iq2Xs, 576), GgmlType::IQ4_NL);
        assert_eq!(linear(Format::Iq2Xs, 1536), GgmlType::IQ2_XS);
        assert_eq!(
            Format::Iq2Xs.embed_type(true, false, 1536, EmbedType::Auto),
            GgmlType::Q5_K
        );
        assert_eq!(
            Format::Iq2S.embed_type(false, false, 1536, EmbedType::Auto),
            GgmlType::IQ3_S
        );
        for f in [Format::Apiq2, Format::Q2_0, Format::Q4_1, Format::Q2K] {
            assert_eq!(
                f.embed_type(false, true, 576, EmbedType::Auto),
                GgmlType::Q8_0
            );
        }
        assert_eq!(
            Format::Q2_0.embed_type(false, false, 4096, EmbedType::Auto),
            GgmlType::Q4_K
        );
        assert_eq!(
            Format::Q2_0.embed_type(true, false, 4096, EmbedType::Auto),
            GgmlType::Q6_K
        );
        assert_eq!(
            Format::Q2K.embed_type(false, false, 576, EmbedType::Auto),
            GgmlType::Q4_0
        );
        assert_eq!(
            Format::F16.embed_type(true, false, 4096, EmbedType::Auto),
            GgmlType::F16
        );
        assert_eq!(
            Format::Q2_0.embed_type(true, false, 48, EmbedType::Q8_0),
            GgmlType::F16
        );
        assert_eq!(
            Format::Apiq2.embed_type(false, true, 1536, EmbedType::Q6K),
            GgmlType::Q6_K
        );
        assert_eq!(
            Format::Apiq2.embed_type(false, false, 576, EmbedType::Q6K),
            GgmlType::Q8_0
        );
        assert_eq!(
            Format::Q2K.embed_type(true, false, 576, EmbedType::Q4K),
            GgmlType::Q5_0
        );
    }
}
