"""Scores hand-written lines (CODE<TAB>text, or text) as user turns through a running
safegate's /v1/guard/classify and prints P(unsafe) per line and how many reach the
policy's block.

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
    for line in lines:
        text = line.split("\t", 1)[-1]
        body = json.dumps({"messages": [{"role": "user", "content": text}], "agent_type": "user"}).encode()
        request = urllib.request.Request(f"{base}/v1/guard/classify", body, {"content-type": "application/json"})
        v = json.load(urllib.request.urlopen(request))
        action = v["decision"]["action"]
        blocked += action == "block"
        print(f"{v['verdict']['p_unsafe']:.2f}  {action:6}  {text}")
    print(f"blocked {blocked} of {len(lines)}")


if __name__ == "__main__":
    main()
