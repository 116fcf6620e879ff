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
