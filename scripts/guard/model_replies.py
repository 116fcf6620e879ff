#!/usr/bin/env python3
"""The served chat model's own replies to benign training prompts, as benign response rows
for the embedded guard's response head (build_data.py reads scripts/guard/model_replies.jsonl).

Why: the response head learnt "safe reply" from other models' answers; SmolLM2's replies
(repetitive, list-heavy, odd stories) read differently, and the head flagged 11 of 40
everyday requests' replies on the dev prompts (2026-11-30). Only prompts of the training
sources are used (everyday_benign.txt, lookalike_benign.txt, everyday_tasks.txt,
writing_tasks.txt): the dev prompts' replies stay unseen for measuring. Replies are appended
in that order, so adding a file leaves the earlier replies as they were.

  target/release/safegate serve --model models/smollm2-135m-instruct --listen 127.0.0.1:8090 --audit-log off &
  python3 scripts/guard/model_replies.py [--base http://127.0.0.1:8090] [--max-tokens 128]

Greedy decoding (temperature 0), so the file is reproducible with the same model and build.
Standard library only.
"""
import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def prompts():
    for name in ("everyday_benign.txt", "lookalike_benign.txt", "everyday_tasks.txt", "writing_tasks.txt"):
        for line in (ROOT / "scripts/guard" / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                yield line.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8090")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "scripts/guard/model_replies.jsonl"))
    a = ap.parse_args()
    # Resumable: prompts already answered in the file are skipped.
    seen = set()
    if Path(a.out).exists():
        seen = {json.loads(l)["prompt"] for l in open(a.out) if l.strip()}
    done = len(seen)
    with open(a.out, "a") as out:
        for p in prompts():
            if p in seen:
                continue
            body = {"messages": [{"role": "user", "content": p}], "max_tokens": a.max_tokens, "temperature": 0}
            req = urllib.request.Request(a.base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
            try:
                v = json.load(urllib.request.urlopen(req, timeout=300))
            except urllib.error.HTTPError:
                continue
            choice = v["choices"][0]
            if choice["finish_reason"] == "content_filter":
                continue  # the shield withheld it: not a reply the guard would see
            out.write(json.dumps({"prompt": p, "reply": choice["message"]["content"]}) + "\n")
            out.flush()
            done += 1
    print(f"{done} replies written to {a.out}")


if __name__ == "__main__":
    main()
