//! The ggml type table: every stock id of the pinned ggml (0..=42) with its block size and
//! bytes per block, plus our own APIQ2 (id 160, see vendor/README.md). Sizes are those of `type_traits` in
//! `ggml/src/ggml.c` (`blck_size`, `type_size`) of llama.cpp as vendored by llama-cpp-sys-2 0.1.161.

use std::fmt;

/// One ggml tensor type. `Removed` ids (4, 5, 31..=33, 36..=38) are refused by ggml's loader too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    /// Elements per block (`blck_size`).
    pub block_size: usize,
    /// Bytes per block (`type_size`).
    pub type_size: usize,
}

macro_rules! types {
    ($($konst:ident = $id:expr, $name:expr, $blck:expr, $size:expr;)*) => {
        impl GgmlType {
            $(pub const $konst: GgmlType = GgmlType { id: $id, name: $name, block_size: $blck, type_size: $size };)*
            /// Every type id this tool knows, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$konst),*];
        }
    };
}

types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    Q8_1 = 9, "Q8_1", 32, 36;
    Q2_K = 10, "Q2_K", 256, 84;
    Q3_K = 11, "Q3_K", 256, 110;
    Q4_K = 12, "Q4_K", 256, 144;
    Q5_K = 13, "Q5_K", 256, 176;
    Q6_K = 14, "Q6_K", 256, 210;
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", 256, 54;
    TQ2_0 = 35, "TQ2_0", 256, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
    NVFP4 = 40, "NVFP4", 64, 36;
    Q1_0 = 41, "Q1_0", 128, 18;
    Q2_0 = 42, "Q2_0", 64, 18;
    APIQ2 = 160, "APIQ2", 64, 20;
}

impl GgmlType {
    /// Looks an id up; `None` for ids ggml never had or has removed.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.iter().copied().find(|t| t.id == id)
    }

    /// Bytes of one row of `n_per_row` elements, `None` if the row is not a whole number of blocks.
    pub fn row_size(self, n_per_row: u64) -> Option<u64> {
        let bs = self.block_size as u64;
        if !n_per_row.is_multiple_of(bs) {
            return None;
        }
        (n_per_row / bs).checked_mul(self.type_size as u64)
    }

    /// Bytes of a tensor with these ggml dims, `None` on overflow or a partial block.
    pub fn tensor_size(self, ne: &[u64]) -> Option<u64> {
        let (first, rest) = ne.split_first()?;
        let row = self.row_size(*first)?;
        rest.iter().try_fold(row, |acc, &n| acc.checked_mul(n))
    }

    pub fn bits_per_weight(self) -> f64 {
        self.type_size as f64 * 8.0 / self.block_size as f64
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sorted() {
        for w in GgmlType::ALL.windows(2) {
            assert!(w[0].id < w[1].id);
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(42), Some(GgmlType::Q2_0));
        assert_eq!(GgmlType::from_id(43), None);
        assert_eq!(GgmlType::from_id(160), Some(GgmlType::APIQ2));
    }

    #[test]
    fn sizes() {
        assert_eq!(
            GgmlType::Q4_1.tensor_size(&[576, 1536]),
            Some(576 / 32 * 20 * 1536)
        );
        assert_eq!(GgmlType::Q8_0.row_size(33), None);
        assert_eq!(GgmlType::F32.tensor_size(&[u64::MAX, 2]), None);
        assert!((GgmlType::Q2_K.bits_per_weight() - 2.625).abs() < 1e-12);
    }
}
