"""Make the committed GGUF test fixtures (run once by a developer, never in CI).

    pip install gguf==0.19.0 numpy onnx==1.23.2
    python3 scripts/gguf/make_fixtures.py

Writes, with the reference GGUF library (gguf-py, from llama.cpp):

* tests/fixtures/gguf/quant-types.gguf: for each ggml type safegate dequantizes, a tensor
  `q.<TYPE>` of 2 x 256 values and `x.<TYPE>`, the F32 values gguf-py dequantizes it to.
  Q4_0..Q8_0 are quantized from random normals by gguf-py; the K-quants (which gguf-py cannot
  quantize) are random blocks with finite scales.
* tests/fixtures/gguf/tiny-chatml.gguf: the weights of tests/fixtures/tiny-chatml-genai
  (same config, same seed) written as llama.cpp's converter writes a Llama model: HF
  [out, in] matrices, Q/K rows permuted for its rotary layout, byte-level BPE vocabulary,
  ChatML template. Importing it must reproduce that fixture's expected.json.
* tests/fixtures/gguf/tiny-chatml-f16.gguf: the same with the matrices (embedding and linear
  layers) in float16, as `convert_hf_to_gguf.py --outtype f16` writes them (norms stay F32):
  what the importer's float16 path, which never widens to f32, reads.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts", "fixtures"))
import llama_onnx  # noqa: E402
from make_fixtures import CHATML_TEMPLATE  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")

# Byte offsets of the f16 scale fields in each K-quant block (ggml-common.h).
K_SCALES = {T.Q2_K: (84, [80, 82]), T.Q3_K: (110, [108]), T.Q4_K: (144, [0, 2]),
            T.Q5_K: (176, [0, 2]), T.Q6_K: (210, [208])}


def quant_types():
    rng = np.random.default_rng(11)
    w = GGUFWriter(os.path.join(OUT, "quant-types.gguf"), arch="llama")
    for qtype in [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        values = rng.standard_normal((2, 256)).astype(np.float32)
        raw = quants.quantize(values, qtype)
        w.add_tensor(f"q.{qtype.name}", raw, raw_dtype=qtype)
        w.add_tensor(f"x.{qtype.name}", quants.dequantize(raw, qtype).astype(np.float32).reshape(2, 256))
    for qtype, (size, scale_at) in K_SCALES.items():
        blocks = rng.integers(0, 256, size=(2, size), dtype=np.uint8)
        for at in scale_at:
            blocks[:, at:at + 2] = np.frombuffer(
                rng.uniform(0.001, 0.05, 2).astype(np.float16).tobytes(), dtype=np.uint8).reshape(2, 2)
        w.add_tensor(f"q.{qtype.name}", blocks, raw_dtype=qtype)
        w.add_tensor(f"x.{qtype.name}", quants.dequantize(blocks, qtype).astype(np.float32).reshape(2, 256))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rotary halves -> pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_chatml(matrix_dtype=np.float32, name="tiny-chatml.gguf"):
    src = os.path.join(ROOT, "tests", "fixtures", "tiny-chatml-genai")
    tok = json.load(open(os.path.join(src, "tokenizer.json")))
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    special = {a["id"] for a in tok["added_tokens"] if a["special"]}
    eos = tokens.index("<|im_end|>")
    # The configuration and seed of make_fixtures.make_chatml_genai.
    cfg = llama_onnx.LlamaConfig(vocab_size=len(tokens), hidden_size=64, num_layers=2, num_heads=4,
                                 num_kv_heads=2, intermediate_size=96, max_position_embeddings=512,
                                 bos_token_id=eos, eos_token_id=[eos], init_scale=1.2)
    wts = llama_onnx.random_weights(cfg, 5)

    w = GGUFWriter(os.path.join(OUT, name), arch="llama")
    w.add_name("tiny-chatml")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(eos)
    w.add_chat_template(CHATML_TEMPLATE)

    wts = {k: (v.astype(matrix_dtype) if v.ndim == 2 else v) for k, v in wts.items()}
    w.add_tensor("token_embd.weight", wts["embed"])
    for i in range(cfg.num_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", wts[f"l{i}.in_norm"])
        # llama_onnx keeps [in, out] matrices; GGUF holds HF's [out, in].
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(wts[f"l{i}.q"].T.copy(), cfg.num_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(wts[f"l{i}.k"].T.copy(), cfg.num_kv_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", wts[f"l{i}.v"].T.copy())
        w.add_tensor(f"blk.{i}.attn_output.weight", wts[f"l{i}.o"].T.copy())
        w.add_tensor(f"blk.{i}.ffn_norm.weight", wts[f"l{i}.post_norm"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", wts[f"l{i}.gate"].T.copy())
        w.add_tensor(f"blk.{i}.ffn_up.weight", wts[f"l{i}.up"].T.copy())
        w.add_tensor(f"blk.{i}.ffn_down.weight", wts[f"l{i}.down"].T.copy())
    w.add_tensor("output_norm.weight", wts["final_norm"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    quant_types()
    tiny_chatml()
    tiny_chatml(np.float16, "tiny-chatml-f16.gguf")
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")
