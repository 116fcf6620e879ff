#!/usr/bin/env python3
"""Compares candidate prompt heads on cached encoder features (offline; not used by CI).

Reads .cache/guard-data/data.jsonl and the feature cache that `safegate guard train` writes
(features-*.bin: u32 width, then records of sha256(kind NUL text) and f32 features), fits
each candidate on the train split, picks its threshold on the validation split with the
same rule as `safegate guard train` (best F1 among thresholds whose false positive rate,
averaged over the benign sources, is at most --max-fpr), and reports test, dev (the
everyday-traffic dev set) and external (reserved) numbers, plus dev F1 against FPR for a
range of thresholds (the curve the choice rests on).

Needs numpy and scikit-learn (a throwaway venv: python3 -m venv /tmp/exp &&
/tmp/exp/bin/pip install numpy scikit-learn).

  /tmp/exp/bin/python scripts/guard/compare_heads.py [--features FILE] [--candidates logistic,mlp]
"""
import argparse
import hashlib
import json
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".cache" / "guard-data"


def load_cache(path):
    raw = path.read_bytes()
    dim = struct.unpack("<I", raw[:4])[0]
    rec = 32 + 4 * dim
    out = {}
    for off in range(4, len(raw), rec):
        out[raw[off:off + 32]] = np.frombuffer(raw[off + 32:off + rec], dtype="<f4")
    return dim, out


def key(row):
    return hashlib.sha256(f"{row['kind']}\0{row['text']}".encode()).digest()


def threshold_for(scores, labels, sources, max_fpr):
    """Best F1 among thresholds with per-source mean FPR <= max_fpr (as the trainer)."""
    best = (-1.0, 1.0)
    benign = defaultdict(list)
    for s, y, src in zip(scores, labels, sources):
        if not y:
            benign[src].append(s)
    for t in np.unique(np.concatenate([scores, [1.0]])):
        rates = []
        small = []
        for src, vals in benign.items():
            vals = np.asarray(vals)
            if len(vals) < 10:
                small.extend(vals)
            else:
                rates.append(np.mean(vals >= t))
        if small:
            rates.append(np.mean(np.asarray(small) >= t))
        if np.mean(rates) > max_fpr:
            continue
        pred = scores >= t
        tp = np.sum(pred & labels)
        f1 = 2 * tp / max(1, np.sum(pred) + np.sum(labels))
        if f1 > best[0]:
            best = (f1, t)
    return best[1]


def report(name, scores, labels, sources, t):
    pred = scores >= t
    tp, fp = np.sum(pred & labels), np.sum(pred & ~labels)
    p = tp / max(1, tp + fp)
    r = tp / max(1, np.sum(labels))
    f1 = 2 * p * r / max(1e-9, p + r)
    fpr = fp / max(1, np.sum(~labels))
    per = defaultdict(list)
    for s, src in zip(pred, sources):
        per[src].append(s)
    flags = " ".join(f"{src}={np.mean(v):.1%}" for src, v in sorted(per.items()))
    print(f"  {name:9s} F1 {f1:.3f} P {p:.3f} R {r:.3f} FPR {fpr:.1%} | {flags}")
    return f1, fpr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", help="feature cache file(s), comma-separated: concatenated")
    ap.add_argument("--candidates", default="logistic,mlp")
    ap.add_argument("--max-fpr", type=float, default=0.05)
    ap.add_argument("--layers", default="all", help="all, or indices of 576-wide blocks, e.g. 0,2")
    args = ap.parse_args()
    paths = [Path(p) for p in args.features.split(",")] if args.features else [
        max(DATA.glob("features-*.bin"), key=lambda p: p.stat().st_mtime)]
    caches = [load_cache(p) for p in paths]
    dim = sum(d for d, _ in caches)
    common = set.intersection(*(set(c) for _, c in caches))
    cache = {k: np.concatenate([c[k] for _, c in caches]) for k in common}
    path = paths[0]
    rows = [json.loads(line) for line in (DATA / "data.jsonl").open()]
    rows = [r for r in rows if r["kind"] == "prompt" and key(r) in cache]
    cols = slice(None)
    if args.layers != "all":
        blocks = [int(b) for b in args.layers.split(",")]
        width = 576
        cols = np.concatenate([np.arange(b * width, (b + 1) * width) for b in blocks])

    def split(name):
        sel = [r for r in rows if r["split"] == name]
        x = np.stack([cache[key(r)] for r in sel])[:, cols] if sel else np.zeros((0, dim))
        y = np.array([r["label"] == 1 for r in sel])
        return x, y, [r["source"] for r in sel]

    tr, va = split("train"), split("val")
    others = {s: split(s) for s in ("test", "dev", "external")}
    print(f"features {','.join(p.name for p in paths)}: width {dim}; train {len(tr[1])}, val {len(va[1])}, "
          + ", ".join(f"{k} {len(v[1])}" for k, v in others.items()))
    scaler = StandardScaler().fit(tr[0])
    xt, xv = scaler.transform(tr[0]), scaler.transform(va[0])
    candidates = []
    for c in args.candidates.split(","):
        if c == "logistic":
            for C in (0.01, 0.03, 0.1):
                candidates.append((f"logistic C={C}", LogisticRegression(C=C, max_iter=2000)))
        elif c == "mlp":
            for alpha in (1e-2, 1e-1, 1.0):
                candidates.append((f"mlp 256 alpha={alpha}", MLPClassifier(
                    hidden_layer_sizes=(256,), alpha=alpha, max_iter=300, early_stopping=True,
                    random_state=20261127)))
    for name, model in candidates:
        model.fit(xt, tr[1])
        sv = model.predict_proba(xv)[:, 1]
        t = threshold_for(sv, va[1], va[2], args.max_fpr)
        print(f"{name}: threshold {t:.4f}")
        for s, (x, y, src) in others.items():
            if len(y):
                report(s, model.predict_proba(scaler.transform(x))[:, 1], y, src, t)
        x, y, src = others["dev"]
        if len(y):
            sd = model.predict_proba(scaler.transform(x))[:, 1]
            curve = []
            for q in (0.5, 0.7, 0.9, 0.95):
                tt = np.quantile(sd[~y], q)
                pred = sd > tt
                tp = np.sum(pred & y)
                f1 = 2 * tp / max(1, np.sum(pred) + np.sum(y))
                curve.append(f"FPR {np.mean(sd[~y] > tt):.1%}: F1 {f1:.3f}")
            print("  dev curve", "; ".join(curve))


if __name__ == "__main__":
    main()
