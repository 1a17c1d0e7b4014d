#!/usr/bin/env python3
"""Writes a llama-architecture GGUF with random weights for speed benchmarks (not for quality).

  scripts/make-random-model.py VOCAB_GGUF OUT.gguf TYPE [--shape llama2-7b|smollm2-135m] [--layers N]

Prints bytes_read_per_token=N: the bytes of every tensor but the token embeddings.

TYPE is the linears' type: apiq2, q4_0, q4_1, q8_0, q4_k, q2_k or q2_0. --layers keeps the
shape's widths with fewer blocks (per-layer speed at a fraction of the file). The blocks hold random codes with
small finite scales, so every kernel does the same work as on real weights. Token embeddings and
the output matrix are Q8_0, norms F32. The vocabulary and tokenizer keys are copied from
VOCAB_GGUF (any llama-architecture GGUF), so the vocabulary size is that file's.
Needs numpy only (VOCAB_GGUF's keys are read here, so machines without the gguf package and its
dependencies can run it).
"""
import argparse
import os
import struct

import numpy as np

SHAPES = {
    # hidden, ffn, layers, heads, kv heads
    "llama2-7b": (4096, 11008, 32, 32, 32),
    "smollm2-135m": (576, 1536, 30, 9, 3),
}
# type: (ggml id, block size, bytes per block, offsets of the f16 scale fields)
TYPES = {
    "apiq2": (160, 64, 20, (0, 2)),
    "q4_0": (2, 32, 18, (0,)),
    "q4_1": (3, 32, 20, (0, 2)),
    "q2_k": (10, 256, 84, (80, 82)),
    "q4_k": (12, 256, 144, (0, 2)),
    "q2_0": (42, 64, 18, (0,)),
    "q8_0": (8, 32, 34, (0,)),
}
FTYPES = {"apiq2": 160, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_k": 14, "q2_k": 10, "q2_0": 41}
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


# GGUF metadata value types: fixed sizes; 8 is a string, 9 an array (element type, count, elements).
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def read_kvs(path):
    """(key, raw bytes of the whole key-value entry, array length or None) of a GGUF file."""
    with open(path, "rb") as f:
        head = f.read(24)
        assert head[:4] == b"GGUF", f"{path} is not a GGUF file"
        _, _, n_kv = struct.unpack("<IQQ", head[4:])
        buf = f.read(64 << 20)  # the metadata of any vocabulary fits

    def skip_value(pos, vtype):
        if vtype == 8:
            (n,) = struct.unpack_from("<Q", buf, pos)
            return pos + 8 + n
        if vtype == 9:
            etype, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if etype in SCALAR_SIZES:
                return pos + count * SCALAR_SIZES[etype]
            for _ in range(count):
                pos = skip_value(pos, etype)
            return pos
        return pos + SCALAR_SIZES[vtype]

    pos, out = 0, []
    for _ in range(n_kv):
        start = pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        key = buf[pos + 8:pos + 8 + n].decode()
        (vtype,) = struct.unpack_from("<I", buf, pos + 8 + n)
        count = struct.unpack_from("<Q", buf, pos + 12 + n + 4)[0] if vtype == 9 else None
        pos = skip_value(pos + 12 + n, vtype)
        out.append((key, buf[start:pos], count))
    return out


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
    ap.add_argument("--layers", type=int, help="blocks (default: the shape's)")
    a = ap.parse_args()
    hidden, ffn, layers, heads, kv_heads = SHAPES[a.shape]
    layers = a.layers or layers

    kvs = []
    n_vocab = None
    for name, raw, count in read_kvs(a.vocab_gguf):
        if name.startswith("tokenizer."):
            kvs.append(raw)
            if name == "tokenizer.ggml.tokens":
                n_vocab = count
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
    # what one decoded token reads: every tensor but the embeddings, of which it reads one row
    read = sum(nbytes(t, rows, cols) for name, t, rows, cols in tensors if name != "token_embd.weight")
    print(f"bytes_read_per_token={read}")


if __name__ == "__main__":
    main()
