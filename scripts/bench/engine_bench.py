"""Engine benchmark: safegate's engine against a plain Python onnxruntime loop, same model,
same machine, same run.

    python3 scripts/bench/engine_bench.py [--threads 2] [--runs 5]

Models: the committed tiny-llama3 fixture, and a ~91M-parameter Llama-3-shaped model with
random weights (vocab 128,256, hidden 512, 8 layers, GQA 8/4 heads) built here into
bench-out/ on first use (needs onnx + numpy + onnxruntime==1.32.0; no torch).

Python side: greedy decoding with the KV cache fed back output -> input; "per token" is the
median over runs of the mean `session.run` time of the decode steps alone (numpy argmax and
feed building excluded), "first token" is the prefill `session.run`. safegate side:
`safegate bench --json`, which times the whole engine (queue, worker, KV cache, sampling,
detokenization) from submission.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts", "fixtures"))

import llama_onnx  # noqa: E402
import reference  # noqa: E402
from make_fixtures import LLAMA3_TEMPLATE, write_tokenizer_config  # noqa: E402


def synthetic_prompt(n: int, vocab: int) -> list[int]:
    """Same ids as `synthetic_prompt` in gateway/src/cmd_bench.rs."""
    span = min(vocab, 100_000) - 1000
    return [1000 + (i * 7919 + 13) % span for i in range(n)]


def build_100m(out: str):
    if os.path.exists(os.path.join(out, "model.onnx")):
        return
    cfg = llama_onnx.LlamaConfig(vocab_size=128256, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                                 intermediate_size=1536, max_position_embeddings=2048, rope_theta=500000.0,
                                 bos_token_id=128000, eos_token_id=[128001, 128009], init_scale=1.0)
    llama_onnx.build(cfg, "optimum", out, seed=1, external_data=True)
    write_tokenizer_config(out, LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>")
    shutil.copy(os.path.join(ROOT, ".cache", "llama3-tokenizer", "tokenizer.json"), out)


def python_loop(model_dir: str, prompt: list[int], new_tokens: int, runs: int, threads: int):
    sess = reference.open_session(os.path.join(model_dir, "model.onnx"), threads)
    ttft, per_token = [], []
    for run in range(runs + 1):
        _, _, steps = reference.greedy(sess, prompt, new_tokens, eos_ids=set())
        if run > 0:
            ttft.append(steps[0] * 1e3)
            per_token.append(statistics.mean(steps[1:]) * 1e3)
    return statistics.median(ttft), statistics.median(per_token)


def safegate(model_dir: str, prompt_tokens: int, new_tokens: int, runs: int, threads: int, io_binding="off"):
    exe = os.path.join(ROOT, "target", "release", "safegate")
    out = subprocess.run([exe, "bench", "--model", model_dir, "--device", "cpu", "--threads", str(threads),
                          "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens),
                          "--runs", str(runs), "--io-binding", io_binding, "--json"],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    return r["time_to_first_token_ms"], r["per_token_ms"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "safegate-gateway"], cwd=ROOT, check=True)
    big = os.path.join(ROOT, "bench-out", "llama-100m")
    build_100m(big)
    models = [("tiny-llama3 (fixture)", os.path.join(ROOT, "tests", "fixtures", "tiny-llama3")),
              ("llama-100m (random, 91M params)", big)]
    print(f"threads={args.threads} prompt={args.prompt_tokens} new={args.new_tokens} runs={args.runs}")
    print("| model | python first token ms | safegate first token ms | python ms/token | "
          "safegate ms/token | safegate / python per token | safegate, I/O binding, ms/token | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for label, path in models:
        vocab = 128256
        prompt = synthetic_prompt(args.prompt_tokens, vocab)
        # Alternate the two sides so drift on the machine hits both alike.
        py = python_loop(path, prompt, args.new_tokens, args.runs, args.threads)
        sg = safegate(path, args.prompt_tokens, args.new_tokens, args.runs, args.threads)
        # The path CUDA sessions take (ONNX Runtime I/O binding), here on the CPU provider.
        sb = safegate(path, args.prompt_tokens, args.new_tokens, args.runs, args.threads, "on")
        print(f"| {label} | {py[0]:.2f} | {sg[0]:.2f} | {py[1]:.3f} | {sg[1]:.3f} | {sg[1] / py[1]:.3f} "
              f"| {sb[1]:.3f} | {sb[1] / py[1]:.3f} |")


if __name__ == "__main__":
    main()
