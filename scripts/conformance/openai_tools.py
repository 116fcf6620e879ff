"""The official openai client's function-calling flow through safegate, whole and
streamed: define a tool, get a call, send the result, get the answer; and a call carrying
insecure code that the gateway must not let through.

    python scripts/conformance/openai_tools.py http://127.0.0.1:8080

The model behind the gateway is the scripted one of gateway/tests/tools.rs."""

import json
import sys

from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=f"{base}/v1", api_key="none")
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_python",
            "description": "Run a Python program",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    },
]
question = [{"role": "user", "content": "What is the weather in Paris?"}]


def get_weather(city):
    return json.dumps({"city": city, "celsius": 21})


# Whole: the call, the result, the answer.
first = client.chat.completions.create(model="agent", messages=question, tools=tools)
choice = first.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.function.name == "get_weather", call
result = get_weather(**json.loads(call.function.arguments))
messages = question + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": result},
]
answer = client.chat.completions.create(model="agent", messages=messages, tools=tools)
assert answer.choices[0].message.content == "It is 21 C in Paris.", answer

# Streamed: the call assembled from the chunks by index, as clients do.
calls = {}
finish = None
for chunk in client.chat.completions.create(
    model="agent", messages=question, tools=tools, stream=True
):
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    for piece in delta.tool_calls or []:
        entry = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
        entry["id"] = piece.id or entry["id"]
        entry["name"] += piece.function.name or ""
        entry["arguments"] += piece.function.arguments or ""
    finish = chunk.choices[0].finish_reason or finish
assert finish == "tool_calls", finish
assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}, calls
messages = question + [
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": calls[0]["id"],
                "type": "function",
                "function": {"name": calls[0]["name"], "arguments": calls[0]["arguments"]},
            }
        ],
    },
    {"role": "tool", "tool_call_id": calls[0]["id"], "content": get_weather("Paris")},
]
text = ""
for chunk in client.chat.completions.create(
    model="agent", messages=messages, tools=tools, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
assert text == "It is 21 C in Paris.", text

# An insecure program in a call: refused, nothing of the call reaches the client.
bad = [{"role": "user", "content": "Please run this with user input"}]
refused = client.chat.completions.create(model="agent", messages=bad, tools=tools)
assert refused.choices[0].finish_reason == "content_filter", refused
assert not refused.choices[0].message.tool_calls, refused
seen = []
for chunk in client.chat.completions.create(model="agent", messages=bad, tools=tools, stream=True):
    if chunk.choices:
        seen.append(chunk.choices[0])
assert seen[-1].finish_reason == "content_filter", seen[-1]
assert not any(c.delta.tool_calls for c in seen), seen
print("tools: ok")
