# Helpers the load benchmarks share (sourced from the repository root).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until URL answers (10 s at most).
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; exit 1; }

# One Markdown row from a wrk run: wrk_row LABEL URL LUA_SCRIPT (uses $CONN and $SECS).
wrk_row() {
  local out; out=$(wrk -t"$(( CONN < 2 ? 1 : 2 ))" -c"$CONN" -d"${SECS}s" --latency -s "$3" "$2")
  local rps p50 p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx/ {print $5}' <<<"$out"); errs=${errs:-0}
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99" "$errs"
}
