#!/usr/bin/env bash
# Set up, build and run safegate on the committed default model.
# Until the embedded SmolLM2 chat model and the HTTP gateway land, this generates a reply
# with the tiny-llama3 fixture (random weights: the text is gibberish by design).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release -q -p safegate-gateway
exec target/release/safegate generate --model tests/fixtures/tiny-llama3 --max-tokens 32 \
  --prompt "${1:-What is the capital of France?}"
