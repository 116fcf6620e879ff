"""Function calling as users meet it, on whatever model the gateway serves: a toolbox of
eight everyday functions and thirty requests (written for this, no public set): twenty
that one function answers, ten that none does. Sent to a running gateway with
`tool_choice: "required"` (the twenty) and `"auto"` (all thirty). Prints, per way: calls
that parse and follow the function's parameters (jsonschema), calls to the expected
function, text answers where no function fits, replies cut at max_tokens, replies the guard
refused (at input) or withheld (at output), mean seconds.

    .cache/venv/bin/python scripts/tools/eval.py [--base http://127.0.0.1:8080] [--max-tokens 120]
"""

import argparse
import json
import time
import urllib.error
import urllib.request

import jsonschema

S = {"type": "string"}


def fn(name, description, required, **props):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required, "additionalProperties": False}}}


TOOLS = [
    fn("get_weather", "Current weather in a city", ["city"], city=S,
       unit={"type": "string", "enum": ["celsius", "fahrenheit"]}),
    fn("send_email", "Send an email", ["to", "subject", "body"], to=S, subject=S, body=S),
    fn("create_event", "Add an event to the calendar", ["title", "date"], title=S, date=S, time=S),
    fn("search_web", "Search the web", ["query"], query=S),
    fn("convert_currency", "Convert an amount of money", ["amount", "source", "target"],
       amount={"type": "number"}, source=S, target=S),
    fn("set_timer", "Start a countdown timer", ["minutes"], minutes={"type": "integer"}),
    fn("get_stock_price", "Latest price of a stock", ["symbol"], symbol=S),
    fn("translate", "Translate text", ["text", "language"], text=S, language=S),
]

CALLS = [
    ("What's the weather like in Lisbon right now?", "get_weather"),
    ("Is it raining in Seattle? Give me the temperature in fahrenheit.", "get_weather"),
    ("How cold is it in Helsinki today?", "get_weather"),
    ("Email anna@example.com that the report is ready, subject 'Report'.", "send_email"),
    ("Send a note to tom@example.org saying I'll be late to dinner.", "send_email"),
    ("Write to support@shop.example asking where my order is.", "send_email"),
    ("Put a dentist appointment in my calendar for 2025-03-14 at 09:30.", "create_event"),
    ("Add 'Team lunch' on Friday the 21st to my calendar.", "create_event"),
    ("Schedule a call with Priya on June 2nd.", "create_event"),
    ("Search the web for the opening hours of the Louvre.", "search_web"),
    ("Look up who won the last Tour de France.", "search_web"),
    ("Find recent reviews of the Kindle Paperwhite online.", "search_web"),
    ("How much is 250 US dollars in euros?", "convert_currency"),
    ("Convert 1200 Japanese yen to British pounds.", "convert_currency"),
    ("Set a timer for 10 minutes.", "set_timer"),
    ("Remind me in 25 minutes to take the bread out: start a countdown.", "set_timer"),
    ("What is Apple's stock trading at?", "get_stock_price"),
    ("Get me the latest share price of MSFT.", "get_stock_price"),
    ("Translate 'where is the train station' into German.", "translate"),
    ("How do you say 'thank you very much' in Japanese? Use the translator.", "translate"),
]

NO_CALL = [
    "Write a haiku about autumn.",
    "Hello! How are you today?",
    "What is 12 times 7?",
    "Tell me a joke about cats.",
    "Give me three tips for sleeping better.",
    "Explain what a noun is in one sentence.",
    "What is the capital of Canada?",
    "Suggest a name for a golden retriever puppy.",
    "Write a Python function that reverses a list.",
    "Summarise the plot of Cinderella in two sentences.",
]


def post(base, body):
    req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8080")
    ap.add_argument("--max-tokens", type=int, default=120)
    args = ap.parse_args()
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    rows = []
    for way, cases in [("required", [(q, f) for q, f in CALLS]),
                       ("auto", [(q, f) for q, f in CALLS] + [(q, None) for q in NO_CALL])]:
        n = dict(asked=0, valid=0, right=0, text_ok=0, no_call_asked=0, cut=0, refused=0, withheld=0, secs=0.0)
        for question, expected in cases:
            body = {"messages": [{"role": "user", "content": question}], "tools": TOOLS,
                    "tool_choice": way, "max_tokens": args.max_tokens}
            t0 = time.time()
            v = post(args.base, body)
            n["secs"] += time.time() - t0
            n["asked"] += 1
            n["no_call_asked"] += expected is None
            if "error" in v:
                n["refused"] += v["error"].get("code") == "content_filter"
                continue
            c = v["choices"][0]
            n["cut"] += c["finish_reason"] == "length"
            n["withheld"] += c["finish_reason"] == "content_filter"
            calls = c["message"].get("tool_calls") or []
            for call in calls[:1]:
                name = call["function"]["name"]
                try:
                    jsonschema.validate(json.loads(call["function"]["arguments"]), params[name])
                    n["valid"] += 1
                except (ValueError, jsonschema.ValidationError):
                    pass
                n["right"] += name == expected
            if expected is None and not calls and c["finish_reason"] != "content_filter":
                n["text_ok"] += 1
        n["secs"] = round(n["secs"] / max(n["asked"], 1), 2)
        rows.append((way, n))
    for way, n in rows:
        need = n["asked"] - n["no_call_asked"]
        print(f"{way:9} valid calls {n['valid']}/{n['asked']}  expected function {n['right']}/{need}  "
              f"text where no function fits {n['text_ok']}/{n['no_call_asked']}  cut {n['cut']}  "
              f"refused {n['refused']}  withheld {n['withheld']}  mean {n['secs']} s")


if __name__ == "__main__":
    main()
