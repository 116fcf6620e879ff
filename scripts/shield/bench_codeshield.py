"""Meta's Code Shield on the shield dev set, for the side-by-side table in docs/benchmarks.md.

    scripts/bench/setup.sh   # makes .cache/csenv: codeshield 1.0.1 + semgrep
    .cache/csenv/bin/python scripts/shield/bench_codeshield.py shield/eval/shield-dev.jsonl

Scans every snippet with its language given (CodeShield.scan_code(code, language)), one at a
time, after one warm-up scan, and prints labelled-line recall and per-snippet latency in the
same format as `cargo run --release -p safegate-shield --example eval`.
"""

import asyncio
import json
import statistics
import sys
import time

from codeshield.cs import CodeShield
from codeshield.insecure_code_detector.languages import Language

LANGS = {"c": Language.C, "cpp": Language.CPP, "csharp": Language.CSHARP, "java": Language.JAVA,
         "javascript": Language.JAVASCRIPT, "php": Language.PHP, "python": Language.PYTHON, "rust": Language.RUST}


async def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    await CodeShield.scan_code(rows[0]["origin_code"], LANGS[rows[0]["language"]])
    per, times = {}, []
    for r in rows:
        code, target = r["origin_code"], r["line_text"].strip()
        lines = code.split("\n")
        tl = next((i + 1 for i, l in enumerate(lines) if l.strip() == target), None)
        t0 = time.perf_counter()
        res = await CodeShield.scan_code(code, LANGS[r["language"]])
        times.append((time.perf_counter() - t0) * 1e3)
        issues = res.issues_found or []
        flagged = bool(issues)
        on_line = tl is not None and any(i.line == tl for i in issues)
        e = per.setdefault(r["language"], [0, 0, 0])
        e[0] += 1
        e[1] += flagged
        e[2] += on_line
    print("| language | snippets | flagged | labelled line |\n|---|---|---|---|")
    n = f = l = 0
    for lang in sorted(per):
        cn, cf, cl = per[lang]
        print(f"| {lang} | {cn} | {100 * cf / cn:.1f}% | {100 * cl / cn:.1f}% |")
        n, f, l = n + cn, f + cf, l + cl
    print(f"| **all** | {n} | {100 * f / n:.1f}% | {100 * l / n:.1f}% |")
    times.sort()
    pct = lambda p: times[min(len(times) - 1, int(len(times) * p))]
    print(f"\nlatency per snippet: p50 {pct(0.5):.3f} ms, p99 {pct(0.99):.3f} ms, max {times[-1]:.3f} ms")


asyncio.run(main(sys.argv[1]))
