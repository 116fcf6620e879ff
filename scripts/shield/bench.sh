#!/usr/bin/env bash
# Shield evaluation and speed, side by side with Meta's Code Shield in the same run.
#   scripts/shield/bench.sh [CODESHIELD_PYTHON]
# CODESHIELD_PYTHON: a Python with `codeshield` installed (default: .cache/csenv, which
#   scripts/bench/setup.sh makes); the comparison is skipped if there is none.
# The clean-code corpus (scripts/shield/clean_corpus.sh) is measured when .cache/corpus exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEV=${SHIELD_DEV:-shield/eval/shield-dev.jsonl}
CS_PY=${1:-.cache/csenv/bin/python}
cargo build --release -q -p safegate-shield --examples
echo "## safegate shield, language given"
target/release/examples/eval "$DEV"
echo; echo "## safegate shield, language detected"
target/release/examples/eval "$DEV" --auto | sed -n '1,13p'
if [ -x "$CS_PY" ] && "$CS_PY" -c 'import codeshield' 2>/dev/null; then
  echo; echo "## Code Shield (codeshield $("$CS_PY" -c 'import importlib.metadata as m; print(m.version("codeshield"))'), semgrep $("$CS_PY" -c 'import importlib.metadata as m; print(m.version("semgrep"))'))"
  "$CS_PY" scripts/shield/bench_codeshield.py "$DEV" 2>/dev/null
fi
if [ -d .cache/corpus ]; then
  echo; echo "## Throughput"
  sqlite=$(ls .cache/corpus/c/*sqlite3.c 2>/dev/null | head -n1)
  [ -n "$sqlite" ] && target/release/examples/throughput "$sqlite:c"
  echo; echo "## Clean corpus"
  target/release/examples/fp .cache/corpus --samples 3
fi
