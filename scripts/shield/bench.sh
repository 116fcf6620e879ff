#!/usr/bin/env bash
# Shield evaluation and speed, side by side with Meta's Code Shield in the same run.
#   scripts/shield/bench.sh [CODESHIELD_PYTHON]
# CODESHIELD_PYTHON: a Python with `codeshield` installed (default: .cache/csenv, which
#   scripts/bench/setup.sh makes); the comparison is skipped if there is none.
# The clean-code corpus (scripts/shield/clean_corpus.sh) is measured when .cache/corpus exists,
# and the unseen-code sets of scripts/shield/label_wild.py when .cache/wild has them.
# Recall is printed both ways: over all labels, and over the counted labels (without the
# weak-PRNG and attacker-controlled-value groups the shield declines; docs/shield.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEV=${SHIELD_DEV:-shield/eval/shield-dev.jsonl}
CS_PY=${1:-.cache/csenv/bin/python}
cargo build --release -q -p safegate-shield --examples
echo "## safegate shield, language given"
target/release/examples/eval "$DEV"
echo; echo "## safegate shield, language detected"
target/release/examples/eval "$DEV" --auto | sed -n '1,/^latency/p'
# Sets labelled by scripts/shield/label_wild.py from repositories the rules were not written
# against (docs/benchmarks.md lists them), when this machine has them.
for wild in .cache/wild/*.jsonl; do
  [ -f "$wild" ] || continue
  echo; echo "## Unseen code: $(basename "$wild" .jsonl)"
  target/release/examples/eval "$wild" | sed -n '3,/^| \*\*all/p' | tail -n1
done
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
