//! Architecture knowledge as tables: which HF `architectures` we accept, what GGUF architecture
//! each becomes, and how every per-block tensor is named on both sides. The only module where
//! HF and GGUF tensor names stand side by side.

/// One supported family.
#[derive(Debug)]
pub struct Arch {
    /// Values of config.json `architectures` that map here.
    pub hf_names: &'static [&'static str],
    /// `general.architecture` in GGUF.
    pub gguf_name: &'static str,
    /// llama uses interleaved (NORM) RoPE, HF checkpoints rotate halves: q/k rows are permuted
    /// (gguf-py `LlamaModel.permute`). Qwen2 uses NEOX RoPE and is written as is.
    pub permute_qk: bool,
    /// q/k/v carry biases (Qwen2).
    pub qkv_bias: bool,
}

pub const ARCHES: &[Arch] = &[
    Arch {
        hf_names: &["LlamaForCausalLM", "MistralForCausalLM"],
        gguf_name: "llama",
        permute_qk: true,
        qkv_bias: false,
    },
    Arch {
        hf_names: &["Qwen2ForCausalLM"],
        gguf_name: "qwen2",
        permute_qk: false,
        qkv_bias: true,
    },
];

pub fn by_hf_name(name: &str) -> Option<&'static Arch> {
    ARCHES.iter().find(|a| a.hf_names.contains(&name))
}

pub fn by_gguf_name(name: &str) -> Option<&'static Arch> {
    ARCHES.iter().find(|a| a.gguf_name == name)
}

pub fn supported_hf_names() -> String {
    ARCHES
        .iter()
        .flat_map(|a| a.hf_names.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a tensor is laid out and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A 2-D weight (matrix); `permute` names the head count used for the RoPE row permutation.
    Matrix { permute: Permute },
    /// A norm weight or a bias: 1-D, always F32; biases of q/k are permuted like their rows.
    Vector { permute: Permute },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permute {
    None,
    /// Permute rows in groups of `n_head` heads.
    Q,
    /// Permute rows in groups of `n_head_kv` heads.
    K,
}

/// Per-block tensors: HF suffix after `model.layers.N.`, GGUF suffix after `blk.N.`, role,
/// and whether the tensor exists only with `qkv_bias`.
pub struct BlockTensor {
    pub hf: &'static str,
    pub gguf: &'static str,
    pub role: Role,
    pub bias: bool,
}

const M: Role = Role::Matrix {
    permute: Permute::None,
};
const V: Role = Role::Vector {
    permute: Permute::None,
};

pub const BLOCK_TENSORS: &[BlockTensor] = &[
    BlockTensor {
        hf: "input_layernorm.weight",
        gguf: "attn_norm.weight",
        role: V,
        bias: false,
    },
    BlockTensor {
        hf: "self_attn.q_proj.weight",
        gguf: "attn_q.weight",
        role: Role::Matrix {
            permute: Permute::Q,
        },
        bias: false,
    },
    BlockTensor {
        hf: "self_attn.k_proj.weight",
        gguf: "attn_k.weight",
        role: Role::Matrix {
            permute: Permute::K,
        },
        bias: false,
    },
    BlockTensor {
        hf: "self_attn.v_proj.weight",
        gguf: "attn_v.weight",
        role: M,
        bias: false,
    },
    BlockTensor {
        hf: "self_attn.q_proj.bias",
        gguf: "attn_q.bias",
        role: Role::Vector {
            permute: Permute::Q,
        },
        bias: true,
    },
    BlockTensor {
        hf: "self_attn.k_proj.bias",
        gguf: "attn_k.bias",
        role: Role::Vector {
            permute: Permute::K,
        },
        bias: true,
    },
    BlockTensor {
        hf: "self_attn.v_proj.bias",
        gguf: "attn_v.bias",
        role: V,
        bias: true,
    },
    BlockTensor {
        hf: "self_attn.o_proj.weight",
        gguf: "attn_output.weight",
        role: M,
        bias: false,
    },
    BlockTensor {
        hf: "post_attention_layernorm.weight",
        gguf: "ffn_norm.weight",
        role: V,
        bias: false,
    },
    BlockTensor {
        hf: "mlp.gate_proj.weight",
        gguf: "ffn_gate.weight",
        role: M,
        bias: false,
    },
    BlockTensor {
        hf: "mlp.up_proj.weight",
        gguf: "ffn_up.weight",
        role: M,
        bias: false,
    },
    BlockTensor {
        hf: "mlp.down_proj.weight",
        gguf: "ffn_down.weight",
        role: M,
        bias: false,
    },
];

/// Model-level tensors: HF name, GGUF name, role.
pub const EMBED: (&str, &str) = ("model.embed_tokens.weight", "token_embd.weight");
pub const OUTPUT_NORM: (&str, &str) = ("model.norm.weight", "output_norm.weight");
pub const OUTPUT: (&str, &str) = ("lm_head.weight", "output.weight");
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// Row pairs `(hf, gguf)` of the RoPE permutation between HF's rotate-half layout and GGUF's
/// interleaved one: `gguf_row[h*hd + 2i + j] = hf_row[h*hd + j*hd/2 + i]`
/// (gguf-py `LlamaModel.permute`).
fn rope_row_pairs(rows: usize, n_head: usize) -> impl Iterator<Item = (usize, usize)> {
    assert_eq!(
        rows % (2 * n_head),
        0,
        "rows must split into heads of even size"
    );
    let hd = rows / n_head;
    (0..n_head).flat_map(move |h| {
        (0..hd / 2)
            .flat_map(move |i| (0..2).map(move |j| (h * hd + j * (hd / 2) + i, h * hd + 2 * i + j)))
    })
}

/// Copies row `from` of `x` to row `to` of `out` for every pair.
fn move_rows(x: &[f32], cols: usize, pairs: impl Iterator<Item = (usize, usize)>) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (from, to) in pairs {
        out[to * cols..(to + 1) * cols].copy_from_slice(&x[from * cols..(from + 1) * cols]);
    }
    out
}

/// HF's rotate-half rows to GGUF's interleaved ones. `x` holds `rows` rows of `cols` values
/// each (cols = 1 for a bias).
pub fn permute_rows(x: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * cols);
    move_rows(x, cols, rope_row_pairs(rows, n_head))
}

/// The inverse of [`permute_rows`]: GGUF's interleaved rows back to HF's rotate-half layout.
pub fn unpermute_rows(x: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * cols);
    move_rows(
        x,
        cols,
        rope_row_pairs(rows, n_head).map(|(hf, gg)| (gg, hf)),
    )
}

/// GGUF name → HF name (`None` for tensors HF checkpoints do not hold, e.g. rope_freqs).
pub fn hf_name(gguf: &str) -> Option<String> {
    for (hf, gg) in [EMBED, OUTPUT_NORM, OUTPUT] {
        if gguf == gg {
            return Some(hf.to_string());
        }
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let t = BLOCK_TENSORS.iter().find(|t| t.gguf == suffix)?;
    Some(format!("model.layers.{layer}.{}", t.hf))
}

/// The RoPE permutation of a GGUF tensor, by name.
pub fn permute_of(gguf: &str) -> Permute {
    let suffix = gguf
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .map_or("", |(_, s)| s);
    BLOCK_TENSORS
        .iter()
        .find(|t| t.gguf == suffix)
        .map_or(Permute::None, |t| match t.role {
            Role::Matrix { permute } | Role::Vector { permute } => permute,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_permute_and_names_map_back() {
        let x: Vec<f32> = (0..48).map(|v| v as f32).collect();
        assert_eq!(unpermute_rows(&permute_rows(&x, 24, 2, 3), 24, 2, 3), x);
        assert_eq!(
            hf_name("blk.7.attn_q.weight").as_deref(),
            Some("model.layers.7.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(permute_of("blk.0.attn_k.weight"), Permute::K);
        assert_eq!(permute_of("blk.0.ffn_up.weight"), Permute::None);
    }

    #[test]
    fn permutation_on_two_heads() {
        // 2 heads of hd 4: HF rows [a0 a1 b0 b1 | c0 c1 d0 d1] (halves a|b) interleave to
        // [a0 b0 a1 b1 | c0 d0 c1 d1].
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(
            permute_rows(&x, 8, 1, 2),
            vec![0., 2., 1., 3., 4., 6., 5., 7.]
        );
        // Columns travel with their row.
        let x: Vec<f32> = (0..8).flat_map(|r| [r as f32, 10.0 + r as f32]).collect();
        let p = permute_rows(&x, 8, 2, 2);
        assert_eq!(&p[2..4], &[2.0, 12.0]);
    }
}
