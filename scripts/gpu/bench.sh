#!/usr/bin/env bash
# Engine bench on a GPU machine with the CUDA execution provider.
# Expects: ONNX Runtime with the CUDA provider in $ORT_DIR (default: .ort/lib when
# `scripts/setup.sh --gpu` put it there, else /tmp/ort as a lent device machine has it):
# libonnxruntime.so.1.31.1, libonnxruntime_providers_shared.so and
# libonnxruntime_providers_cuda.so from the onnxruntime-gpu 1.31.1 wheel; the CUDA 13
# libraries in $CUDA_LIB (default /usr/local/cuda-13.0/targets/x86_64-linux/lib); a
# `safegate` binary built with `--features cuda` at ./safegate or target/release/safegate;
# a Python with onnx + numpy to build the bench model ($PYTHON, default
# .cache/bench-venv/bin/python from scripts/bench/setup.sh when it exists, else python3).
# Prints a short table last; full logs go to $OUT (or ./bench-out).
#
# With BIG=1 (the default when a CUDA device is present) it also measures a Llama-3-8B-shaped
# model: random float16 weights written as GGUF by scripts/gpu/random_gguf.py and imported
# with `safegate models import-gguf --weights f16 --compute f16` (the project's own ONNX
# writer); the device's copy bandwidth (torch) gives the decode bound; safegate decodes 256
# tokens after a 128-token prompt and prefills 500; the guard's scoring path runs with 1, 4,
# 8 and 16 callers; Hugging Face transformers (eager attention, float16) decodes the same
# shape for comparison. Needs about 35 GB of disk for a while and 20 GB of GPU memory.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
if [ -z "${ORT_DIR:-}" ]; then
  ORT_DIR=/tmp/ort
  [ -f .ort/lib/libonnxruntime_providers_cuda.so ] && ORT_DIR=.ort/lib
fi
CUDA_LIB=${CUDA_LIB:-/usr/local/cuda-13.0/targets/x86_64-linux/lib}
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .cache/bench-venv/bin/python ] && PY=.cache/bench-venv/bin/python
export LD_LIBRARY_PATH=$ORT_DIR:$CUDA_LIB:${LD_LIBRARY_PATH:-}
export ORT_DYLIB_PATH=$ORT_DIR/libonnxruntime.so.1.31.1
BIN=./safegate; [ -x "$BIN" ] || BIN=target/release/safegate
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" - <<'PY' >"$OUT/build.log" 2>&1
import sys; sys.path.insert(0, "scripts/fixtures"); sys.path.insert(0, "scripts/bench")
import engine_bench, os
engine_bench.build_100m(os.path.join("bench-out", "llama-100m"))
PY
# CUDA with the KV cache kept on the GPU by I/O binding (the default there) and without it
# (every step copies the cache to the host and back), then the CPU.
for model in tests/fixtures/tiny-llama3 bench-out/llama-100m; do
  for run in "cuda on" "cuda off" "cpu off"; do
    set -- $run
    "$BIN" --log info bench --model "$model" --device "$1" --io-binding "$2" --prompt-tokens 128 --new-tokens 64 --runs 5 --json \
      2>>"$OUT/safegate.log" | tee -a "$OUT/results.jsonl"
  done
done
# Guard classification, one at a time and batched (cargo build --release --features
# safegate-engine/cuda -p safegate-guard --examples; copied as ./guard-bench or in target/).
GB=./guard-bench; [ -x "$GB" ] || GB=target/release/examples/bench
if [ -x "$GB" ]; then
  "$GB" bench-out/llama-100m 10 1,4,8,16 cuda 2>>"$OUT/safegate.log" | tee "$OUT/guard-batching.md"
fi
python3 -c "
import json
print('| model | device | I/O binding | first token ms | ms/token | tokens/s |'); print('|---|---|---|---|---|---|')
for l in open('$OUT/results.jsonl'):
    r = json.loads(l)
    print(f\"| {r['model']} | {r['provider']} | {r.get('io_binding', False)} | {r['time_to_first_token_ms']:.2f} | {r['per_token_ms']:.3f} | {r['tokens_per_second']:.0f} |\")
"

# ---- Llama-3-8B shape -------------------------------------------------------------------
BIG=${BIG:-1}
TOKJSON=${TOKJSON:-.cache/llama3-tokenizer/tokenizer.json}
if [ "$BIG" = 1 ] && [ -f "$TOKJSON" ]; then
  M8=bench-out/llama3-8b
  if [ ! -f "$M8/model.onnx" ]; then
    t0=$(date +%s)
    "$PY" scripts/gpu/random_gguf.py bench-out/llama3-8b.gguf --shape llama3-8b --tokenizer "$TOKJSON" 2>>"$OUT/build.log"
    "$BIN" models import-gguf bench-out/llama3-8b.gguf "$M8" --weights f16 --compute f16 2>>"$OUT/build.log"
    rm -f bench-out/llama3-8b.gguf
    echo "8B model built in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/build.log"
  fi
  # Device-to-device copy bandwidth (read + write), and the decode bound it implies: each
  # token reads every weight once.
  "$PY" - "$M8" <<'PY' | tee "$OUT/bandwidth.json"
import json, os, sys, time
import torch
n = 1 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): b.copy_(a)
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 20
bw = 2 * n / dt
weights = sum(os.path.getsize(os.path.join(sys.argv[1], f)) for f in os.listdir(sys.argv[1]) if f.startswith("model.onnx"))
print(json.dumps({"copy_bandwidth_gb_s": bw / 1e9, "weights_gb": weights / 1e9, "decode_bound_tokens_s": bw / weights}))
PY
  for run in "128 256" "500 1"; do
    set -- $run
    "$BIN" --log info bench --model "$M8" --device cuda --io-binding on --prompt-tokens "$1" --new-tokens "$2" --runs 3 --json \
      2>>"$OUT/safegate.log" | tee -a "$OUT/results-8b.jsonl"
  done
  if [ -x "$GB" ]; then
    "$GB" "$M8" 5 1,4,8,16 cuda 2>>"$OUT/safegate.log" | tee "$OUT/guard-8b.md"
  fi
  # Hugging Face transformers, eager attention, float16, same shape and random init.
  "$PY" - <<'PY' 2>>"$OUT/hf.log" | tee "$OUT/hf-8b.json" || true
import json, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                  rope_theta=500000.0, attn_implementation="eager")
torch.set_default_dtype(torch.float16)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg).eval()
ids = torch.randint(0, 128000, (1, 128), device="cuda")
with torch.no_grad():
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    torch.cuda.synchronize(); t = time.perf_counter()
    model.generate(ids, max_new_tokens=256, min_new_tokens=256, do_sample=False)
    torch.cuda.synchronize(); decode = time.perf_counter() - t
    long = torch.randint(0, 128000, (1, 500), device="cuda")
    torch.cuda.synchronize(); t = time.perf_counter()
    model(long)
    torch.cuda.synchronize(); prefill = time.perf_counter() - t
print(json.dumps({"hf_eager_tokens_s": 256 / decode, "hf_prefill_500_ms": prefill * 1e3}))
PY
  python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "results-8b.jsonl"))]
bw = json.load(open(os.path.join(out, "bandwidth.json")))
hf = {}
try:
    hf = json.load(open(os.path.join(out, "hf-8b.json")))
except (OSError, ValueError):
    pass
dec = next(r for r in rows if r["new_tokens"] > 1)
pre = next(r for r in rows if r["new_tokens"] == 1)
tps = dec["tokens_per_second"]
print()
print("| Llama-3-8B shape, float16 | value |")
print("|---|---|")
print(f"| copy bandwidth | {bw['copy_bandwidth_gb_s']:.0f} GB/s |")
print(f"| decode bound (bandwidth / {bw['weights_gb']:.1f} GB of weights) | {bw['decode_bound_tokens_s']:.0f} tokens/s |")
print(f"| safegate decode, 128-token prompt, 256 new | {tps:.1f} tokens/s ({100 * tps / bw['decode_bound_tokens_s']:.0f}% of the bound) |")
print(f"| safegate prefill, 500 tokens (time to first token) | {pre['time_to_first_token_ms']:.1f} ms |")
if hf:
    print(f"| transformers eager decode | {hf['hf_eager_tokens_s']:.1f} tokens/s (safegate {tps / hf['hf_eager_tokens_s']:.1f}x) |")
    print(f"| transformers eager prefill, 500 tokens | {hf['hf_prefill_500_ms']:.1f} ms |")
PY
fi
