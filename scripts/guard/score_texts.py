"""Scores hand-written lines (CODE<TAB>text, or text) as user turns through a running
safegate's /v1/guard/classify and prints P(unsafe) per line and how many reach the
policy's block (per label when lines carry one: `safe` or a hazard code).

    python3 scripts/guard/score_texts.py scripts/guard/weapons_probe.txt [BASE_URL]
"""

import json
import sys
import urllib.request


def main() -> None:
    path = sys.argv[1]
    base = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8080"
    lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l.strip() and not l.startswith("#")]
    blocked = 0
    by_label = {"harmful": [0, 0], "safe": [0, 0]}
    for line in lines:
        label, _, text = line.rpartition("\t")
        body = json.dumps({"messages": [{"role": "user", "content": text}], "agent_type": "user"}).encode()
        request = urllib.request.Request(f"{base}/v1/guard/classify", body, {"content-type": "application/json"})
        v = json.load(urllib.request.urlopen(request))
        action = v["decision"]["action"]
        blocked += action == "block"
        if label:
            counts = by_label["safe" if label == "safe" else "harmful"]
            counts[0] += action == "block"
            counts[1] += 1
        print(f"{v['verdict']['p_unsafe']:.2f}  {action:6}  {text}")
    print(f"blocked {blocked} of {len(lines)}")
    for name, (hit, total) in by_label.items():
        if total:
            print(f"{name}: blocked {hit} of {total}")


if __name__ == "__main__":
    main()
