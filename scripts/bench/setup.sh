#!/usr/bin/env bash
# Set-up for the benchmark tools (idempotent; not needed to serve or to test):
#   .cache/bench-venv   numpy, onnx, onnxruntime, jinja2, tokenizers, pinned:
#                       scripts/bench/engine_bench.py, scripts/gpu/bench.sh
#   .cache/csenv        Meta's Code Shield (codeshield + semgrep), pinned:
#                       the comparison in scripts/shield/bench.sh
#   wrk                 (apt) scripts/bench/gateway_load.sh, scripts/bench/soak.sh
# Prints the two Pythons. Packages come from PyPI through pip, versions pinned here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
scripts/setup.sh >/dev/null
need() { [ -x "$1/bin/python" ] && "$1/bin/python" -c "$2" 2>/dev/null; }
if ! need .cache/bench-venv 'import numpy, onnx, onnxruntime, jinja2, tokenizers'; then
  "$PY" -m venv .cache/bench-venv
  .cache/bench-venv/bin/pip install -q numpy==2.4.6 onnx==1.23.2 onnxruntime==1.32.0 \
    jinja2==3.1.6 tokenizers==0.23.3 >&2
fi
if ! need .cache/csenv 'import codeshield'; then
  "$PY" -m venv .cache/csenv
  .cache/csenv/bin/pip install -q codeshield==1.0.1 >&2
fi
# wrk for scripts/bench/gateway_load.sh and soak.sh: Debian's package.
if ! command -v wrk >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y --no-install-recommends wrk >&2 \
    || { $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends wrk >&2; }
fi
echo "bench python: $(pwd)/.cache/bench-venv/bin/python"
echo "code shield python: $(pwd)/.cache/csenv/bin/python"
