"""Drives a running safegate with the official `openai` Python client.

    .cache/venv/bin/python scripts/conformance/openai_client.py http://127.0.0.1:8080

Chat completion (whole and streamed) parses into the client's types; a blocked prompt raises the
client's BadRequestError with code content_filter; models list and retrieve (an unknown id:
NotFoundError). Exit code 0 on success.
"""

import sys

import openai

base = sys.argv[1].rstrip("/") + "/v1"
blocked_base = sys.argv[2].rstrip("/") + "/v1" if len(sys.argv) > 2 else None
client = openai.OpenAI(base_url=base, api_key="unused")

models = client.models.list()
assert models.data and models.data[0].id, models
assert client.models.retrieve(models.data[0].id).id == models.data[0].id
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("an unknown model was found")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body

r = client.chat.completions.create(model=models.data[0].id, messages=[{"role": "user", "content": "Hello"}], max_tokens=5)
assert r.choices[0].message.role == "assistant"
assert isinstance(r.choices[0].message.content, str)
assert r.choices[0].finish_reason in ("stop", "length", "content_filter")
assert r.usage.completion_tokens == 5 and r.usage.prompt_tokens > 0, r.usage

# Streaming: the deltas put together equal the whole (greedy) response; usage comes last.
chunks = list(client.chat.completions.create(
    model=models.data[0].id, messages=[{"role": "user", "content": "Hello"}], max_tokens=5,
    stream=True, stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == r.choices[0].message.content, (streamed, r.choices[0].message.content)
assert chunks[0].choices[0].delta.role == "assistant"
assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
assert chunks[-1].usage.completion_tokens == 5 and not chunks[-1].choices, chunks[-1]

try:
    client.chat.completions.create(model=models.data[0].id, messages=[{"role": "user", "content": "x"}], n=3)
    raise SystemExit("n=3 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "n", e.body

if blocked_base:
    blocked = openai.OpenAI(base_url=blocked_base, api_key="unused")
    try:
        blocked.chat.completions.create(model=blocked.models.list().data[0].id, messages=[{"role": "user", "content": "anything"}])
        raise SystemExit("the blocked prompt went through")
    except openai.BadRequestError as e:
        assert e.code == "content_filter", e.body
if blocked_base:
    m = blocked.moderations.create(input=["first text", "second text"])
    assert len(m.results) == 2 and m.results[0].flagged is True, m
    assert 0.0 <= m.results[0].category_scores.violence <= 1.0
print("openai client conformance: ok")
