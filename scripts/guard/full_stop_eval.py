"""Does a full stop move the guard's verdict? Scores the hand-written dev sets through a
running safegate's /v1/guard/classify three ways: as written, with the final `.`/`?`/`!`
taken off, and with one added where missing (`?` after a question opener, else `.`), and
prints how many of each set the policy blocks.

    python3 scripts/guard/full_stop_eval.py [BASE_URL]
"""

import json
import sys
import urllib.request

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
OPENERS = {"how", "what", "why", "where", "when", "who", "which", "can", "could", "is", "are",
           "do", "does", "should", "would", "will"}


def blocked(text: str) -> bool:
    body = json.dumps({"messages": [{"role": "user", "content": text}], "agent_type": "user"}).encode()
    request = urllib.request.Request(f"{BASE}/v1/guard/classify", body, {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(request))["decision"]["action"] == "block"


def load(name: str) -> list[str]:
    lines = open(f"scripts/guard/dev/{name}.txt", encoding="utf-8").read().splitlines()
    return [l.rpartition("\t")[2] for l in lines if l.strip() and not l.startswith("#")]


def stripped(text: str) -> str:
    return text.rstrip().rstrip(".?!").rstrip()


def ended(text: str) -> str:
    text = text.rstrip()
    if text[-1:] in ".?!":
        return text
    return text + ("?" if text.split()[0].lower() in OPENERS else ".")


for name in ("everyday", "lookalike", "harmful", "statements"):
    texts = load(name)
    counts = [sum(blocked(f(t)) for t in texts) for f in (lambda t: t, stripped, ended)]
    print(f"{name:10} {len(texts):4} rows  blocked: as written {counts[0]:4}  "
          f"without final mark {counts[1]:4}  with one {counts[2]:4}", flush=True)
