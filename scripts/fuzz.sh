#!/usr/bin/env bash
# Runs every fuzz target (the shield, policy parsing, the GGUF reader, the upstream SSE
# parser, the chat request parser, structured output) for SECONDS each (default 30) with cargo-fuzz (libFuzzer, nightly),
# starting from the corpus in fuzz/corpus/TARGET and the committed regression inputs in
# fuzz/regressions/TARGET. A crash fails the run; keep its input in fuzz/regressions/.
#   scripts/fuzz.sh [SECONDS]          (longer runs: scripts/fuzz.sh 3600)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked >&2
rustup toolchain list | grep -q nightly || { echo "the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }
for target in shield_scan policy_parse gguf_open sse_line chat_request json_schema; do
  mkdir -p "fuzz/corpus/$target" "fuzz/regressions/$target"
  echo "fuzz $target for ${SECS}s" >&2
  cargo +nightly fuzz run --release "$target" "fuzz/corpus/$target" "fuzz/regressions/$target" -- \
    -max_total_time="$SECS" -rss_limit_mb=4096 -max_len=65536 -timeout=10 >&2
done
