"""Prompt Guard latency: safegate's prompt_attack stage against Python on the same weights.

    cargo build --release -p safegate-gateway --bin safegate
    /tmp/tv/bin/python scripts/prompt_guard/bench.py [--shape 86m|22m] [--runs 20]

(/tmp/tv as in scripts/prompt_guard/make_fixture.py; a developer's tool, never in CI.)

Builds a random-weight model of Prompt Guard's shape (86m: mDeBERTa-v3-base, 251k
vocabulary, as Prompt Guard v1 and Llama Prompt Guard 2 86M; 22m: DeBERTa-v3-xsmall, as
Llama Prompt Guard 2 22M), exports it to ONNX with torch, and times one text at a time:

* safegate: `safegate serve --prompt-guard DIR`, POST /v1/guard/classify with the text as a
  user turn (`tool` for the document); the stage's own time from
  safegate_stage_duration_seconds{stage="prompt_attack"}, and the whole HTTP call;
* transformers: the same weights in torch (eager, no_grad), the model card's way (one
  window per call, the windows of a long text one after the other), and Python onnxruntime
  on the same ONNX file, with the same windows.

The texts use the fixture's small tokenizer (ids below 1,000 of the 251k); what matters
for time is the number of tokens, which the table gives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixture import windows  # noqa: E402  (the windows safegate makes, in one place)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "prompt-guard-v1")
SHAPES = {
    "86m": dict(vocab_size=251000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, pooler_hidden_size=768),
    "22m": dict(vocab_size=128100, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                intermediate_size=1536, pooler_hidden_size=384),
}


def build(shape: str, out: str) -> DebertaV2ForSequenceClassification:
    torch.manual_seed(0)
    config = DebertaV2Config(
        **SHAPES[shape], max_position_embeddings=512, relative_attention=True, position_buckets=256,
        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, max_relative_positions=-1, type_vocab_size=0, layer_norm_eps=1e-7,
        pooler_dropout=0.0, pooler_hidden_act="gelu",
        id2label={0: "BENIGN", 1: "INJECTION", 2: "JAILBREAK"},
        label2id={"BENIGN": 0, "INJECTION": 1, "JAILBREAK": 2}, pad_token_id=0)
    model = DebertaV2ForSequenceClassification(config).eval()
    x = torch.tensor([[1, 100, 200, 2], [1, 300, 2, 0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    batch, seq = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length", max=512)
    torch.onnx.export(model, (x, m), os.path.join(out, "model.onnx"), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                               "attention_mask": {0: batch, 1: seq}},
                      opset_version=18, external_data=False, dynamo=True)
    config.save_pretrained(out)
    shutil.copy(os.path.join(FIXTURE, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    return model


def texts(tokenizer: Tokenizer):
    words = open(os.path.join(ROOT, "docs", "guard.md"), encoding="utf-8").read().split()
    out = []
    count = lambda n: len(tokenizer.encode(" ".join(words[:n]), add_special_tokens=False).ids)
    for target in [32, 128, 510, 2000]:
        n = 1
        while count(n + 1) <= target:  # the longest text of at most `target` tokens
            n += 1
        out.append(" ".join(words[:n]))
    return out


def serve(model_dir: str, policies: str):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([os.path.join(ROOT, "target", "release", "safegate"), "serve", "--listen",
                             f"127.0.0.1:{port}", "--prompt-guard", model_dir, "--policies", policies,
                             "--audit-log", "off", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("safegate did not start")


def stage_seconds(port: int):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    get = lambda suffix: sum(float(l.split()[-1]) for l in text.splitlines()
                             if l.startswith(f"safegate_stage_duration_seconds_{suffix}") and 'stage="prompt_attack"' in l)
    return get("sum"), get("count")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="86m")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = Tokenizer.from_file(os.path.join(FIXTURE, "tokenizer.json"))
    tokenizer.no_truncation()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "pg")
        os.makedirs(model_dir)
        model = build(args.shape, model_dir)
        policies = os.path.join(tmp, "policies")
        os.makedirs(policies)
        with open(os.path.join(policies, "default.yaml"), "w") as f:
            f.write("name: default\ninput: { enabled: false }\noutput: { enabled: false }\n"
                    "prompt_attack: { judge: [user, tool] }\n")
        session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), providers=["CPUExecutionProvider"])
        proc, port = serve(model_dir, policies)
        rows = []
        try:
            for i, text in enumerate(texts(tokenizer)):
                ids = tokenizer.encode(text, add_special_tokens=False).ids
                wins = [[cls] + w + [sep] for w in windows(ids)]
                # A long text is a document a tool fetched (an indirect turn).
                turn = ({"role": "tool", "tool_call_id": "c1", "content": text} if len(wins) > 1
                        else {"role": "user", "content": text})
                body = json.dumps({"messages": [turn], "agent_type": "user"}).encode()

                def call():
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/guard/classify", body,
                                                 {"content-type": "application/json"})
                    t = time.perf_counter()
                    try:
                        urllib.request.urlopen(req).read()
                    except urllib.error.HTTPError as e:
                        sys.exit(f"safegate answered {e.code}: {e.read().decode()}")
                    return time.perf_counter() - t

                def torch_call():
                    t = time.perf_counter()
                    with torch.no_grad():
                        for w in wins:
                            x = torch.tensor([w])
                            torch.softmax(model(input_ids=x, attention_mask=torch.ones_like(x)).logits, -1)
                    return time.perf_counter() - t

                def ort_call():
                    t = time.perf_counter()
                    for w in wins:
                        x = np.array([w], dtype=np.int64)
                        session.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x)})
                    return time.perf_counter() - t

                for f in (call, torch_call, ort_call):
                    f()  # warm-up
                s0, c0 = stage_seconds(port)
                http = sorted(call() for _ in range(args.runs))
                s1, c1 = stage_seconds(port)
                ref = sorted(torch_call() for _ in range(args.runs))
                rt = sorted(ort_call() for _ in range(args.runs))
                stage = (s1 - s0) / max(c1 - c0, 1)
                rows.append((len(ids), len(wins), stage * 1e3, statistics.median(http) * 1e3,
                             statistics.median(ref) * 1e3, statistics.median(rt) * 1e3))
        finally:
            proc.kill()
            proc.wait()
    print(f"shape {args.shape}, {os.cpu_count()} cores, torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{args.runs} runs each (medians; the stage time is the mean)")
    print("| text tokens | windows | safegate stage | safegate HTTP call | transformers (torch) | onnxruntime (Python) | transformers / stage |")
    print("|---|---|---|---|---|---|---|")
    for n, w, st, ht, tr, rt in rows:
        print(f"| {n} | {w} | {st:.1f} ms | {ht:.1f} ms | {tr:.1f} ms | {rt:.1f} ms | {tr / st:.2f}x |")


if __name__ == "__main__":
    main()
