//! Function calling on the local model, through HTTP: a call the request demands
//! (`tool_choice` `required` or a named function) held to the function's parameters, whole
//! and streamed alike; calls checked by the policy like an upstream's; a multi-turn history
//! of calls and results taken; parameters that cannot be held to refused with where; and
//! the official `openai` client's flow (`scripts/conformance/openai_local_tools.py`).

mod common;

use common::{policy_dir, post, start};
use serde_json::{json, Value};

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {
             "city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["celsius", "fahrenheit"]}},
             "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "The time now",
         "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
             "required": ["zone"]}}}
    ])
}

fn ask(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": tools(),
        "max_tokens": 120
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

// The parameters are enums: a random-weight model writing a free string rambles to
// `max_tokens`.

/// The arguments of a call to `name`, which must follow its parameters.
fn check_call(call: &Value, names: &[&str]) -> String {
    let name = call["function"]["name"].as_str().unwrap().to_string();
    assert!(names.contains(&name.as_str()), "{call}");
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
    assert_eq!(call["type"], "function");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {call}"));
    match name.as_str() {
        "get_weather" => {
            assert!(["Paris", "Oslo"].contains(&args["city"].as_str().unwrap()));
            assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()));
            assert_eq!(args.as_object().unwrap().len(), 2, "{args}");
        }
        _ => assert!(["UTC", "CET"].contains(&args["zone"].as_str().unwrap())),
    }
    name
}

/// A streamed reply's text, calls (assembled by index) and finish reason.
fn streamed(base: &str, body: &Value) -> (String, Vec<Value>, String) {
    let text = ureq::post(&format!("{base}/v1/chat/completions"))
        .send_json(body.clone())
        .unwrap()
        .into_string()
        .unwrap();
    let (mut content, mut calls, mut finish) = (String::new(), Vec::<Value>::new(), String::new());
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        let delta = &v["choices"][0]["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        for piece in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = piece["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.push(json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
            }
            let c = &mut calls[i];
            if let Some(id) = piece["id"].as_str() {
                c["id"] = json!(id);
            }
            for key in ["name", "arguments"] {
                if let Some(s) = piece["function"][key].as_str() {
                    let joined = format!("{}{s}", c["function"][key].as_str().unwrap());
                    c["function"][key] = json!(joined);
                }
            }
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (content, calls, finish)
}

#[test]
fn a_demanded_call_follows_the_parameters_whole_and_streamed() {
    let model = common::fixture("tiny-llama3");
    let server = start(&["--model", model.to_str().unwrap()]);
    for (seed, choice) in [
        (1, json!("required")),
        (2, json!("required")),
        (
            3,
            json!({"type": "function", "function": {"name": "get_time"}}),
        ),
    ] {
        let body = ask(json!({"tool_choice": choice, "seed": seed, "temperature": 1.0}));
        let (status, v) = post(&server.base, "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        let choice0 = &v["choices"][0];
        assert_eq!(choice0["finish_reason"], "tool_calls", "{v}");
        assert!(choice0["message"]["content"].is_null(), "{v}");
        let calls = choice0["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1, "{v}");
        let allowed: &[&str] = if body["tool_choice"].is_string() {
            &["get_weather", "get_time"]
        } else {
            &["get_time"]
        };
        let name = check_call(&calls[0], allowed);

        // Streamed: the same call (same seed), in one piece after the checks, no text.
        let mut body = body.clone();
        body["stream"] = json!(true);
        let (content, scalls, finish) = streamed(&server.base, &body);
        assert_eq!((content.as_str(), finish.as_str()), ("", "tool_calls"));
        assert_eq!(scalls.len(), 1);
        assert_eq!(check_call(&scalls[0], allowed), name);
        assert_eq!(
            scalls[0]["function"]["arguments"],
            calls[0]["function"]["arguments"]
        );
    }

    // Cut short by max_tokens: finish_reason "length" and the call as far as it got (the
    // named function once its name is whole, the arguments so far), as OpenAI answers;
    // never the prompt's call markup as text.
    for max_tokens in [2, 9, 14, 20] {
        let body = ask(
            json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}},
                              "max_tokens": max_tokens, "seed": 3}),
        );
        let (status, v) = post(&server.base, "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "length", "{v}");
        assert!(!v.to_string().contains("tool_call>"), "{v}");
        for call in c["message"]["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(call["function"]["name"], "get_time", "{v}");
            let args = call["function"]["arguments"].as_str().unwrap();
            assert!(args.is_empty() || args.starts_with('{'), "{v}");
        }
        let mut body = body.clone();
        body["stream"] = json!(true);
        let (content, scalls, finish) = streamed(&server.base, &body);
        assert_eq!((content.as_str(), finish.as_str()), ("", "length"));
        assert_eq!(
            scalls.len(),
            c["message"]["tool_calls"].as_array().map_or(0, Vec::len)
        );
    }
}

#[test]
fn auto_answers_and_a_history_of_calls_and_results_is_taken() {
    let model = common::fixture("tiny-llama3");
    let server = start(&["--model", model.to_str().unwrap()]);
    let history = json!([
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_a", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "{\"celsius\": 21}"}
    ]);
    let mut prompt_tokens = Vec::new();
    for choice in ["auto", "none"] {
        let body = ask(json!({"messages": history, "tool_choice": choice, "max_tokens": 16}));
        let (status, v) = post(&server.base, "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        // Random weights: text, or a call that names an offered function.
        match c["message"]["tool_calls"].as_array() {
            Some(calls) => {
                assert_eq!(choice, "auto");
                let name = calls[0]["function"]["name"].as_str().unwrap();
                assert!(["get_weather", "get_time"].contains(&name), "{v}");
            }
            None => assert!(c["message"]["content"].is_string(), "{v}"),
        }
        prompt_tokens.push(v["usage"]["prompt_tokens"].as_u64().unwrap());
    }
    // With `auto` the tools are described in the prompt; with `none` they are not.
    assert!(
        prompt_tokens[0] > prompt_tokens[1] + 100,
        "{prompt_tokens:?}"
    );
}

#[test]
fn demanded_calls_pass_through_the_policy_and_parameters_that_cannot_be_held_are_refused() {
    let model = common::fixture("tiny-llama3");
    let policies = policy_dir("name: default\ntools: { deny: [get_weather] }\n");
    let server = start(&[
        "--model",
        model.to_str().unwrap(),
        "--policies",
        policies.path().to_str().unwrap(),
    ]);
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask(json!({"tool_choice": named})).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");

    let mut bad = tools();
    bad[1]["function"]["parameters"]["properties"]["zone"] =
        json!({"type": "string", "pattern": "^[A-Z]+$"});
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask(json!({"tools": bad, "tool_choice": "required"})).to_string(),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "unsupported_schema");
    assert_eq!(v["error"]["param"], "tools");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("get_time") && message.contains("pattern"),
        "{v}"
    );
    // With `auto` nothing is held to the parameters: the same tools are taken.
    let (status, v) = post(
        &server.base,
        "/v1/chat/completions",
        &ask(json!({"tools": bad, "tool_choice": "auto", "max_tokens": 8})).to_string(),
    );
    assert_eq!(status, 200, "{v}");
}

#[test]
fn the_official_openai_client_with_a_local_model() {
    let model = common::fixture("tiny-llama3");
    let server = start(&["--model", model.to_str().unwrap()]);
    let stdout = common::run_conformance("openai_local_tools.py", &[&server.base]);
    assert!(stdout.contains("local tools: ok"), "{stdout}");
}
