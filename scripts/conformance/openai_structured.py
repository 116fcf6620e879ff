"""Structured output through the official `openai` Python client, on a local model.

    .cache/venv/bin/python scripts/conformance/openai_structured.py http://127.0.0.1:8080

`client.chat.completions.parse` with a Pydantic model (the strict JSON Schema the client
derives: `$defs`/`$ref`, enums, `anyOf` with null, `additionalProperties: false`) comes back
as that model, whole and streamed; JSON mode gives a JSON object; a schema keyword the local
engine cannot hold to is the client's BadRequestError with code `unsupported_schema`.
The model may be random weights: every field is bounded, so any model must finish.
Exit code 0 on success.
"""

import json
import sys
from typing import Literal, Optional

import openai
from pydantic import BaseModel, Field

base = sys.argv[1].rstrip("/") + "/v1"
client = openai.OpenAI(base_url=base, api_key="unused")
model = client.models.list().data[0].id


class Detail(BaseModel):
    level: Literal[1, 2, 3]
    source: Optional[Literal["sky", "sea"]]


class Verdict(BaseModel):
    answer: Literal["yes", "no"] = Field(description="the answer")
    sure: bool
    detail: Detail


messages = [{"role": "user", "content": "Is the sky blue? Answer as JSON."}]
r = client.chat.completions.parse(model=model, messages=messages, response_format=Verdict, max_tokens=300)
assert r.choices[0].finish_reason == "stop", r
parsed = r.choices[0].message.parsed
assert isinstance(parsed, Verdict), r
assert list(json.loads(r.choices[0].message.content)) == ["answer", "sure", "detail"], r

# The same request streamed (greedy): the deltas joined are the same object.
schema = openai.lib._pydantic.to_strict_json_schema(Verdict)
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=300, stream=True,
    response_format={"type": "json_schema", "json_schema": {"name": "Verdict", "schema": schema, "strict": True}})
text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
assert Verdict.model_validate_json(text) == parsed, (text, parsed)

r = client.chat.completions.create(model=model, messages=messages, max_tokens=40,
                                   response_format={"type": "json_object"})
content = r.choices[0].message.content
assert content.lstrip().startswith("{"), content
if r.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(content), dict), content


class Code(BaseModel):
    code: str = Field(pattern="^[A-Z]{3}$")


try:
    client.chat.completions.parse(model=model, messages=messages, response_format=Code)
    raise SystemExit("a schema with `pattern` was accepted")
except openai.BadRequestError as e:
    assert e.code == "unsupported_schema" and "pattern" in e.message, e.body
print("openai structured output: ok")
