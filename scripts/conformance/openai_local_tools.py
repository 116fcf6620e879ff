"""The official openai client's function calling against a local model through safegate:
a call demanded with `tool_choice` (whole, and streamed through the client's stream
helper), its arguments following the parameters (the client's `pydantic_function_tool`
and `parse()`), and the result sent back for an answer.

    python scripts/conformance/openai_local_tools.py http://127.0.0.1:8080

Any local model works: what is checked is the shape, not the words."""

import json
import sys
from typing import Literal

import openai
from openai import OpenAI
from pydantic import BaseModel

base = sys.argv[1]
client = OpenAI(base_url=f"{base}/v1", api_key="none")
model = client.models.list().data[0].id


class GetWeather(BaseModel):
    """Weather in a city."""

    # Enums, so that the test's random-weight model finishes too (a free string lets it
    # ramble to max_tokens).
    city: Literal["Paris", "Oslo", "Rome"]
    unit: Literal["celsius", "fahrenheit"]


tools = [openai.pydantic_function_tool(GetWeather)]
question = [{"role": "user", "content": "What is the weather in Paris?"}]

# Whole, through parse(): the arguments come back as the Pydantic model.
first = client.chat.completions.parse(
    model=model, messages=question, tools=tools, tool_choice="required", max_tokens=80
)
choice = first.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.function.name == "GetWeather", call
assert isinstance(call.function.parsed_arguments, GetWeather), call
assert call.id.startswith("call_"), call

# The result back, for an answer in words (tool_choice none: the model must answer).
messages = question + [
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
        ],
    },
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21})},
]
answer = client.chat.completions.create(
    model=model, messages=messages, tools=tools, tool_choice="none", max_tokens=40
)
assert answer.choices[0].message.content is not None, answer
assert not answer.choices[0].message.tool_calls, answer

# Streamed, through the client's stream helper: the call arrives whole and parsed.
with client.chat.completions.stream(
    model=model,
    messages=question,
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "GetWeather"}},
    max_tokens=80,
) as stream:
    for _ in stream:
        pass
    final = stream.get_final_completion()
streamed_call = final.choices[0].message.tool_calls[0]
assert final.choices[0].finish_reason == "tool_calls", final
assert isinstance(streamed_call.function.parsed_arguments, GetWeather), streamed_call

print("local tools: ok")
