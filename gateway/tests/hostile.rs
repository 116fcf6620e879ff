//! Hostile clients and upstreams over real HTTP: random request bodies, random upstream
//! streams, a full audit disk, slow readers, keep-alive reuse.

mod common;

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Value};

/// JSON values of any shape, biased towards the fields a chat request has.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,40}".prop_map(Value::String),
        Just(json!("user")),
        Just(json!("assistant")),
        Just(json!("<|eot_id|>")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("messages".to_string()),
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("max_tokens".to_string()),
                        Just("stream".to_string()),
                        Just("stop".to_string()),
                        Just("temperature".to_string()),
                        Just("n".to_string()),
                        "[a-z_]{1,12}",
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[test]
fn random_request_bodies_get_an_answer_never_a_server_error() {
    // The full path: the embedded default guard judging, the shield scanning (the default
    // policy), the tiny model answering.
    let dir = tempfile::tempdir().unwrap();
    let guard = dir.path().join("safegate-guard");
    install_default_guard(&guard);
    let model = fixture("tiny-llama3");
    let s = start(&[
        "--model",
        model.to_str().unwrap(),
        "--guard-model",
        guard.to_str().unwrap(),
        "--audit-log",
        "off",
    ]);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        ..ProptestConfig::default()
    });
    let check = |body: String| -> Result<(), TestCaseError> {
        for path in [
            "/v1/chat/completions",
            "/v1/moderations",
            "/v1/shield/scan",
            "/v1/guard/classify",
        ] {
            let (code, text) = match agent
                .post(&format!("{}{path}", s.base))
                .set("content-type", "application/json")
                .send_string(&body)
            {
                Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
                Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
                Err(e) => return Err(TestCaseError::fail(format!("{path}: {e} for {body}"))),
            };
            // A 5xx only as a failing check under a fail-closed policy says it (503
            // guard_error / shield_error); nothing else.
            let fail_closed = code == 503
                && serde_json::from_str::<Value>(&text).is_ok_and(|v| {
                    matches!(
                        v["error"]["code"].as_str(),
                        Some("guard_error" | "shield_error")
                    )
                });
            prop_assert!(
                code < 500 || fail_closed,
                "{path}: {code} {text} for {body}"
            );
            if code != 200 && !text.starts_with("data:") {
                let v: Value = serde_json::from_str(&text)
                    .map_err(|_| TestCaseError::fail(format!("not JSON: {text}")))?;
                prop_assert!(v["error"]["message"].is_string(), "{text}");
            }
        }
        Ok(())
    };
    // Shapes from the generator, and chat requests with random (but valid-shaped) fields.
    runner.run(&json_value(), |v| check(v.to_string())).unwrap();
    runner
        .run(
            &(json_value(), json_value(), json_value()),
            |(content, max_tokens, stop)| {
                let body = json!({"messages": [{"role": "user", "content": content}],
                                  "max_tokens": max_tokens, "stop": stop});
                check(body.to_string())
            },
        )
        .unwrap();
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..200), |bytes| {
            check(String::from_utf8_lossy(&bytes).into_owned())
        })
        .unwrap();
    // And the server is still itself afterwards.
    assert_eq!(
        agent
            .get(&format!("{}/healthz", s.base))
            .call()
            .unwrap()
            .status(),
        200
    );
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
}

/// An upstream answering with random bytes, truncated SSE or odd events: every reply is a
/// clean 200 or a 502/504 error, never a hang or a panic.
#[test]
fn random_upstream_streams_are_relayed_or_refused_cleanly() {
    let bodies: Vec<Vec<u8>> = {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let event = prop_oneof![
            json_value().prop_map(|v| format!("data: {v}\n\n").into_bytes()),
            "\\PC{0,30}".prop_map(|s| format!(
                "data: {{\"choices\": [{{\"delta\": {{\"content\": {}}}}}]}}\n\n",
                json!(s)
            )
            .into_bytes()),
            prop::collection::vec(any::<u8>(), 0..40),
            Just(b"data: [DONE]\n\n".to_vec()),
            Just(b": keep-alive\n\n".to_vec()),
        ];
        let strategy = prop::collection::vec(event, 0..6).prop_map(|e: Vec<Vec<u8>>| e.concat());
        (0..60)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .collect()
    };
    let n = bodies.len();
    let upstream = serve_raw(move |i, _| {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
        bodies.get(i).map(|body| [head.as_slice(), body].concat())
    }) + "/v1";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[[models]]\nname = \"random\"\nupstream = \"{upstream}\"\ntimeout_ms = 3000\n"),
    )
    .unwrap();
    let s = start(&["--config", config.to_str().unwrap(), "--audit-log", "off"]);
    for i in 0..n {
        let stream = i % 2 == 1;
        let t0 = Instant::now();
        let r = ureq::post(&format!("{}/v1/chat/completions", s.base))
            .send_json(json!({"model": "random", "messages": [{"role": "user", "content": "hi"}], "stream": stream}));
        let (code, text) = match r {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            Err(e) => panic!("case {i}: {e}"),
        };
        assert!(matches!(code, 200 | 502 | 504), "case {i}: {code} {text}");
        if stream && code == 200 {
            // A stream ends either complete or with an error event, never cut silently.
            assert!(
                text.ends_with("data: [DONE]\n\n") || text.contains("\"error\""),
                "case {i}: {text}"
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "case {i} took {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn a_full_audit_disk_refuses_requests_rather_than_losing_their_record() {
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    let s = start(&["--audit-log", "/dev/full"]);
    let (code, v) = post(
        &s.base,
        "/v1/shield/scan",
        r#"{"text": "x = 1", "language": "python"}"#,
    );
    assert_eq!(code, 500, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audit log"),
        "{v}"
    );
    let metrics = metrics(&s.base);
    assert!(
        metrics.contains("safegate_audit_write_errors_total 1"),
        "{metrics}"
    );
}

#[test]
fn slow_readers_and_reused_connections_get_whole_streams() {
    let model = fixture("tiny-llama3");
    let s = start(&["--model", model.to_str().unwrap()]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    // Two streamed requests on one keep-alive connection, the first read slowly.
    for (n, slow) in [(60, true), (5, false)] {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": n, "stream": true}).to_string();
        write!(
            conn,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        // Chunked body: read chunks until the zero-length one.
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
            if slow {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(text.contains(r#""finish_reason":"length""#), "{text}");
    }
}

/// A remote guard that reads the prompt it is sent (token ids, decoded with the guard's
/// tokenizer) and calls it unsafe exactly when the conversation contains `marker`.
fn marker_guard(marker: &'static str) -> String {
    let tokenizer = tokenizers::Tokenizer::from_file(fixture("tiny-llama3").join("tokenizer.json"))
        .expect("run scripts/setup.sh");
    serve_raw(move |_, body| {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let ids: Vec<u32> = request["prompt"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|v| v as u32)
                    .collect()
            })
            .unwrap_or_default();
        let text = tokenizer.decode(&ids, false).unwrap_or_default();
        Some(logprobs_answer(if text.contains(marker) {
            0.99
        } else {
            0.01
        }))
    })
}

/// Unsafe text placed before, on and after every re-score boundary never reaches the
/// client, not even in part; the stream ends with content_filter.
#[test]
fn unsafe_text_at_any_window_boundary_never_reaches_the_client() {
    let guard = marker_guard("FORBIDDEN");
    // Upstream replies: 12 harmless deltas with the marker as delta number `at`.
    let replies: Vec<Vec<u8>> = (1..=12)
        .map(|at| {
            let mut words: Vec<String> = (1..=12).map(|i| format!("w{i} ")).collect();
            words[at - 1] = "FORBIDDEN ".into();
            sse_response(&words.iter().map(|w| delta(w)).collect::<Vec<_>>())
        })
        .collect();
    let upstream = serve_raw(move |i, _| replies.get(i).cloned()) + "/v1";
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_dir(
        "name: default\nstreaming: { rescore_every_tokens: 4, hold_back_tokens: 2 }\nshield: { enabled: false }\n",
    );
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[guard_remote]\nbase_url = \"{guard}\"\nmodel = \"guard\"\ntokenizer = \"{}\"\n\n[[models]]\nname = \"scripted\"\nupstream = \"{upstream}\"\n",
            fixture("tiny-llama3").display()
        ),
    )
    .unwrap();
    let s = start(&[
        "--config",
        config.to_str().unwrap(),
        "--policies",
        policies.path().to_str().unwrap(),
        "--audit-log",
        "off",
    ]);
    for at in 1..=12 {
        let text = ureq::post(&format!("{}/v1/chat/completions", s.base))
            .send_json(json!({"model": "scripted", "stream": true,
                              "messages": [{"role": "user", "content": "say something"}]}))
            .unwrap()
            .into_string()
            .unwrap();
        let mut sent = String::new();
        let mut finish = None;
        for frame in text.split("\n\n").filter_map(|f| f.strip_prefix("data: ")) {
            if frame == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(frame).unwrap();
            if v["choices"][0]["finish_reason"].is_string() {
                finish = v["choices"][0]["finish_reason"]
                    .as_str()
                    .map(str::to_string);
                continue; // the last chunk carries the policy's message, not model text
            }
            sent.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        assert_eq!(
            finish.as_deref(),
            Some("content_filter"),
            "marker at {at}: {text}"
        );
        assert!(!sent.contains('F'), "marker at {at}: leaked {sent:?}");
        // Everything before the marker that was released is the reply's own prefix.
        let expected_prefix: String = (1..at).map(|i| format!("w{i} ")).collect();
        assert!(
            expected_prefix.starts_with(&sent),
            "marker at {at}: sent {sent:?}"
        );
    }
}

/// What a web page could make a browser send to a keyless gateway on loopback: another
/// host name (DNS rebinding), another origin, a form body. All refused; a local client's
/// JSON is served.
#[test]
fn a_keyless_gateway_refuses_what_a_browser_would_send_for_a_web_page() {
    let s = start(&["--audit-log", "off"]);
    let port = s.base.rsplit(':').next().unwrap().to_string();
    let send = |headers: &str, body: &str| -> (u16, String) {
        let mut conn = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        write!(
            conn,
            "POST /v1/shield/scan HTTP/1.1\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        (status, text)
    };
    let body = r#"{"text": "x = 1"}"#;
    let json = "content-type: application/json\r\n";
    let (code, text) = send(&format!("host: localhost:{port}\r\n{json}"), body);
    assert_eq!(code, 200, "{text}");
    let (code, text) = send(
        &format!("host: 127.0.0.1:{port}\r\norigin: http://localhost:3000\r\n{json}"),
        body,
    );
    assert_eq!(code, 200, "a local page is a local client: {text}");
    let (code, text) = send(&format!("host: attacker.example:{port}\r\n{json}"), body);
    assert_eq!(code, 403, "DNS rebinding: {text}");
    let (code, text) = send(
        &format!("host: localhost:{port}\r\norigin: https://attacker.example\r\n{json}"),
        body,
    );
    assert_eq!(code, 403, "cross-origin: {text}");
    let (code, text) = send(
        &format!("host: localhost:{port}\r\ncontent-type: text/plain\r\n"),
        body,
    );
    assert_eq!(code, 415, "a form-style body: {text}");
    assert!(text.contains("application/json"), "{text}");
}
