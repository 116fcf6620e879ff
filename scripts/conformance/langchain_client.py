"""Drives a running safegate with LangChain's OpenAI chat model (`langchain-openai`), the way
an application built on LangChain would: invoke, stream (with usage), a forced tool call
(`bind_tools`), structured output by all three methods (json_schema, function_calling,
json_mode), async batches, and a blocked prompt raising LangChain's error.

    .cache/venv/bin/python scripts/conformance/langchain_client.py BASE [BLOCKING_BASE]

Checks shapes, not the model's wording (tests run it on a random-weight fixture): the
schemas use enums and booleans so a model that rambles still ends its value. BLOCKING_BASE
is a server whose policy blocks every prompt. Exit code 0 on success.
"""

import asyncio
import json
import sys
import urllib.request
from typing import Literal

import openai
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

base = sys.argv[1].rstrip("/")
blocking = sys.argv[2].rstrip("/") if len(sys.argv) > 2 else None
model = json.load(urllib.request.urlopen(base + "/v1/models"))["data"][0]["id"]


def chat(url=base, max_tokens=24, **kw):
    # Greedy: the same replies every run, so a pass is not luck.
    kw.setdefault("temperature", 0)
    return ChatOpenAI(base_url=url + "/v1", api_key="unused", model=model, max_tokens=max_tokens, **kw)


r = chat().invoke("Write a haiku about the sea.")
assert isinstance(r.content, str) and r.content, r
assert r.response_metadata["finish_reason"] in ("stop", "length"), r.response_metadata
assert r.usage_metadata["input_tokens"] > 0 and r.usage_metadata["output_tokens"] > 0, r

chunks = list(chat(stream_usage=True).stream("Tell me a joke."))
text = "".join(c.content for c in chunks)
assert text, chunks
usage = [c.usage_metadata for c in chunks if c.usage_metadata]
assert usage and usage[-1]["output_tokens"] > 0, chunks[-3:]


class Weather(BaseModel):
    """Get the weather for a city."""

    city: Literal["Paris", "Oslo"] = Field(description="the city")


r = chat(max_tokens=200).bind_tools([Weather], tool_choice="Weather").invoke("What's the weather in Paris?")
assert not r.invalid_tool_calls, r.invalid_tool_calls
assert len(r.tool_calls) == 1 and r.tool_calls[0]["name"] == "Weather", r.tool_calls
assert r.tool_calls[0]["args"]["city"] in ("Paris", "Oslo") and r.tool_calls[0]["id"].startswith("call_")


class Verdict(BaseModel):
    city: Literal["Paris", "Oslo"]
    sunny: bool


for method in ("json_schema", "function_calling"):
    v = chat(max_tokens=200).with_structured_output(Verdict, method=method).invoke("Is it sunny in Oslo?")
    assert isinstance(v, Verdict), (method, v)
# json_mode promises a JSON object, not this schema: a dict, or, when the model's object
# outgrows max_tokens (a random-weight model's strings run on), the client's length error.
try:
    v = chat(max_tokens=200).with_structured_output(None, method="json_mode").invoke("Reply in JSON.")
    assert isinstance(v, dict), v
except openai.LengthFinishReasonError:
    pass


async def batch():
    return await chat().abatch(["Hi", "What is 2+2?", "Name a color."])


replies = asyncio.run(batch())
assert len(replies) == 3 and all(isinstance(x.content, str) for x in replies), replies

if blocking:
    try:
        chat(url=blocking).invoke("Hello")
        raise AssertionError("the blocking server answered")
    except Exception as e:  # LangChain wraps the client's 400 in its own error type
        assert "content_filter" in str(e) or "safety policy" in str(e), repr(e)

print("langchain: ok")
