#!/usr/bin/env bash
# Builds the embedded default guard folder models/safegate-guard: the encoder (SmolLM2-135M's
# weights from the GGUF that scripts/setup.sh fetched, imported with the layers the head
# reads) and the committed head guard/default/guard_head.json. Idempotent; rebuilt when the
# head changes or an older importer made the encoder (its graph revision in config.json is
# not this one's); written beside the target and renamed into place.
# Needs target/release/safegate (cargo build --release -p safegate-gateway) or SAFEGATE_BIN.
set -euo pipefail
cd "$(dirname "$0")/../.."
HEAD=guard/default/guard_head.json
GGUF=.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${1:-models/safegate-guard}
if cmp -s "$HEAD" "$OUT/guard_head.json" 2>/dev/null && [ -f "$OUT/model.onnx" ] \
  && grep -Eq '"graph_version": 2(,|$)' "$OUT/config.json" 2>/dev/null; then
  exit 0
fi
LAYERS=$(python3 -c 'import json, sys; print(",".join(l.rsplit(".", 1)[1] for l in json.load(open(sys.argv[1]))["layers"]))' "$HEAD")
rm -rf "$OUT.partial"
"${SAFEGATE_BIN:-target/release/safegate}" models import-gguf "$GGUF" "$OUT.partial" --encoder-layers "$LAYERS" --max-context 8192
cp "$HEAD" "$OUT.partial/guard_head.json"
rm -rf "$OUT"
mv "$OUT.partial" "$OUT"
