#!/usr/bin/env python3
"""End to end as a user meets the guard: every line of a file (text, or CODE<TAB>text) sent
as one chat request to a running safegate, counting what is refused at the input, withheld
at the output (finish_reason content_filter) or answered, and listing the refused ones.

    python3 scripts/guard/chat_e2e.py scripts/guard/dev/everyday.txt [--stream] [--sample N --seed S] [--base URL]

Greedy decoding, 128 new tokens; standard library only.
"""
import argparse
import collections
import json
import random
import urllib.error
import urllib.request


def ask(base, prompt, stream):
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 128, "temperature": 0, "stream": stream}
    request = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        raw = urllib.request.urlopen(request, timeout=300).read().decode()
    except urllib.error.HTTPError as e:
        error = json.loads(e.read().decode()).get("error", {})
        return f"refused at input (HTTP {e.code} {error.get('code')})", ""
    if not stream:
        choice = json.loads(raw)["choices"][0]
        return outcome(choice["finish_reason"]), choice["message"].get("content") or ""
    finish, text = None, []
    for line in raw.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            if "error" in chunk:
                finish = "error " + str(chunk["error"].get("code"))
            for choice in chunk.get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
                finish = choice.get("finish_reason") or finish
    return outcome(finish), "".join(text)


def outcome(finish):
    if finish in ("stop", "length"):
        return "answered"
    return "withheld at output" if finish == "content_filter" else f"ended: {finish}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--base", default="http://127.0.0.1:8080")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--sample", type=int, default=0, help="only N lines, drawn with --seed")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    lines = [l.split("\t", 1)[-1] for l in open(a.file, encoding="utf-8").read().splitlines() if l.strip() and not l.startswith("#")]
    if a.sample:
        random.Random(a.seed).shuffle(lines)
        lines = lines[: a.sample]
    counts = collections.Counter()
    for prompt in lines:
        result, text = ask(a.base, prompt, a.stream)
        counts[result] += 1
        if result != "answered":
            print(f"[{result}] {prompt!r} -> {text[:100]!r}")
    print(f"{dict(counts)} of {len(lines)} ({'streamed' if a.stream else 'whole'})")


if __name__ == "__main__":
    main()
