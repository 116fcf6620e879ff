#!/usr/bin/env bash
# `safegate scan FILE` from a cold process: the median wall time of RUNS runs per input
# (a Python file, a JavaScript file, a fenced reply on standard input), start-up included.
#   scripts/shield/cold_start.sh [RUNS=10]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-10}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p safegate-gateway --bin safegate
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
printf 'import os\nos.system(cmd)\n' > "$work/a.py"
printf 'const cp = require("child_process");\ncp.exec(userInput);\n' > "$work/a.js"
printf 'Here:\n```python\nimport os\nos.system(cmd)\n```\n' > "$work/reply.md"
median() {
  local times=()
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s%N); "$@" >/dev/null 2>&1 || true; t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
echo "| input | median ms ($RUNS runs) |"
echo "|---|---|"
echo "| Python file | $(median target/release/safegate scan "$work/a.py") |"
echo "| JavaScript file | $(median target/release/safegate scan "$work/a.js") |"
echo "| fenced reply, stdin, language detected | $(median sh -c "target/release/safegate scan < $work/reply.md") |"
