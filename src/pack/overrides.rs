//! `--tensor-type PATTERN=TYPE`, llama-quantize's own flag: the first pattern that a tensor's
//! GGUF name contains a match of (a regular expression, as `std::regex_search`) gives its type;
//! a type whose blocks do not divide the rows then falls back as llama-quantize does.

use anyhow::{bail, Result};
use regex::Regex;

use crate::ggml::GgmlType;

/// One `PATTERN=TYPE`.
#[derive(Debug, Clone)]
pub struct TensorType {
    pub pattern: Regex,
    pub ty: GgmlType,
}

impl TensorType {
    /// Parses `PATTERN=TYPE` (the last `=` splits; TYPE is a ggml type name, any case).
    pub fn parse(s: &str) -> std::result::Result<TensorType, String> {
        let Some((pat, ty)) = s.rsplit_once('=') else {
            return Err(format!("`{s}` is not PATTERN=TYPE (e.g. ffn_down=q4_k)"));
        };
        let ty = GgmlType::ALL
            .iter()
            .copied()
            .filter(|t| t.id < 160)
            .find(|t| t.name.eq_ignore_ascii_case(ty))
            .ok_or_else(|| format!("`{ty}` is not a ggml type (e.g. q4_k, q6_k, iq2_xs, q8_0)"))?;
        let pattern = Regex::new(pat).map_err(|e| {
            let first = e.to_string();
            let line = first.lines().last().unwrap_or("invalid").trim().to_string();
            format!("`{pat}` is not a regular expression: {line}")
        })?;
        Ok(TensorType { pattern, ty })
    }
}

/// The type `overrides` give tensor `name`, if any (the first match wins).
pub fn type_for(overrides: &[TensorType], name: &str) -> Option<GgmlType> {
    overrides
        .iter()
        .find(|o| o.pattern.is_match(name))
        .map(|o| o.ty)
}

/// Refuses overrides the output cannot honour, before any work: a type for a tensor that is
/// written without activations must not need an importance matrix.
pub fn check_plain(o: &TensorType, name: &str) -> Result<()> {
    if [GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ1_S].contains(&o.ty) {
        bail!(
            "--tensor-type {}={}: {name} is not calibrated here, and {} needs an importance matrix",
            o.pattern,
            o.ty.name.to_lowercase(),
            o.ty
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_types_parse_as_llama_quantize_reads_them() {
        let o = [
            TensorType::parse("blk\\.[0-3]\\.ffn_down=Q4_K").unwrap(),
            TensorType::parse("ffn_down=q6_k").unwrap(),
            TensorType::parse("attn_v=iq3_s").unwrap(),
        ];
        assert_eq!(type_for(&o, "blk.2.ffn_down.weight"), Some(GgmlType::Q4_K));
        assert_eq!(type_for(&o, "blk.12.ffn_down.weight"), Some(GgmlType::Q6_K));
        assert_eq!(type_for(&o, "blk.1.attn_v.weight"), Some(GgmlType::IQ3_S));
        assert_eq!(type_for(&o, "blk.1.attn_q.weight"), None);
        for (bad, needle) in [
            ("ffn_down", "is not PATTERN=TYPE"),
            ("ffn_down=q9_k", "`q9_k` is not a ggml type"),
            ("(ffn=q4_k", "is not a regular expression"),
            ("ffn=apiq2", "is not a ggml type"),
        ] {
            let e = TensorType::parse(bad).unwrap_err();
            assert!(e.contains(needle) && !e.contains('\n'), "{bad}: {e}");
        }
    }
}
