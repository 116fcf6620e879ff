#!/usr/bin/env bash
# The engine on a GPU machine with the CUDA execution provider, in one command that fits a
# 10-minute device call: a Llama-3-8B-shaped model built here, the device's copy bandwidth
# and the decode bound it implies, safegate's decode and prefill, the guard's scoring path
# with 1/4/8/16 callers, Hugging Face transformers (eager attention) on the same shape, then
# the small fixtures. Prints one table last; full logs go to $OUT (or ./bench-out): eight
# files at most, as a lent device machine sends back.
#
# Expects: ONNX Runtime with the CUDA provider in $ORT_DIR (default: .ort/lib when
# `scripts/setup.sh --gpu` put it there, else /tmp/ort as a lent device machine has it):
# libonnxruntime.so.1.31.1, libonnxruntime_providers_shared.so and
# libonnxruntime_providers_cuda.so from the onnxruntime-gpu 1.31.1 wheel; the CUDA 13
# libraries in $CUDA_LIB (default /usr/local/cuda-13.0/targets/x86_64-linux/lib); a
# `safegate` built with `--features cuda` at $BIN (default ./safegate, else
# target/release/safegate) and the guard bench (`cargo build --release --features
# safegate-engine/cuda -p safegate-guard --examples`) at $GB (default ./guard-bench, else
# target/release/examples/bench); python3 with numpy and onnx (the model builders), torch
# (bandwidth) and transformers (the comparison); a Llama 3 tokenizer.json at $TOKJSON.
#
# The large model: random float16 weights written as GGUF by scripts/gpu/random_gguf.py
# ($SHAPE, default llama3-8b) and imported with `safegate models import-gguf --weights f16
# --compute f16`, the project's own ONNX writer, in the genai layout (one fused
# GroupQueryAttention per layer) and, when time is left, the Optimum layout (plain
# operators). Needs about 50 GB of disk under $WORK and 20 GB of GPU memory.
#
# Stages run in order of importance; one that fails is logged and the rest go on; optional
# ones start only while $BUDGET_S seconds (default 540) have not passed, so the table comes
# back inside the call; SKIP names stages to leave out. DEVICE=cpu SHAPE=tiny runs the whole
# script on a machine without a GPU (a dry run of every stage).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench-out}
WORK=${WORK:-bench-out}
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-llama3-8b}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT" "$WORK"
if [ -z "${ORT_DIR:-}" ]; then
  ORT_DIR=/tmp/ort
  [ -f .ort/lib/libonnxruntime_providers_cuda.so ] && ORT_DIR=.ort/lib
fi
CUDA_LIB=${CUDA_LIB:-/usr/local/cuda-13.0/targets/x86_64-linux/lib}
export LD_LIBRARY_PATH=$ORT_DIR:$CUDA_LIB:${LD_LIBRARY_PATH:-}
# Where the system has no CUDA 13 libraries there, the NVIDIA wheels beside torch may.
if [ "${DEVICE:-cuda}" != cpu ] && [ ! -f "$CUDA_LIB/libcublasLt.so.13" ]; then
  NV=$(${PYTHON:-python3} -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
  [ -n "$NV" ] && for d in $(find "$NV" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u); do
    LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
  done
fi
[ -f "$ORT_DIR/libonnxruntime.so.1.31.1" ] && export ORT_DYLIB_PATH=$ORT_DIR/libonnxruntime.so.1.31.1
BIN=${BIN:-./safegate}; [ -x "$BIN" ] || BIN=target/release/safegate
GB=${GB:-./guard-bench}; [ -x "$GB" ] || GB=target/release/examples/bench
TOKJSON=${TOKJSON:-.cache/llama3-tokenizer/tokenizer.json}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( BUDGET_S - $(elapsed) )); }
stage() { echo "[$(elapsed) s] $*" | tee -a "$OUT/timeline.txt" >&2; }
# SKIP (space-separated: hf guard alllogits nobinding growingkv optimum small) leaves optional
# stages out.
want() { case " ${SKIP:-} " in *" $1 "*) stage "skipped (SKIP): $1"; return 1 ;; esac; }
# Runs an optional stage only when `need` seconds are left; never past the budget.
optional() {
  local need=$1; shift
  if [ "$(left)" -lt "$need" ]; then
    stage "skipped (under $need s left): $*"
    return 1
  fi
}
# `bench MODEL TAG IO_BINDING [FLAG...]`: decode 256 tokens after 128, prefill 500; one JSON
# line.
bench() {
  timeout "$(left)" "$BIN" --log info bench --model "$1" --device "$DEVICE" --io-binding "$3" "${@:4}" \
    --prompt-tokens 128 --new-tokens 256 --prefill-tokens 500 --runs 3 --json \
    2>>"$OUT/safegate.log" | sed "s/^{/{\"tag\":\"$2\",/" | tee -a "$OUT/results.jsonl"
}

stage "start: device $DEVICE, shape $SHAPE, budget $BUDGET_S s"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  nproc; free -g | head -2; df -h "$WORK" /tmp 2>/dev/null
  [ -f "$ORT_DIR/libonnxruntime_providers_cuda.so" ] && ldd "$ORT_DIR/libonnxruntime_providers_cuda.so" | grep "not found"
} 2>&1 | tee -a "$OUT/timeline.txt" >&2

# ---- The device's copy bandwidth (read + write) ----------------------------------------
stage "bandwidth"
"$PY" - "$DEVICE" <<'PY' >"$OUT/bandwidth.json" 2>>"$OUT/python.log" || stage "bandwidth failed"
import json, sys, time
import torch
dev = sys.argv[1] if sys.argv[1] == "cpu" else "cuda"
n = 1 << (30 if dev == "cuda" else 26)
a = torch.empty(n, dtype=torch.uint8, device=dev); b = torch.empty_like(a)
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
for _ in range(3): b.copy_(a)
sync(); t = time.perf_counter()
for _ in range(20): b.copy_(a)
sync(); dt = (time.perf_counter() - t) / 20
print(json.dumps({"copy_bandwidth_gb_s": 2 * n / dt / 1e9}))
PY

# ---- The large model, genai layout ------------------------------------------------------
M=$WORK/$SHAPE
GGUF=$WORK/$SHAPE.gguf
stage "build $SHAPE (random GGUF, import genai)"
if [ ! -f "$M-genai/model.onnx" ]; then
  rm -rf "$M-genai"
  "$PY" scripts/gpu/random_gguf.py "$GGUF" --shape "$SHAPE" --tokenizer "$TOKJSON" 2>>"$OUT/build.log" \
    && "$BIN" models import-gguf "$GGUF" "$M-genai" --weights f16 --compute f16 --layout genai 2>>"$OUT/build.log" \
    || stage "build failed (see build.log)"
fi
stage "built"
if [ -f "$M-genai/model.onnx" ]; then
  stage "safegate $SHAPE genai, I/O binding on"
  bench "$M-genai" genai on || {
    stage "genai with I/O binding failed; without it"
    bench "$M-genai" genai off || stage "genai failed"
  }
fi

# ---- Hugging Face transformers, eager attention, float16, same shape, random init -------
want hf && optional 120 "transformers" && {
  stage "transformers eager"
  timeout "$(left)" "$PY" - "$SHAPE" "$DEVICE" <<'PY' >"$OUT/hf.json" 2>>"$OUT/python.log" || stage "transformers failed"
import json, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
shape, device = sys.argv[1], ("cuda" if sys.argv[2] != "cpu" else "cpu")
dims = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8),
    "llama3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}[shape]
cfg = LlamaConfig(vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                  attn_implementation="eager", **dims)
try:
    cfg._attn_implementation = "eager"
except Exception as e:
    print(f"attention implementation not set ({e})", file=sys.stderr)
dtype = torch.float16 if device == "cuda" else torch.float32
torch.set_default_dtype(dtype)
with torch.device(device):
    model = LlamaForCausalLM(cfg).eval()
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
ids = torch.randint(0, 128000, (1, 128), device=device)
new = 256

def decode():
    try:
        return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False), "generate"
    except Exception as e:  # a transformers whose generate() refuses these arguments
        print(f"generate failed ({e}); a greedy loop instead", file=sys.stderr)
        out = model(ids, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(new - 1):
            out = model(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return tok, "loop"

with torch.no_grad():
    model(ids[:, :8])
    sync(); t = time.perf_counter()
    _, how = decode()
    sync(); total = time.perf_counter() - t
    long = torch.randint(0, 128000, (1, 500), device=device)
    model(long); sync(); t = time.perf_counter()
    model(long)
    sync(); prefill = time.perf_counter() - t
print(json.dumps({"hf_tokens_s": new / total, "hf_prefill_500_ms": prefill * 1e3, "how": how,
                  "attention": getattr(model.config, "_attn_implementation", "?"),
                  "transformers": __import__("transformers").__version__, "torch": torch.__version__}))
PY
}

# ---- The guard's scoring path on the large model ----------------------------------------
[ -f "$M-genai/model.onnx" ] && want guard && optional 90 "guard scoring" && {
  stage "guard scoring, callers 1/4/8/16, score batch 8"
  timeout "$(left)" "$GB" "$M-genai" 5 1,4,8,16 "$DEVICE" 8 2>>"$OUT/safegate.log" | tee "$OUT/guard.md" \
    || stage "guard scoring failed"
}

# ---- Logits for every position (--all-logits), as before logits_positions --------------
[ -f "$GGUF" ] && want alllogits && optional 150 "every position's logits" && {
  stage "import genai with --all-logits; decode, prefill and guard scoring"
  rm -rf "$M-genai-all"
  timeout "$(left)" "$BIN" models import-gguf "$GGUF" "$M-genai-all" --weights f16 --compute f16 \
    --layout genai --all-logits 2>>"$OUT/build.log" && bench "$M-genai-all" genai-all-logits on \
    && timeout "$(left)" "$GB" "$M-genai-all" 5 1,4 "$DEVICE" 8 2>>"$OUT/safegate.log" \
      | sed 's/^| 8 |/| 8, all logits |/' | tee -a "$OUT/guard.md" || stage "every position's logits failed"
}

# ---- The KV cache through the host (no I/O binding): what binding saves ----------------
[ -f "$M-genai/model.onnx" ] && [ "$DEVICE" != cpu ] && want nobinding \
  && optional 100 "genai without I/O binding" && {
  stage "safegate $SHAPE genai, I/O binding off"
  bench "$M-genai" genai off || stage "genai without binding failed"
}

# ---- Bound, but a new present tensor per step instead of one shared buffer per layer ------
[ -f "$M-genai/model.onnx" ] && want growingkv && optional 100 "genai with growing KV tensors" && {
  stage "safegate $SHAPE genai, I/O binding on, growing KV tensors"
  bench "$M-genai" genai on --growing-kv || stage "genai with growing KV tensors failed"
}

# ---- The large model, Optimum layout (plain operators) ----------------------------------
free_gb() { df --output=avail -B1G "$WORK" 2>/dev/null | tail -1 | tr -d ' '; }
[ -f "$GGUF" ] && [ "$(free_gb || echo 0)" -gt $(( $(du -s -BG "$GGUF" | cut -f1 | tr -d G) + 4 )) ] \
  && want optimum && optional 200 "Optimum layout" && {
  stage "import Optimum layout"
  rm -rf "$M-optimum"
  timeout "$(left)" "$BIN" models import-gguf "$GGUF" "$M-optimum" --weights f16 --compute f16 --layout optimum \
    2>>"$OUT/build.log" && bench "$M-optimum" optimum on || stage "Optimum layout failed"
}

# ---- The small fixtures: CUDA with and without binding, and the CPU ---------------------
want small && optional 90 "small models" && {
  stage "small models"
  # The fixtures' tokenizer is installed by scripts/setup.sh, which a lent machine skips.
  for t in tests/fixtures/tiny-llama3/tokenizer.json .cache/llama3-tokenizer/tokenizer.json; do
    [ -f "$t" ] || { mkdir -p "$(dirname "$t")" && cp "$TOKJSON" "$t"; }
  done
  "$PY" - "$WORK" <<'PY' >>"$OUT/build.log" 2>&1 || stage "llama-100m build failed"
import os, sys; sys.path.insert(0, "scripts/fixtures"); sys.path.insert(0, "scripts/bench")
import engine_bench
if not os.path.exists(os.path.join(sys.argv[1], "llama-100m", "model.onnx")):
    engine_bench.build_100m(os.path.join(sys.argv[1], "llama-100m"))
PY
  for model in tests/fixtures/tiny-llama3 "$WORK/llama-100m"; do
    for run in "$DEVICE on" "$DEVICE off" "cpu off"; do
      set -- $run
      [ "$(left)" -gt 20 ] || break
      [ -f "$model/model.onnx" ] || continue
      timeout "$(left)" "$BIN" --log info bench --model "$model" --device "$1" --io-binding "$2" \
        --prompt-tokens 128 --new-tokens 64 --runs 5 --json 2>>"$OUT/safegate.log" \
        | sed "s/^{/{\"tag\":\"small\",/" | tee -a "$OUT/results.jsonl"
    done
  done
}
stage "done"

# ---- One table ----------------------------------------------------------------------------
"$PY" - "$OUT" "$M-genai" "$SHAPE" <<'PY'
import json, os, sys
out, model, shape = sys.argv[1:4]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return {}
rows = []
try:
    rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
except OSError:
    pass
bw, hf = load("bandwidth.json"), load("hf.json")
weights = 0
if os.path.isdir(model):
    weights = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model) if f.startswith("model.onnx"))
bound = bw.get("copy_bandwidth_gb_s", 0) * 1e9 / weights if weights else 0
print()
print(f"| {shape}, float16, batch 1 | value |")
print("|---|---|")
if bw:
    print(f"| copy bandwidth (read + write) | {bw['copy_bandwidth_gb_s']:.0f} GB/s |")
if bound:
    print(f"| decode bound (bandwidth / {weights / 1e9:.1f} GB of weights) | {bound:.0f} tokens/s |")
for r in rows:
    if r.get("tag") == "small":
        continue
    tps = r["tokens_per_second"]
    share = f", {100 * tps / bound:.0f}% of the bound" if bound else ""
    vs = f", {tps / hf['hf_tokens_s']:.1f}x transformers" if hf else ""
    binding = "no I/O binding"
    if r.get("io_binding"):
        binding = "I/O binding, " + ("shared KV buffers" if r.get("kv_shared") else "growing KV tensors")
    print(f"| safegate decode, {r['tag']} layout, {binding}, 128 + 256 tokens | {tps:.1f} tokens/s{share}{vs} |")
    print(f"| safegate prefill 500 tokens (time to first token), {r['tag']}, {binding} | {r['prefill_ms']:.1f} ms |")
if hf:
    print(f"| transformers {hf.get('transformers', '')} eager decode ({hf.get('how')}) | {hf['hf_tokens_s']:.1f} tokens/s |")
    print(f"| transformers eager prefill, 500 tokens | {hf['hf_prefill_500_ms']:.1f} ms |")
small = [r for r in rows if r.get("tag") == "small"]
if small:
    print()
    print("| model | device | I/O binding | first token ms | ms/token | tokens/s |")
    print("|---|---|---|---|---|---|")
    for r in small:
        print(f"| {r['model']} | {r['provider']} | {r.get('io_binding', False)} | {r['time_to_first_token_ms']:.2f} | {r['per_token_ms']:.3f} | {r['tokens_per_second']:.0f} |")
PY
if [ -f "$OUT/guard.md" ]; then
  echo
  cat "$OUT/guard.md"
fi
cat "$OUT/timeline.txt"
