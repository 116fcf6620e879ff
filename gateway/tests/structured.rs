//! `response_format`, `logit_bias` and the penalties on the local engine, through HTTP: a
//! reply held to a JSON Schema (whole and streamed alike), JSON mode, what cannot be held to
//! refused with where in the schema, the sampling fields honoured rather than dropped, and
//! the official `openai` client's `parse` helper (`scripts/conformance/openai_structured.py`).

mod common;

use common::{post, start};
use serde_json::{json, Value};

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Is the sky blue? Answer as JSON."}],
        "max_tokens": 200
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn verdict_schema() -> Value {
    json!({
        "type": "json_schema",
        "json_schema": {
            "name": "verdict",
            "strict": true,
            "schema": {
                "type": "object",
                "properties": {
                    "answer": {"enum": ["yes", "no"]},
                    "confidence": {"enum": [1, 2, 3]},
                    "sure": {"type": "boolean"}
                },
                "required": ["answer", "confidence", "sure"],
                "additionalProperties": false
            }
        }
    })
}

/// The streamed reply's text.
fn streamed_text(base: &str, body: &Value) -> (String, String) {
    let text = ureq::post(&format!("{base}/v1/chat/completions"))
        .send_json(body.clone())
        .unwrap()
        .into_string()
        .unwrap();
    let mut content = String::new();
    let mut finish = String::new();
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (content, finish)
}

#[test]
fn replies_follow_the_schema_whole_and_streamed() {
    let model = common::fixture("tiny-llama3");
    let server = start(&["--model", model.to_str().unwrap()]);
    let body = chat(json!({"response_format": verdict_schema()}));
    let (status, v) = post(&server.base, "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let reply: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    let keys: Vec<&str> = reply
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["answer", "confidence", "sure"], "{reply}");
    assert!(["yes", "no"].contains(&reply["answer"].as_str().unwrap()));
    assert!(reply["sure"].is_boolean());
    // Greedy: the stream carries the same reply.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (text, finish) = streamed_text(&server.base, &streamed);
    assert_eq!((text.as_str(), finish.as_str()), (content, "stop"));

    // JSON mode: whatever the random weights prefer, the text so far is a JSON object's
    // beginning, and a finished reply is one.
    for seed in 0..4 {
        let body = chat(json!({"response_format": {"type": "json_object"},
                               "temperature": 1.0, "seed": seed, "max_tokens": 60}));
        let (status, v) = post(&server.base, "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.trim_start().starts_with('{'), "{content}");
        if v["choices"][0]["finish_reason"] == "stop" {
            assert!(serde_json::from_str::<Value>(content).unwrap().is_object());
        }
    }
}

#[test]
fn schemas_that_cannot_be_held_to_and_bad_sampling_fields_are_refused() {
    let model = common::fixture("tiny-llama3");
    let server = start(&["--model", model.to_str().unwrap()]);
    let mut pattern = verdict_schema();
    pattern["json_schema"]["schema"]["properties"]["note"] =
        json!({"type": "string", "pattern": "^[a-z]+$"});
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &chat(json!({"response_format": pattern})).to_string(),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "response_format");
    assert_eq!(v["error"]["code"], "unsupported_schema");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("pattern") && message.contains("#/properties/note"),
        "{message}"
    );
    for (field, value) in [
        ("response_format", json!({"type": "json_schema"})),
        (
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "a b"}}),
        ),
        ("response_format", json!({"type": "xml"})),
        ("logit_bias", json!({"abc": 1})),
        ("logit_bias", json!({"5": 101})),
        ("logit_bias", json!({"99999999": 1})),
        ("frequency_penalty", json!(2.5)),
        ("presence_penalty", json!("high")),
    ] {
        let (status, v) = post(
            &server.base,
            "/v1/chat/completions",
            &chat(json!({ field: value })).to_string(),
        );
        assert_eq!(status, 400, "{field} {value}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        if field != "logit_bias" || value != json!({"99999999": 1}) {
            assert_eq!(v["error"]["param"], field, "{v}");
        }
    }
}

#[test]
fn logit_bias_and_penalties_are_honoured_locally() {
    let model = common::fixture("tiny-llama3");
    let server = start(&["--model", model.to_str().unwrap()]);
    let reply = |extra: Value| {
        let body = chat(json!({"max_tokens": 8}));
        let mut body = body;
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = post(&server.base, "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let plain = reply(json!({}));
    // Token 15339 is "hello" in Llama 3's vocabulary: +100 makes every token that one.
    assert_eq!(
        reply(json!({"logit_bias": {"15339": 100}})),
        "hello".repeat(8)
    );
    assert_ne!(
        reply(json!({"frequency_penalty": 2, "presence_penalty": 2})),
        plain
    );
    // Tools the model is told not to call are no obstacle for a local model.
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {}}}}]);
    assert_eq!(reply(json!({"tools": tools, "tool_choice": "none"})), plain);
}

#[test]
fn the_openai_clients_parse_helper_gets_its_pydantic_model() {
    let model = common::fixture("tiny-llama3");
    let server = start(&["--model", model.to_str().unwrap()]);
    let stdout = common::run_conformance("openai_structured.py", &[&server.base]);
    assert!(stdout.contains("openai structured output: ok"), "{stdout}");
}
