#!/usr/bin/env bash
# The whole test suite: set-up (idempotent), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# A real Prometheus (and promtool) for the scrape and alert-rule tests: Debian's package.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y --no-install-recommends prometheus >&2 \
    || { $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends prometheus >&2; }
fi
# A real Redis for the multi-replica tests (shared limits): Debian's package.
if ! command -v redis-server >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y --no-install-recommends redis-server >&2 \
    || { $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends redis-server >&2; }
fi
cargo test --workspace --release "$@"
# Head training is behind the `train` feature (serving does not compile it): its own tests,
# and the CLI built with it.
cargo test --release -p safegate-guard --features train --lib "$@"
cargo build --release -q -p safegate-gateway --features train
