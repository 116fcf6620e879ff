#!/usr/bin/env bash
# Mutation testing of the pure crates with cargo-mutants (not part of CI: on 2 cores the
# policies crate alone takes about 10 minutes). Prints each crate's caught / missed /
# unviable / timeout counts; the missed mutants are listed in OUT/<crate>/mutants.out/missed.txt.
#   scripts/mutants.sh [CRATES...]     (default: api policies sse)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install cargo-mutants --version 27.1.0 --locked >&2
OUT=${OUT:-target/mutants}
mkdir -p "$OUT"
crates=("$@"); [ ${#crates[@]} -gt 0 ] || crates=(api policies sse)
for c in "${crates[@]}"; do
  mkdir -p "$OUT/$c"
  cargo mutants -p "safegate-$c" --timeout 300 --output "$OUT/$c" >"$OUT/$c.log" 2>&1 || true
  dir="$OUT/$c/mutants.out"
  count() { [ -f "$dir/$1.txt" ] && wc -l < "$dir/$1.txt" || echo 0; }
  caught=$(count caught); missed=$(count missed); unviable=$(count unviable); timeout=$(count timeout)
  viable=$((caught + missed + timeout))
  echo "safegate-$c: $caught caught, $missed missed, $timeout timeout, $unviable unviable ($((100 * caught / (viable > 0 ? viable : 1)))% of viable caught)"
done
