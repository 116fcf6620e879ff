#!/usr/bin/env bash
# Set up, build and start the safegate gateway on http://127.0.0.1:8080 (override with
# SAFEGATE_LISTEN). Until the embedded SmolLM2 chat model lands, the chat and guard models
# are the tiny-llama3 test fixture (random weights: replies are gibberish by design, and
# its guard verdicts are noise); the shield and the policies are real.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release -q -p safegate-gateway
exec target/release/safegate serve \
  --model tests/fixtures/tiny-llama3 \
  --guard-model tests/fixtures/tiny-llama3 \
  "$@"
