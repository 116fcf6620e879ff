#!/usr/bin/env python3
"""Concurrent callers against a running gateway's guard: does anyone fail?

Sends every prompt row of .cache/guard-data/data.jsonl's chosen splits (default: dev and
test), plus long texts of up to --max-words words (prompt rows joined until long enough),
to POST /v1/guard/classify from --clients threads at once, and prints how many answers were
not HTTP 200 (with their error codes), and latency percentiles for short and long texts.
Standard library only.

  scripts/run.sh &   # the default gateway
  python3 scripts/guard/load_check.py --clients 4 --long 100 --max-words 2000
"""
import argparse
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080/v1/guard/classify")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--long", type=int, default=100, help="long texts to add")
    ap.add_argument("--max-words", type=int, default=2000)
    ap.add_argument("--key", help="API key (Authorization: Bearer)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in (ROOT / ".cache/guard-data/data.jsonl").open()]
    texts = [r["text"] for r in rows if r["kind"] == "prompt" and r["split"] in args.splits.split(",")]
    rng = random.Random(20261130)
    pool = [r["text"] for r in rows if r["kind"] == "prompt"]
    for _ in range(args.long):
        words, parts = rng.randint(args.max_words // 2, args.max_words), []
        while sum(len(p.split()) for p in parts) < words:
            parts.append(rng.choice(pool))
        texts.append(" ".join(" ".join(parts).split()[:words]))
    rng.shuffle(texts)
    jobs = list(enumerate(texts))
    lock = threading.Lock()
    statuses, latency = Counter(), {"short": [], "long": []}

    def call(text):
        body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
        req = urllib.request.Request(args.url, body, {"content-type": "application/json"})
        if args.key:
            req.add_header("authorization", f"Bearer {args.key}")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                return "200"
        except urllib.error.HTTPError as e:
            try:
                code = json.loads(e.read())["error"].get("code")
            except Exception:  # noqa: BLE001 (report whatever came back)
                code = "?"
            return f"{e.code} {code}"

    def worker():
        while True:
            with lock:
                if not jobs:
                    return
                _, text = jobs.pop()
            t0 = time.monotonic()
            status = call(text)
            ms = (time.monotonic() - t0) * 1e3
            with lock:
                statuses[status] += 1
                latency["long" if len(text.split()) > 500 else "short"].append(ms)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(statuses.values())
    failed = total - statuses["200"]
    print(f"{total} requests, {args.clients} clients, {time.monotonic() - t0:.0f} s: "
          f"{failed} not 200 {dict(statuses)}")
    for kind, lat in latency.items():
        if lat:
            lat.sort()
            pct = lambda q: lat[round((len(lat) - 1) * q)]  # noqa: E731
            print(f"  {kind}: {len(lat)} texts, p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, "
                  f"max {lat[-1]:.0f} ms")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
