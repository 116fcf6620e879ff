"""Writes a random-weight Llama GGUF of a benchmark shape, for `safegate models import-gguf`
(which then writes the ONNX graph: the project's own writer), with numpy and the standard
library only (the GPU machine has no gguf package).

    python3 scripts/gpu/random_gguf.py OUT.gguf --shape llama3-8b --tokenizer tokenizer.json

Shapes: `llama3-8b` (Llama-3-8B: 32 layers, hidden 4096, 32 heads / 8 KV heads, FFN 14336,
vocabulary 128256, separate output head), `llama3-1b` (Llama-3.2-1B's blocks: 16 layers,
hidden 2048, 32 heads / 8 KV heads, FFN 8192), `tiny` (2 layers, hidden 256: checks the script
on a CPU machine). Weights are float16 normals (std 0.02) tiled from one 32 MiB random
block: a speed benchmark needs the shape and finite values, not independent ones, and
tiling writes 16 GB at disk speed. The vocabulary, merges and special tokens come from a
Llama 3 tokenizer.json, so the imported model loads like a real one.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys

import numpy as np

SHAPES = {
    "llama3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, context=8192),
    "llama3-1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, context=8192),
    "tiny": dict(hidden=256, layers=2, heads=4, kv_heads=2, ffn=512, context=2048),
}
ALIGN = 32
F16 = 1  # ggml type id
U32, I32, F32, STRING, ARRAY = 4, 5, 6, 8, 9
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
    "<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def kv(key: str, kind: int, value) -> bytes:
    out = string(key) + struct.pack("<I", kind)
    if kind == U32:
        return out + struct.pack("<I", value)
    if kind == F32:
        return out + struct.pack("<f", value)
    if kind == STRING:
        return out + string(value)
    raise ValueError(kind)


def array(key: str, kind: int, values) -> bytes:
    out = string(key) + struct.pack("<IIQ", ARRAY, kind, len(values))
    if kind == STRING:
        return out + b"".join(string(v) for v in values)
    if kind == I32:
        return out + struct.pack(f"<{len(values)}i", *values)
    raise ValueError(kind)


def tokenizer_metadata(path: str) -> tuple[list[bytes], int]:
    tok = json.load(open(path, encoding="utf-8"))
    vocab = dict(tok["model"]["vocab"])
    special = set()
    for t in tok.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special.add(t["id"])
    n = max(vocab.values()) + 1
    tokens = [""] * n
    for text, i in vocab.items():
        tokens[i] = text
    for i in range(n):  # ids the file leaves unnamed get a unique placeholder
        if not tokens[i]:
            tokens[i] = f"<|reserved_{i}|>"
            special.add(i)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    ids = {t: i for i, t in enumerate(tokens)}
    meta = [
        kv("tokenizer.ggml.model", STRING, "gpt2"),
        kv("tokenizer.ggml.pre", STRING, "llama-bpe"),
        array("tokenizer.ggml.tokens", STRING, tokens),
        array("tokenizer.ggml.token_type", I32, [3 if i in special else 1 for i in range(n)]),
        array("tokenizer.ggml.merges", STRING, merges),
        kv("tokenizer.ggml.bos_token_id", U32, ids.get("<|begin_of_text|>", 0)),
        kv("tokenizer.ggml.eos_token_id", U32, ids.get("<|eot_id|>", n - 1)),
        kv("tokenizer.chat_template", STRING, LLAMA3_TEMPLATE),
    ]
    return meta, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--tokenizer", required=True, help="a Llama 3 tokenizer.json")
    args = ap.parse_args()
    s = SHAPES[args.shape]
    h, layers, heads, kvh, ffn = s["hidden"], s["layers"], s["heads"], s["kv_heads"], s["ffn"]
    d = h // heads
    tok_meta, vocab = tokenizer_metadata(args.tokenizer)
    meta = [
        kv("general.architecture", STRING, "llama"),
        kv("general.name", STRING, f"random-{args.shape}"),
        kv("general.alignment", U32, ALIGN),
        kv("llama.block_count", U32, layers),
        kv("llama.context_length", U32, s["context"]),
        kv("llama.embedding_length", U32, h),
        kv("llama.feed_forward_length", U32, ffn),
        kv("llama.attention.head_count", U32, heads),
        kv("llama.attention.head_count_kv", U32, kvh),
        kv("llama.rope.freq_base", F32, 500000.0),
        kv("llama.rope.dimension_count", U32, d),
        kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
    ] + tok_meta
    # ggml dims, innermost first: a linear layer is [in, out].
    tensors = [("token_embd.weight", [h, vocab])]
    for i in range(layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", [h]),
            (p + "attn_q.weight", [h, heads * d]),
            (p + "attn_k.weight", [h, kvh * d]),
            (p + "attn_v.weight", [h, kvh * d]),
            (p + "attn_output.weight", [heads * d, h]),
            (p + "ffn_norm.weight", [h]),
            (p + "ffn_gate.weight", [h, ffn]),
            (p + "ffn_up.weight", [h, ffn]),
            (p + "ffn_down.weight", [ffn, h]),
        ]
    tensors += [("output_norm.weight", [h]), ("output.weight", [h, vocab])]

    infos, offset = [], 0
    for name, dims in tensors:
        infos.append(string(name) + struct.pack("<I", len(dims)) +
                     struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", F16, offset))
        size = 2 * int(np.prod(dims))
        offset += (size + ALIGN - 1) // ALIGN * ALIGN
    rng = np.random.default_rng(20261130)
    block = (rng.standard_normal(16 << 20) * 0.02).astype(np.float16).tobytes()
    ones = np.ones(max(h, 1), dtype=np.float16).tobytes()  # RMSNorm weights
    with open(args.out, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)))
        f.write(b"".join(meta))
        f.write(b"".join(infos))
        f.write(b"\0" * (-f.tell() % ALIGN))
        for name, dims in tensors:
            size = 2 * int(np.prod(dims))
            if name.endswith("norm.weight"):
                f.write(ones[:size])
            else:
                left = size
                while left:
                    k = min(left, len(block))
                    f.write(block[:k])
                    left -= k
            f.write(b"\0" * (-size % ALIGN))
    params = sum(int(np.prod(d)) for _, d in tensors)
    print(f"{args.out}: {args.shape}, {params / 1e9:.2f}B parameters, {offset / 2**30:.1f} GiB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
