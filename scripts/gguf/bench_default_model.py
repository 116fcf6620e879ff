"""The embedded default chat model (SmolLM2-135M-Instruct) on this machine: import time, time
to first token and decode speed, safegate's import (f32, int4) next to onnxruntime-genai's
builder output (fp32, int4) of the same weights, same machine, same run.

    python3 scripts/gguf/bench_default_model.py [--threads 2] [--runs 5] \
        [--genai-fp32 DIR --genai-int4 DIR]

The genai folders come from `python -m onnxruntime_genai.models.builder -m HF_DIR -o DIR
-p fp32|int4 -e cpu` on the same weights (HF_DIR written by transformers from the GGUF; that
needs torch, so it is a one-time step, not part of this script). Each genai model is timed
twice: in safegate's engine (it loads the genai layout) and in onnxruntime-genai's own
generator loop, when the `onnxruntime_genai` module is importable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SAFEGATE = os.path.join(ROOT, "target", "release", "safegate")
GGUF = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "bench-out", "smollm2")


def synthetic_prompt(n: int, vocab: int) -> list[int]:
    """Same ids as `synthetic_prompt` in gateway/src/cmd_bench.rs."""
    span = min(vocab, 100_000) - 1000
    return [1000 + (i * 7919 + 13) % span for i in range(n)]


def import_model(weights: str) -> tuple[str, float]:
    out = os.path.join(OUT, weights)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([SAFEGATE, "models", "import-gguf", GGUF, out, "--weights", weights],
                   check=True, stderr=subprocess.DEVNULL)
    return out, time.perf_counter() - t0


def safegate_bench(model: str, args) -> dict:
    out = subprocess.run([SAFEGATE, "bench", "--model", model, "--device", "cpu", "--threads", str(args.threads),
                          "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                          "--runs", str(args.runs), "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def genai_bench(model: str, args) -> dict | None:
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    config = og.Config(model)
    config.clear_providers()
    m = og.Model(config)
    vocab = json.load(open(os.path.join(model, "genai_config.json")))["model"]["vocab_size"]
    prompt = synthetic_prompt(args.prompt_tokens, vocab)
    ttft, per_token = [], []
    for run in range(args.runs + 1):
        params = og.GeneratorParams(m)
        total = args.prompt_tokens + args.new_tokens
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = og.Generator(m, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        gen.generate_next_token()
        t1 = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            gen.generate_next_token()
        t2 = time.perf_counter()
        if run:  # the first run warms up
            ttft.append((t1 - t0) * 1e3)
            per_token.append((t2 - t1) * 1e3 / (args.new_tokens - 1))
    return {"time_to_first_token_ms": statistics.median(ttft), "per_token_ms": statistics.median(per_token)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--genai-fp32")
    ap.add_argument("--genai-int4")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    rows = []
    for weights in ["f32", "f16", "int4"]:
        model, secs = import_model(weights)
        size = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model)) / 1e6
        r = safegate_bench(model, args)
        rows.append((f"safegate import, {weights}", f"{secs:.1f} s", f"{size:.0f} MB", "safegate engine",
                     r["time_to_first_token_ms"], r["per_token_ms"]))
    for label, model in [("onnxruntime-genai builder, fp32", args.genai_fp32),
                         ("onnxruntime-genai builder, int4", args.genai_int4)]:
        if not model:
            continue
        size = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model)) / 1e6
        r = safegate_bench(model, args)
        rows.append((label, "-", f"{size:.0f} MB", "safegate engine", r["time_to_first_token_ms"], r["per_token_ms"]))
        g = genai_bench(model, args)
        if g:
            rows.append((label, "-", f"{size:.0f} MB", "onnxruntime-genai", g["time_to_first_token_ms"],
                         g["per_token_ms"]))
    print(f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, {args.threads} threads, "
          f"median of {args.runs} runs\n")
    print("| model | import | size | runtime | time to first token | decode |")
    print("|---|---|---|---|---|---|")
    for label, secs, size, runtime, ttft, per in rows:
        print(f"| {label} | {secs} | {size} | {runtime} | {ttft:.0f} ms | {1e3 / per:.1f} tok/s ({per:.1f} ms) |")


if __name__ == "__main__":
    main()
