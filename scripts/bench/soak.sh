#!/usr/bin/env bash
# Soak: sustained concurrent chat load on the fixture models with the guard and the shield
# on (tiny-llama3 as chat and guard model), then a burst past the queue's capacity.
# Prints, per phase: requests/s, p50/p99, non-2xx, socket errors/timeouts, and the
# gateway's resident memory sampled every 10 s (growth = leak).
#
#   scripts/bench/soak.sh [MINUTES=10] [CONNECTIONS=8]
set -euo pipefail
cd "$(dirname "$0")/../.."
MIN=${1:-10}; CONN=${2:-8}
cargo build --release -q -p safegate-gateway --bin safegate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/policies"
# Thresholds of 1.0: the random fixture guard runs on every request and window but never
# blocks, so every request does the full work.
cat > "$work/policies/default.yaml" <<'YAML'
name: default
input: { threshold: 1.0 }
output: { threshold: 1.0 }
streaming: { rescore_every_tokens: 8, hold_back_tokens: 4 }
YAML
target/release/safegate serve --listen "127.0.0.1:$PORT" --model tests/fixtures/tiny-llama3 \
  --guard-model tests/fixtures/tiny-llama3 --policies "$work/policies" --queue 16 \
  --audit-log "$work/audit.jsonl" --threads 1 2>/dev/null &
PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
cat > "$work/chat.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"messages": [{"role": "user", "content": "Write a short story about a robot."}], "max_tokens": 32, "stream": true}'
LUA
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
summary() {
  awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} /Non-2xx/ {n=$5} /Socket errors/ {s=$0}
       END {printf "requests/s %s, p50 %s, p99 %s, non-2xx %s, %s\n", r, p50, p99, (n==""?0:n), (s==""?"no socket errors":s)}'
}
echo "soak: ${MIN} min, ${CONN} connections, guard (every 8 tokens) + shield + fsynced audit"
( while kill -0 $PID 2>/dev/null; do echo "$(date +%s) $(rss)"; sleep 10; done ) > "$work/rss.log" &
wrk -t2 -c"$CONN" -d"${MIN}m" --timeout 30s --latency -s "$work/chat.lua" "http://127.0.0.1:$PORT/v1/chat/completions" > "$work/soak.txt"
summary < "$work/soak.txt"
awk 'NR==1 {first=$2} {last=$2; if ($2>max) max=$2; trend = trend sprintf(" %d", $2/1024)} END {printf "RSS: start %d MB, end %d MB, max %d MB (%d samples, MB:%s)\n", first/1024, last/1024, max/1024, NR, trend}' "$work/rss.log"
echo "past saturation: 64 connections, queue 16, 30 s"
wrk -t2 -c64 -d30s --timeout 30s --latency -s "$work/chat.lua" "http://127.0.0.1:$PORT/v1/chat/completions" > "$work/burst.txt"
summary < "$work/burst.txt"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^safegate_requests_total\{endpoint="chat_completions"' || true
echo "audit lines: $(wc -l < "$work/audit.jsonl")"
