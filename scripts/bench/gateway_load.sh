#!/usr/bin/env bash
# The gateway's own overhead under load: the same fake upstream model (fixed latency),
# called directly and through safegate, with wrk; same machine, same run.
#
#   scripts/bench/gateway_load.sh [LATENCY_MS=20] [CONNECTIONS=32] [SECONDS=15]
#
# Rows: direct to the fake upstream; through safegate with the checks off (no guard, shield
# disabled, audit log off); with the shield on; with the shield on and the audit log
# fsynced (group commit); with the checks off to the same fake upstream over HTTPS (a CA made
# for the run with openssl, given as the entry's ca_file). With SAFEGATE_BASELINE=BINARY, one
# more row: that binary (e.g. an earlier build) with the checks off, for a before/after in
# the same run. No guard model: a guard is a model inference per request and is measured
# separately (docs/benchmarks.md, guard latency). Needs wrk (apt-get install wrk), openssl.
set -euo pipefail
cd "$(dirname "$0")/../.."
LAT=${1:-20}; CONN=${2:-32}; SECS=${3:-15}
cargo build --release -q -p safegate-gateway --bin safegate --example fake_upstream
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

. scripts/bench/lib.sh

UP=$(free_port); UPS=$(free_port)
target/release/examples/fake_upstream "127.0.0.1:$UP" "$LAT" &
# A CA and a server certificate for 127.0.0.1, for the HTTPS upstream.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=bench CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 1 -extfile "$work/san.ext" -out "$work/server.pem" 2>/dev/null
target/release/examples/fake_upstream "127.0.0.1:$UPS" "$LAT" "$work/server.pem" "$work/server.key" &
mkdir -p "$work/off" "$work/on"
cat > "$work/off/default.yaml" <<'YAML'
name: default
shield: { enabled: false }
YAML
cat > "$work/on/default.yaml" <<'YAML'
name: default
YAML
printf '[[models]]\nname = "fake"\nupstream = "http://127.0.0.1:%s/v1"\n' "$UP" > "$work/config.toml"
printf '[[models]]\nname = "fake"\nupstream = "https://127.0.0.1:%s/v1"\nca_file = "%s"\n' \
  "$UPS" "$work/ca.pem" > "$work/config-https.toml"

G1=$(free_port); G2=$(free_port); G3=$(free_port); G4=$(free_port); G5=$(free_port)
target/release/safegate serve --config "$work/config.toml" --listen "127.0.0.1:$G1" \
  --policies "$work/off" --audit-log off 2>/dev/null &
target/release/safegate serve --config "$work/config.toml" --listen "127.0.0.1:$G2" \
  --policies "$work/on" --audit-log off 2>/dev/null &
target/release/safegate serve --config "$work/config.toml" --listen "127.0.0.1:$G3" \
  --policies "$work/on" --audit-log "$work/audit.jsonl" 2>/dev/null &
target/release/safegate serve --config "$work/config-https.toml" --listen "127.0.0.1:$G4" \
  --policies "$work/off" --audit-log off 2>/dev/null &
GATEWAYS="$G1 $G2 $G3 $G4"
if [ -n "${SAFEGATE_BASELINE:-}" ]; then
  "$SAFEGATE_BASELINE" serve --config "$work/config.toml" --listen "127.0.0.1:$G5" \
    --policies "$work/off" --audit-log off 2>/dev/null &
  GATEWAYS="$GATEWAYS $G5"
fi
for g in $GATEWAYS; do wait_up "http://127.0.0.1:$g/healthz"; done

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "fake", "stream": true, "messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 16}'
LUA
sed 's/"stream": true/"stream": false/' "$work/post.lua" > "$work/post-whole.lua"

echo "fake upstream latency ${LAT} ms, wrk -t2 -c${CONN} -d${SECS}s"
echo
echo "| path | requests/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
wrk_row "direct to the fake upstream" "http://127.0.0.1:$UP/v1/chat/completions" "$work/post.lua"
wrk_row "safegate, checks off, audit off (client non-stream)" "http://127.0.0.1:$G1/v1/chat/completions" "$work/post-whole.lua"
wrk_row "safegate, checks off, audit off (client stream)" "http://127.0.0.1:$G1/v1/chat/completions" "$work/post.lua"
wrk_row "safegate, checks off, audit off, HTTPS upstream (client non-stream)" "http://127.0.0.1:$G4/v1/chat/completions" "$work/post-whole.lua"
if [ -n "${SAFEGATE_BASELINE:-}" ]; then
  wrk_row "baseline $(basename "$SAFEGATE_BASELINE"), checks off, audit off (client non-stream)" "http://127.0.0.1:$G5/v1/chat/completions" "$work/post-whole.lua"
fi
wrk_row "safegate, shield on, audit off (client non-stream)" "http://127.0.0.1:$G2/v1/chat/completions" "$work/post-whole.lua"
wrk_row "safegate, shield on, audit fsynced per request (client non-stream)" "http://127.0.0.1:$G3/v1/chat/completions" "$work/post-whole.lua"
