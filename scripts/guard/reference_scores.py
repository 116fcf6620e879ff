"""Reference token ids and scores for the guard's parity test (run once; never in CI).

    python3 scripts/guard/reference_scores.py

For a few golden prompts (tests/fixtures/guard-prompts/cases.json) and the tiny-llama3
fixture (real Llama 3 tokenizer, random weights): the ids Hugging Face tokenizers gives
the whole prompt (BOS added for Llama Guard 2, whose template has none), P(unsafe) as the
softmax probability of the `unsafe` token after one prefill, and each category code's
probability after `unsafe\\n` (product over the code's tokens), all with plain Python
onnxruntime. Writes tests/fixtures/guard-prompts/scores.json.
"""

import json
import os

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
tok = Tokenizer.from_file(os.path.join(FIX, "tiny-llama3", "tokenizer.json"))
sess = ort.InferenceSession(os.path.join(FIX, "tiny-llama3", "model.onnx"), providers=["CPUExecutionProvider"])
kv = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]


def last_logits(ids):
    feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None, :]}
    for i in kv:
        feed[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
    logits = sess.run(["logits"], feed)[0][0, -1].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def enc(text):
    return tok.encode(text, add_special_tokens=False).ids


cases = json.load(open(os.path.join(FIX, "guard-prompts", "cases.json")))
out = []
for name in ["llama-guard-2/user-agent", "llama-guard-2/subset", "llama-guard-3/user-only", "llama-guard-3/custom-subset"]:
    case = next(c for c in cases if c["name"] == name)
    ids = enc(case["prompt"])
    if case["taxonomy"] == "llama-guard-2":
        ids = [128000] + ids
    probs = last_logits(ids)
    p_unsafe = float(probs[enc("unsafe")[0]])
    head = enc("unsafe\n")
    n = len(case["categories"] or []) or (11 if case["taxonomy"] == "llama-guard-2" else 14)
    n += len(case["custom_categories"])
    codes = {}
    for i in range(n):
        code = f"S{i + 1}"
        toks = enc("unsafe\n" + code)[len(head):]
        ctx, p = ids + head, 1.0
        for t in toks:
            p *= float(last_logits(ctx)[t])
            ctx = ctx + [t]
        codes[code] = p
    out.append({"name": name, "ids": ids, "p_unsafe": p_unsafe, "code_probabilities": codes})
    print(name, len(ids), "tokens, P(unsafe) =", p_unsafe)
json.dump(out, open(os.path.join(FIX, "guard-prompts", "scores.json"), "w"), indent=1)
