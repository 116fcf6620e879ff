#!/usr/bin/env python3
"""Baselines for the embedded guard, on the same rows and with the same metric definitions
as `safegate guard eval`: PyPI better-profanity 0.7.0 (a keyword list: flagged or not) and
alt-profanity-check 1.9.1 (its shipped linear model: P(offensive), flagged at 0.5).

Run: .cache/venv/bin/python scripts/guard/baselines.py [.cache/guard-data/data.jsonl]
(installs both packages into .cache/venv when missing).
"""
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["better-profanity==0.7.0", "alt-profanity-check==1.9.1"]


def ensure_packages():
    try:
        import better_profanity  # noqa: F401
        import profanity_check  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *PACKAGES], check=True)


def metrics(scores, labels, threshold):
    tp = fp = fn = tn = 0
    for s, l in zip(scores, labels):
        if s >= threshold:
            tp, fp = (tp + 1, fp) if l else (tp, fp + 1)
        else:
            fn, tn = (fn + 1, tn) if l else (fn, tn + 1)
    ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
    p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    # Average precision, ties broken pessimistically (negatives first), as the Rust code does.
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], labels[i]))
    pos = sum(labels)
    hits, ap = 0, 0.0
    for rank, i in enumerate(order, 1):
        if labels[i]:
            hits += 1
            ap += hits / rank
    return dict(n=len(scores), positives=tp + fn, precision=p, recall=r, f1=f1, fpr=ratio(fp, fp + tn),
                auprc=ap / pos if pos else 0.0)


def main():
    ensure_packages()
    from better_profanity import profanity
    from profanity_check import predict_prob

    profanity.load_censor_words()
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".cache/guard-data/data.jsonl"
    rows = [json.loads(l) for l in data.read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r["split"] in ("test", "external")]
    texts = [r["text"] for r in rows]
    scorers = {
        "better-profanity": [1.0 if profanity.contains_profanity(t) else 0.0 for t in texts],
        "alt-profanity-check": [float(p) for p in predict_prob(texts)],
    }
    print("| baseline | split / kind | rows | unsafe | precision | recall | F1 | FPR | AUPRC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, scores in scorers.items():
        groups = defaultdict(lambda: ([], []))
        for r, s in zip(rows, scores):
            for key in (f"{r['split']} {r['kind']}", f"{r['split']} {r['kind']} (without hand-written)"):
                if key.endswith("written)") and r["source"] == "hard-benign":
                    continue
                groups[key][0].append(s)
                groups[key][1].append(r["label"] == 1)
        for key in sorted(groups):
            m = metrics(*groups[key], 0.5)
            print(f"| {name} | {key} | {m['n']} | {m['positives']} | {m['precision']:.3f} | {m['recall']:.3f} "
                  f"| {m['f1']:.3f} | {m['fpr']:.3f} | {m['auprc']:.3f} |")


if __name__ == "__main__":
    main()
