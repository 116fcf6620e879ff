#!/usr/bin/env bash
# What sharing the limits on Redis costs per request: the same gateway and fake upstream
# (latency 0), a key without limits, with local limits, and with the limits on a local
# redis-server ([redis]), one request rate and token budget that never refuse.
#
#   scripts/bench/ratelimit.sh [CONNECTIONS=1] [SECONDS=10]
#
# Needs wrk and redis-server (apt-get install wrk redis-server).
set -euo pipefail
cd "$(dirname "$0")/../.."
CONN=${1:-1}; SECS=${2:-10}
cargo build --release -q -p safegate-gateway --bin safegate --example fake_upstream
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
. scripts/bench/lib.sh

UP=$(free_port); RP=$(free_port)
target/release/examples/fake_upstream "127.0.0.1:$UP" 0 &
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
mkdir -p "$work/p"; printf 'name: default\nshield: { enabled: false }\n' > "$work/p/default.yaml"
KEY=sk-bench; HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
model=$(printf '[[models]]\nname = "fake"\nupstream = "http://127.0.0.1:%s/v1"\n' "$UP")
printf '%s\n\n[[keys]]\nid = "bench"\nsha256 = "%s"\n' "$model" "$HASH" > "$work/none.toml"
limits='requests_per_minute = 4000000000\ntokens_per_minute = 4000000000000\ntokens_per_day = 4000000000000\n'
printf "%s\n\n[[keys]]\nid = \"bench\"\nsha256 = \"%s\"\n$limits" "$model" "$HASH" > "$work/local.toml"
printf "[redis]\nurl = \"redis://127.0.0.1:%s\"\n\n%s\n\n[[keys]]\nid = \"bench\"\nsha256 = \"%s\"\n$limits" \
  "$RP" "$model" "$HASH" > "$work/redis.toml"
G1=$(free_port); G2=$(free_port); G3=$(free_port)
for pair in "none:$G1" "local:$G2" "redis:$G3"; do
  target/release/safegate serve --config "$work/${pair%%:*}.toml" --listen "127.0.0.1:${pair##*:}" \
    --policies "$work/p" --audit-log off 2>/dev/null &
done
for g in $G1 $G2 $G3; do wait_up "http://127.0.0.1:$g/healthz"; done

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
wrk.body = '{"model": "fake", "stream": false, "messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 16}'
LUA
echo "wrk -c${CONN} -d${SECS}s, fake upstream latency 0, shield off, audit off"
echo
echo "| limits | requests/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
wrk_row "key without limits" "http://127.0.0.1:$G1/v1/chat/completions" "$work/post.lua"
wrk_row "local bucket and budgets" "http://127.0.0.1:$G2/v1/chat/completions" "$work/post.lua"
wrk_row "shared on Redis (loopback)" "http://127.0.0.1:$G3/v1/chat/completions" "$work/post.lua"
echo
curl -s "http://127.0.0.1:$G3/metrics" | grep -E '^safegate_ratelimit_(redis_seconds_(sum|count)|redis_errors_total|local_fallbacks_total)'
