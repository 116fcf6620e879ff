#!/usr/bin/env bash
# What the prompt-attack stage adds to a request's input checks: the embedded guard's
# /v1/guard/classify (agent_type user) on everyday prompts, sequentially, with the stage on
# and off (the same server binary and guard, one after the other), and the stage's own
# time from safegate_stage_duration_seconds.
#
#   scripts/bench/prompt_attack.sh [REQUESTS=40]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-40}
cargo build --release -q -p safegate-gateway --bin safegate
scripts/guard/install_default.sh >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/on" "$work/off"
printf 'name: default\n' > "$work/on/default.yaml"
printf 'name: default\nprompt_attack: { enabled: false }\n' > "$work/off/default.yaml"
for mode in off on; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  target/release/safegate serve --listen "127.0.0.1:$port" --guard-model models/safegate-guard \
    --policies "$work/$mode" --audit-log off 2>/dev/null &
  pid=$!
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  python3 - "$port" "$N" "$mode" <<'PY'
import json, statistics, sys, time, urllib.request
port, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
prompts = ["Write a short thank-you note to my neighbour for watering the plants.",
           "What are three tips for a first marathon?", "Explain how a bicycle gear works.",
           "Plan a vegetarian dinner for four people.", "How do I convert Celsius to Fahrenheit?"]
def call(text):
    body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/guard/classify", body, {"content-type": "application/json"})
    t = time.perf_counter(); urllib.request.urlopen(req).read(); return (time.perf_counter() - t) * 1e3
for p in prompts: call(p)  # warm-up
ms = sorted(call(prompts[i % len(prompts)]) for i in range(n))
metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
stage = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines()
         if l.startswith('safegate_stage_duration_seconds_') and 'stage="prompt_attack"' in l and ('_sum' in l or '_count' in l)}
s = sum(v for k, v in stage.items() if '_sum' in k); c = sum(v for k, v in stage.items() if '_count' in k)
print(f"| prompt_attack {mode} | {n} | {statistics.median(ms):.1f} ms | {ms[int(0.95 * (n - 1))]:.1f} ms | "
      + (f"{s / c * 1e3:.1f} ms ({int(c)} runs) |" if c else "- |"))
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
