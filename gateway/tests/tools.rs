//! Function calling through the gateway: tools relayed to an upstream model, its calls
//! relayed back (whole and streamed) once the checks cleared them, code in a call's
//! arguments scanned like fenced code, tools the policy does not allow refused, and the
//! official `openai` client's tool flow end to end.

mod common;

use std::sync::{Arc, Mutex};

use common::{policy_dir, post, serve_raw, sse_response, start, Server};
use serde_json::{json, Value};

/// A stand-in for a tool-calling model behind an OpenAI-compatible server: asked with
/// tools, it calls one (streamed in pieces: name first, then the arguments in fragments);
/// given the tool's result, it answers in words. Which tool: `run_python` when the user
/// asks to run code (with an insecure program when asked for "user input"), else
/// `get_weather`. Keeps every request body.
fn tool_model(bodies: Arc<Mutex<Vec<Value>>>) -> String {
    let base = serve_raw(move |_, body| {
        let request: Value = serde_json::from_slice(body).unwrap();
        bodies.lock().unwrap().push(request.clone());
        let messages = request["messages"].as_array().unwrap();
        let last = messages.last().unwrap();
        if last["role"] == "tool" {
            return Some(sse_response(&[
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "It is "}, "finish_reason": null}]}),
                json!({"choices": [{"index": 0, "delta": {"content": "21 C in Paris."}, "finish_reason": "stop"}]}),
            ]));
        }
        let user = last["content"].as_str().unwrap_or("");
        let (name, args) = if user.contains("run") {
            let code = if user.contains("user input") {
                "import os\nuser_input = input()\nos.system(user_input)"
            } else {
                "print(sum(range(10)))"
            };
            ("run_python", json!({"code": code}).to_string())
        } else {
            ("get_weather", json!({"city": "Paris"}).to_string())
        };
        let (a, b) = args.split_at(args.len() / 2);
        Some(sse_response(&[
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null,
                "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": ""}}]}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": a}}]}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": b}}]}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 30, "completion_tokens": 12}}),
        ]))
    });
    format!("{base}/v1")
}

const TOOLS: &str = r#"[
  {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
  {"type": "function", "function": {"name": "run_python", "description": "Run a Python program",
   "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}
]"#;

fn gateway(upstream: &str, policy: &str) -> (Server, tempfile::TempDir) {
    let policies = policy_dir(policy);
    let config = policies.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[[models]]\nname = \"agent\"\nupstream = \"{upstream}\"\nretries = 0\n"),
    )
    .unwrap();
    let server = start(&[
        "--config",
        config.to_str().unwrap(),
        "--policies",
        policies.path().to_str().unwrap(),
    ]);
    (server, policies)
}

fn ask(content: &str, stream: bool) -> Value {
    json!({"model": "agent", "stream": stream, "tools": serde_json::from_str::<Value>(TOOLS).unwrap(),
           "tool_choice": "auto", "parallel_tool_calls": false,
           "response_format": {"type": "text"}, "user": "u-42",
           "messages": [{"role": "user", "content": content}]})
}

/// A streamed response's chunks.
fn stream(base: &str, body: &Value) -> Vec<Value> {
    let text = ureq::post(&format!("{base}/v1/chat/completions"))
        .send_json(body.clone())
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn tool_calls_are_relayed_both_ways_whole_and_streamed() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (server, _p) = gateway(&tool_model(bodies.clone()), "name: default\n");
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask("Weather in Paris?", false).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_1");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    // What the upstream was sent: the tools and the fields that go with them.
    let sent = bodies.lock().unwrap()[0].clone();
    assert_eq!(sent["tools"], serde_json::from_str::<Value>(TOOLS).unwrap());
    assert_eq!(sent["tool_choice"], "auto");
    assert_eq!(sent["parallel_tool_calls"], false);
    assert_eq!(sent["response_format"], json!({"type": "text"}));
    assert_eq!(sent["user"], "u-42");

    // The tool's result goes back with the assistant's call, as the client sent them.
    let mut follow = ask("Weather in Paris?", false);
    follow["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 21}"}
    ]);
    let (status, v) = post(&server.base, "/v1/chat/completions", &follow.to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "It is 21 C in Paris."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let sent = bodies.lock().unwrap()[1].clone();
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(sent["messages"][1]["content"], Value::Null);
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 21}"})
    );

    // Streamed: the call arrives whole in one chunk, then `tool_calls` as the finish.
    let chunks = stream(&server.base, &ask("Weather in Paris?", true));
    let with_calls: Vec<&Value> = chunks
        .iter()
        .filter(|c| c.pointer("/choices/0/delta/tool_calls").is_some())
        .collect();
    assert_eq!(with_calls.len(), 1, "{chunks:?}");
    let call = &with_calls[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(call["index"], 0);
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
}

#[test]
fn code_in_a_call_is_scanned_and_an_insecure_call_never_reaches_the_client() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (server, _p) = gateway(
        &tool_model(bodies),
        "name: default\ntools: { code: [run_python] }\n",
    );
    // A harmless program passes.
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask("Please run the sum", false).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "run_python"
    );
    // `os.system(user_input)` in run_python's argument: blocked, whole and streamed, and
    // not a byte of the call leaves.
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask("Please run this with user input", false).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
    assert!(!v.to_string().contains("os.system"), "{v}");
    let reasons = v["choices"][0]["content_filter_results"].to_string();
    assert!(reasons.contains("CWE-78"), "{reasons}");
    let chunks = stream(&server.base, &ask("Please run this with user input", true));
    let text = serde_json::to_string(&chunks).unwrap();
    assert!(
        !text.contains("os.system") && !text.contains("tool_calls\":[{"),
        "{text}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "content_filter"
    );
}

#[test]
fn tools_the_policy_does_not_allow_are_refused_or_flagged() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let model = tool_model(bodies);
    let (server, _p) = gateway(&model, "name: default\ntools: { allow: [get_weather] }\n");
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask("Weather in Paris?", false).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask("Please run the sum", false).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert!(v.to_string().contains("tool_not_allowed"), "{v}");

    let (server, _p) = gateway(
        &model,
        "name: default\ntools: { deny: [run_python], action: flag }\n",
    );
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask("Please run the sum", false).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    assert!(
        v["choices"][0]["content_filter_results"]
            .to_string()
            .contains("tool_not_allowed"),
        "{v}"
    );
}

#[test]
fn what_cannot_be_honoured_is_refused_not_dropped() {
    let model = common::fixture("tiny-llama3");
    let server = start(&["--model", model.to_str().unwrap()]);
    for (field, value) in [
        ("logprobs", json!(true)),
        ("functions", json!([])),
        ("tool_choice", json!("sometimes")),
    ] {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], field: value});
        let (status, v) = post(&server.base, "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 400, "{field}: {v}");
        assert_eq!(v["error"]["param"], field, "{v}");
    }
    let body = json!({"messages": [{"role": "tool", "content": "42"}]});
    let (status, v) = post(&server.base, "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tool_call_id"),
        "{v}"
    );
}

#[test]
fn the_official_openai_client_tool_flow() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (server, _p) = gateway(
        &tool_model(bodies),
        "name: default\ntools: { code: [run_python] }\n",
    );
    let stdout = common::run_conformance("openai_tools.py", &[&server.base]);
    assert!(stdout.contains("tools: ok"));
}
