#!/usr/bin/env python3
"""Writes a Hugging Face checkpoint directory of a named shape with random BF16 weights, sharded
as Hub checkpoints come (for the 7B-scale benchmark; the quality of such a model means nothing,
every byte it moves is real):

  scripts/make-random-hf.py TOKENIZER_DIR OUT_DIR [--shape llama2-7b|smollm2-135m] [--layers N]
                            [--shard-gb 5] [--seed 0]

OUT_DIR gets config.json (LlamaForCausalLM), generation_config.json, the tokenizer files of
TOKENIZER_DIR (a small real model's: tokenizer.json, tokenizer_config.json,
special_tokens_map.json; the vocabulary size is its own), and model-0000K-of-0000M.safetensors
shards of at most --shard-gb GB (save_pretrained's default, 5 GB) with
model.safetensors.index.json. Weights are N(0, 0.02^2) (Llama's initialisation scale) in BF16,
norms 1; tensors in the Hub's order (embeddings, each layer, final norm, lm_head).
Needs numpy; with PyTorch the weights are drawn on its GPU (a 7B checkpoint in about a minute
instead of several). The shards are written directly (8-byte header length, JSON header, data).
"""
import argparse
import json
import os
import shutil

import numpy as np

SHAPES = {
    # hidden, ffn, layers, heads, kv heads, context, rms eps
    "llama2-7b": (4096, 11008, 32, 32, 32, 4096, 1e-5),
    "smollm2-135m": (576, 1536, 30, 9, 3, 8192, 1e-5),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def bf16_bytes(x):
    """float32 array -> BF16 bytes, rounded to nearest even (as torch's .to(torch.bfloat16))."""
    u = x.astype(np.float32).view(np.uint32)
    u = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return u.astype("<u2").tobytes()


def tensors(shape, vocab):
    """(name, shape, kind) in the order of a Hub Llama checkpoint; kind: 'w' random, 'norm' ones."""
    hidden, ffn, layers, heads, kv, _, _ = shape
    hd = hidden // heads
    yield "model.embed_tokens.weight", (vocab, hidden), "w"
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (hidden,), "norm"
        yield p + "mlp.down_proj.weight", (hidden, ffn), "w"
        yield p + "mlp.gate_proj.weight", (ffn, hidden), "w"
        yield p + "mlp.up_proj.weight", (ffn, hidden), "w"
        yield p + "post_attention_layernorm.weight", (hidden,), "norm"
        yield p + "self_attn.k_proj.weight", (kv * hd, hidden), "w"
        yield p + "self_attn.o_proj.weight", (hidden, hidden), "w"
        yield p + "self_attn.q_proj.weight", (hidden, hidden), "w"
        yield p + "self_attn.v_proj.weight", (kv * hd, hidden), "w"
    yield "model.norm.weight", (hidden,), "norm"
    yield "lm_head.weight", (vocab, hidden), "w"


class Draw:
    """N(0, 0.02^2) BF16 bytes of a shape: PyTorch on its GPU where there is one, else numpy."""

    def __init__(self, seed):
        try:
            import torch

            self.torch = torch
            self.dev = "cuda" if torch.cuda.is_available() else "cpu"
            self.gen = torch.Generator(device=self.dev).manual_seed(seed)
        except ImportError:
            self.torch = None
            self.rng = np.random.default_rng(seed)

    def __call__(self, shp):
        if self.torch is None:
            x = self.rng.standard_normal(shp, dtype=np.float32)
            x *= np.float32(0.02)
            return bf16_bytes(x)
        t = self.torch.randn(shp, generator=self.gen, device=self.dev) * 0.02
        return t.to(self.torch.bfloat16).view(self.torch.int16).cpu().numpy().tobytes()


def write_shard(path, items, draw):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shp, _ in items:
        n = 2 * int(np.prod(shp))
        header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for _, shp, kind in items:
            f.write(bf16_bytes(np.ones(shp, np.float32)) if kind == "norm" else draw(shp))
    os.replace(tmp, path)
    return offset


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--shape", choices=SHAPES, default="llama2-7b")
    ap.add_argument("--layers", type=int, help="fewer blocks of the same widths")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    shape = list(SHAPES[a.shape])
    if a.layers:
        shape[2] = a.layers
    hidden, ffn, layers, heads, kv, ctx, eps = shape
    tok_cfg = json.load(open(os.path.join(a.tokenizer_dir, "tokenizer.json")))
    vocab = len(tok_cfg["model"]["vocab"])
    vocab += sum(1 for t in tok_cfg.get("added_tokens", []) if t["content"] not in tok_cfg["model"]["vocab"])
    src_cfg_path = os.path.join(a.tokenizer_dir, "config.json")
    src_cfg = json.load(open(src_cfg_path)) if os.path.exists(src_cfg_path) else {}
    bos, eos = src_cfg.get("bos_token_id", 1), src_cfg.get("eos_token_id", 2)

    os.makedirs(a.out_dir, exist_ok=True)
    for f in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(a.tokenizer_dir, f), os.path.join(a.out_dir, f))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": ctx,
        "rms_norm_eps": eps,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "vocab_size": vocab,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    json.dump(config, open(os.path.join(a.out_dir, "config.json"), "w"), indent=2)
    json.dump({"bos_token_id": bos, "eos_token_id": eos}, open(os.path.join(a.out_dir, "generation_config.json"), "w"))

    # Shards as save_pretrained cuts them: tensors in order, a new shard when the next would
    # pass the limit.
    limit = int(a.shard_gb * 1e9)
    shards, cur, size = [], [], 0
    for t in tensors(shape, vocab):
        n = 2 * int(np.prod(t[1]))
        if cur and size + n > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += n
    shards.append(cur)
    draw = Draw(a.seed)
    weight_map, total = {}, 0
    for k, items in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(os.path.join(a.out_dir, name), items, draw)
        weight_map.update({t[0]: name for t in items})
        print(f"wrote {name} ({len(items)} tensors)", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    json.dump(index, open(os.path.join(a.out_dir, "model.safetensors.index.json"), "w"), indent=2)
    print(f"total_size={total}")


if __name__ == "__main__":
    main()
