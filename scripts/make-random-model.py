#!/usr/bin/env python3
"""Writes a llama-architecture GGUF with random weights for speed benchmarks (not for quality).

  scripts/make-random-model.py VOCAB_GGUF OUT.gguf TYPE [--shape llama2-7b|smollm2-135m]

TYPE is the linears' type: apiq2, q4_0, q2_k or q2_0. The blocks hold random codes with
small finite scales, so every kernel does the same work as on real weights. Token embeddings and
the output matrix are Q8_0, norms F32. The vocabulary and tokenizer keys are copied from
VOCAB_GGUF (any llama-architecture GGUF), so the vocabulary size is that file's.
Needs numpy and the gguf package (to read VOCAB_GGUF).
"""
import argparse
import os
import struct

import numpy as np
from gguf import GGUFReader

SHAPES = {
    # hidden, ffn, layers, heads, kv heads
    "llama2-7b": (4096, 11008, 32, 32, 32),
    "smollm2-135m": (576, 1536, 30, 9, 3),
}
# type: (ggml id, block size, bytes per block, offsets of the f16 scale fields)
TYPES = {
    "apiq2": (160, 64, 20, (0, 2)),
    "q4_0": (2, 32, 18, (0,)),
    "q2_k": (10, 256, 84, (80, 82)),
    "q2_0": (42, 64, 18, (0,)),
    "q8_0": (8, 32, 34, (0,)),
}
FTYPES = {"apiq2": 160, "q4_0": 2, "q2_k": 10, "q2_0": 41}
ALIGN = 32


def blocks(rng, type_name, rows, cols):
    _, bs, nbytes, scale_offsets = TYPES[type_name]
    assert cols % bs == 0, (type_name, cols)
    n = rows * cols // bs
    data = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    scale = np.full(n, 0.01, dtype=np.float16).view(np.uint8).reshape(n, 2)
    for off in scale_offsets:
        data[:, off:off + 2] = scale
    return data.tobytes()


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv_u32(key, v):
    return gguf_string(key) + struct.pack("<II", 4, v)


def kv_f32(key, v):
    return gguf_string(key) + struct.pack("<If", 6, v)


def kv_str(key, v):
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("vocab_gguf")
    ap.add_argument("out")
    ap.add_argument("type", choices=sorted(FTYPES))
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    a = ap.parse_args()
    hidden, ffn, layers, heads, kv_heads = SHAPES[a.shape]

    reader = GGUFReader(a.vocab_gguf)
    kvs = []
    n_vocab = None
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            kvs.append(b"".join(p.tobytes() for p in field.parts))
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(field.data)
    assert n_vocab, "VOCAB_GGUF has no tokenizer.ggml.tokens"
    kvs += [
        kv_str("general.architecture", "llama"),
        kv_str("general.name", f"random {a.shape} {a.type}"),
        kv_u32("general.file_type", FTYPES[a.type]),
        kv_u32("llama.context_length", 4096),
        kv_u32("llama.embedding_length", hidden),
        kv_u32("llama.feed_forward_length", ffn),
        kv_u32("llama.block_count", layers),
        kv_u32("llama.attention.head_count", heads),
        kv_u32("llama.attention.head_count_kv", kv_heads),
        kv_u32("llama.rope.dimension_count", hidden // heads),
        kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
        kv_f32("llama.rope.freq_base", 10000.0),
        kv_u32("general.alignment", ALIGN),
    ]

    head_dim = hidden // heads
    tensors = [("token_embd.weight", "q8_0", n_vocab, hidden), ("output_norm.weight", "f32", 1, hidden),
               ("output.weight", "q8_0", n_vocab, hidden)]
    for i in range(layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", "f32", 1, hidden),
            (p + "ffn_norm.weight", "f32", 1, hidden),
            (p + "attn_q.weight", a.type, hidden, hidden),
            (p + "attn_k.weight", a.type, kv_heads * head_dim, hidden),
            (p + "attn_v.weight", a.type, kv_heads * head_dim, hidden),
            (p + "attn_output.weight", a.type, hidden, hidden),
            (p + "ffn_gate.weight", a.type, ffn, hidden),
            (p + "ffn_up.weight", a.type, ffn, hidden),
            (p + "ffn_down.weight", a.type, hidden, ffn),
        ]

    def nbytes(t, rows, cols):
        if t == "f32":
            return rows * cols * 4
        _, bs, nb, _ = TYPES[t]
        return rows * cols // bs * nb

    infos, offset = [], 0
    for name, t, rows, cols in tensors:
        type_id = 0 if t == "f32" else TYPES[t][0]
        dims = [cols] if rows == 1 else [cols, rows]
        infos.append(gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<IQ", type_id, offset))
        offset += (nbytes(t, rows, cols) + ALIGN - 1) // ALIGN * ALIGN

    rng = np.random.default_rng(0)
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)))
        for kv in kvs:
            f.write(kv)
        for info in infos:
            f.write(info)
        f.write(b"\0" * (-f.tell() % ALIGN))
        for name, t, rows, cols in tensors:
            if t == "f32":
                data = np.ones(cols, dtype=np.float32).tobytes()
            else:
                # one row block at a time keeps memory flat on the 7B shape
                step = max(1, (1 << 24) // cols)
                data = b"".join(blocks(rng, t, min(step, rows - r), cols) for r in range(0, rows, step))
            f.write(data)
            f.write(b"\0" * (-len(data) % ALIGN))
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
