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
cargo test --workspace --release "$@"
