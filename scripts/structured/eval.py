"""Structured output as users meet it: twenty everyday JSON tasks (extraction, tagging,
small lists; written for this, no public set) sent to a running gateway three ways, each
asking for JSON in the message itself: without `response_format` (the model's own JSON),
with `json_object`, and with the task's `json_schema`. Prints, per way: replies that parse
as JSON (the whole reply, and leniently the first {...} inside it), replies that conform to
the task's schema (jsonschema), finished replies, replies the guard refused (at input) or
withheld (at output), mean completion tokens and seconds.

    .cache/venv/bin/python scripts/structured/eval.py [--base http://127.0.0.1:8080] [--max-tokens 200]
"""

import argparse
import json
import time
import urllib.error
import urllib.request

import jsonschema

S, I, N, B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}


def obj(**props):
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def arr(items, lo=None, hi=None):
    a = {"type": "array", "items": items}
    if lo is not None:
        a["minItems"] = lo
    if hi is not None:
        a["maxItems"] = hi
    return a


TASKS = [
    ("Extract the person's name and age from: 'Maria Lopez, 34, moved to Lisbon last year.'", obj(name=S, age=I)),
    ("Extract the city and the country from: 'The conference takes place in Osaka, Japan, in May.'", obj(city=S, country=S)),
    ("Classify the sentiment of this review as positive, negative or neutral: 'The battery died after two days.'",
     obj(sentiment={"enum": ["positive", "negative", "neutral"]})),
    ("List three fruits that are red.", obj(fruits=arr(S, 3, 3))),
    ("Give the title and the author of a famous novel.", obj(title=S, author=S)),
    ("Turn this note into data: meeting on Tuesday at 3pm in room 204.", obj(day=S, time=S, room=S)),
    ("Is 17 a prime number? Explain briefly.", obj(answer=B, explanation=S)),
    ("Extract the product, the quantity and the unit price from: 'Order: 3 notebooks at 2.50 dollars each.'",
     obj(product=S, quantity=I, unit_price=N)),
    ("Describe a dog with its name, its breed and its age in years.", obj(name=S, breed=S, age=I)),
    ("What is the capital of Italy, and roughly how many people live there?", obj(capital=S, population=I)),
    ("Tag this support ticket with a priority (low, medium or high) and a category (billing, technical or account): "
     "'I was charged twice for my subscription this month.'",
     obj(priority={"enum": ["low", "medium", "high"]}, category={"enum": ["billing", "technical", "account"]})),
    ("Extract the email address and the phone number from: 'Contact Sam at sam@example.com or 555-0142.'",
     obj(email=S, phone=S)),
    ("Give two synonyms for the word 'happy'.", obj(word=S, synonyms=arr(S, 2, 2))),
    ("Summarise in one sentence: 'The city council voted to build a new park near the river, with construction "
     "starting next spring.'", obj(summary=S)),
    ("Extract the date and the event from: 'On 12 March 2024 the museum reopened after its renovation.'",
     obj(date=S, event=S)),
    ("Plan a short morning routine in three numbered steps.", obj(steps=arr(obj(order=I, action=S), 3, 3))),
    ("Translate 'good morning' into French and into Spanish.", obj(french=S, spanish=S)),
    ("How hard is it to learn to ride a bike, from 1 (easy) to 5 (hard)? Give a reason.",
     obj(rating={"enum": [1, 2, 3, 4, 5]}, reason=S)),
    ("List the ingredients in: 'Mix flour, sugar and two eggs, then add milk.'", obj(ingredients=arr(S, 1, 8))),
    ("Describe a book: its title, the year it came out and whether it is fiction.", obj(title=S, year=I, fiction=B)),
]


def ask(base, task, schema, way, max_tokens):
    keys = ", ".join(schema["properties"])
    body = {"messages": [{"role": "user", "content": f"{task} Reply with JSON only, with the keys: {keys}."}],
            "max_tokens": max_tokens}
    if way == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif way == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "task", "schema": schema, "strict": True}}
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    started = time.time()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            v = json.load(r)
    except urllib.error.HTTPError as e:
        v = json.load(e)
    return v, time.time() - started


def lenient(text):
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(text[start:end + 1])
    except ValueError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8080")
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args()
    print(f"{'way':<12} {'parses':>7} {'lenient':>8} {'conforms':>9} {'finished':>9} {'refused':>8} {'withheld':>9}"
          f" {'tokens':>7} {'seconds':>8}")
    for way in ["none", "json_object", "json_schema"]:
        parses = loose = conforms = finished = tokens = refused = withheld = 0
        seconds = 0.0
        for task, schema in TASKS:
            v, dt = ask(args.base, task, schema, way, args.max_tokens)
            seconds += dt
            if "error" in v:
                print(f"  {way}: refused ({v['error'].get('code')}): {task[:60]}")
                refused += 1
                continue
            choice = v["choices"][0]
            text = choice["message"]["content"] or ""
            finished += choice["finish_reason"] == "stop"
            if choice["finish_reason"] == "content_filter":
                withheld += 1
                print(f"  {way}: withheld: {task[:60]}")
            tokens += v["usage"]["completion_tokens"]
            try:
                value = json.loads(text)
                parses += 1
            except ValueError:
                value = lenient(text)
            loose += value is not None
            if value is not None:
                try:
                    jsonschema.validate(value, schema)
                    conforms += 1
                except jsonschema.ValidationError:
                    pass
        n = len(TASKS)
        print(f"{way:<12} {parses:>3}/{n:<3} {loose:>4}/{n:<3} {conforms:>5}/{n:<3} {finished:>5}/{n:<3} "
              f"{refused:>4}/{n:<3} {withheld:>5}/{n:<3} {tokens / max(n - refused, 1):>7.1f} {seconds / n:>8.2f}")


if __name__ == "__main__":
    main()
