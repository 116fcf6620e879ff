//! The real `safegate serve` binary over HTTP, with the fixture models.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn chat_shield_errors_and_metrics() {
    let model = fixture("tiny-llama3");
    let s = start(&["--model", model.to_str().unwrap()]);

    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["choices"][0]["message"]["content"].is_string());

    let (code, v) = post(&s.base, "/v1/chat/completions", "{not json");
    assert_eq!(code, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
    );
    assert_eq!(code, 400);
    assert_eq!(v["error"]["param"], "messages");
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#,
    );
    assert_eq!((code, v["error"]["param"].as_str()), (400, Some("n")));
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
    );
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 600}"#,
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("context_length_exceeded")),
        "{v}"
    );

    let (code, v) = post(
        &s.base,
        "/v1/shield/scan",
        &json!({"text": "```python\nimport pickle\npickle.loads(data)\n```\n"}).to_string(),
    );
    assert_eq!(code, 200);
    assert_eq!(v["findings"][0]["rule"], "py.unsafe-deserialization");
    assert_eq!(v["decision"]["action"], "flag");
    let (code, _) = post(&s.base, "/v1/shield/scan", r#"{"text": 5}"#);
    assert_eq!(code, 400);

    let models: Value = ureq::get(&format!("{}/v1/models", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-llama3");
    // One model by id (the openai client's `models.retrieve`); an unknown one is a 404.
    let one: Value = ureq::get(&format!("{}/v1/models/tiny-llama3", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(one, models["data"][0]);
    match ureq::get(&format!("{}/v1/models/gpt-4o", s.base)).call() {
        Err(ureq::Error::Status(404, r)) => {
            let e: Value = r.into_json().unwrap();
            assert_eq!(e["error"]["code"], "model_not_found", "{e}");
            assert!(e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("tiny-llama3"));
        }
        other => panic!("{other:?}"),
    }
    let ready: Value = ureq::get(&format!("{}/readyz", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(ready["chat_model"]["provider"], "cpu");
    // Plain attention on the CPU: no binding (it only pays with shared KV buffers).
    assert_eq!(ready["chat_model"]["io_binding"], false, "{ready}");
    assert_eq!(ready["chat_model"]["kv_shared"], false, "{ready}");
    assert_eq!(ready["policy_version"], 1);

    let metrics = metrics(&s.base);
    assert!(
        metrics.contains(r#"safegate_requests_total{endpoint="chat_completions",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"safegate_requests_total{endpoint="chat_completions",outcome="client_error"} 5"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"safegate_shield_findings_total{action="flag",cwe="CWE-502",language="python",severity="warning"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"safegate_tokens_total{direction="out"} 5"#));

    // The series the shipped dashboard and alerts read exist from start-up, at 0.
    let fresh = common::metrics(&s.base);
    for series in [
        r#"safegate_check_errors_total{check="guard",outcome="fail_open"} 0"#,
        r#"safegate_check_errors_total{check="shield",outcome="fail_closed"} 0"#,
        r#"safegate_policy_reloads_total{outcome="rejected",trigger="file_change"} 0"#,
        r#"safegate_policy_reloads_total{outcome="ok",trigger="admin"} 0"#,
    ] {
        assert!(fresh.contains(series), "{series} missing: {fresh}");
    }
    let (code, v) = post(&s.base, "/v1/nope", "{}");
    assert_eq!(
        (code, v["error"]["message"].as_str()),
        (404, Some("no such endpoint"))
    );
    // A model this server does not serve: 404, the served ones named.
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tiny-llama3"),
        "{v}"
    );
    // A known endpoint with the wrong method: 405, the allowed method named.
    match ureq::get(&format!("{}/v1/chat/completions", s.base)).call() {
        Err(ureq::Error::Status(405, r)) => {
            assert_eq!(r.header("allow"), Some("POST"));
            let v: Value = r.into_json().unwrap();
            assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
        }
        other => panic!("expected 405: {other:?}"),
    }
    // /readyz counts distinct rules, and separately the (rule, language) pairs.
    let ready: Value = ureq::get(&format!("{}/readyz", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let (rules, pairs) = (
        ready["shield"]["rules"].as_u64().unwrap(),
        ready["shield"]["rule_language_pairs"].as_u64().unwrap(),
    );
    assert!(rules > 100 && rules < pairs, "{ready}");
}

#[test]
fn the_input_guard_blocks_with_content_filter() {
    // A policy whose input threshold is 0 makes every prompt unsafe: the request must be
    // refused before generation, Azure-style.
    let dir = policy_dir(
        "name: default\ninput: { threshold: 0.0, message: \"Blocked by test policy.\" }\n",
    );
    let s = start_guarded(&dir, &[]);
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "anything"}], "max_tokens": 3})
            .to_string(),
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["code"], "content_filter");
    assert_eq!(v["error"]["message"], "Blocked by test policy.");
    assert_eq!(v["error"]["content_filter_result"]["action"], "block");
    let metrics = metrics(&s.base);
    assert!(
        metrics.contains(
            r#"safegate_requests_total{endpoint="chat_completions",outcome="blocked"} 1"#
        ),
        "{metrics}"
    );
}

#[test]
fn refuses_open_listening_without_keys_and_reports_missing_models() {
    let out = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen on 0.0.0.0"));

    let s = start(&[]);
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
    );
    assert_eq!(code, 503);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no chat model"));
}

#[test]
fn the_official_openai_client_parses_our_responses() {
    let model = fixture("tiny-llama3");
    let open = start(&["--model", model.to_str().unwrap()]);
    let dir = policy_dir("name: default\ninput: { threshold: 0.0 }\n");
    let strict = start(&[
        "--model",
        model.to_str().unwrap(),
        "--guard-model",
        model.to_str().unwrap(),
        "--policies",
        dir.path().to_str().unwrap(),
    ]);
    let stdout = run_conformance("openai_client.py", &[&open.base, &strict.base]);
    assert!(stdout.contains("conformance: ok"));
    // An application on LangChain: invoke, stream with usage, a forced tool, structured
    // output by its three methods, async batches, a blocked prompt.
    let stdout = run_conformance("langchain_client.py", &[&open.base, &strict.base]);
    assert!(stdout.contains("langchain: ok"), "{stdout}");
}

fn policy_version(base: &str) -> u64 {
    let ready: Value = ureq::get(&format!("{base}/readyz"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    ready["policy_version"].as_u64().unwrap()
}

fn wait_for_version(base: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while policy_version(base) != want {
        assert!(
            Instant::now() < deadline,
            "policy version stayed {} (wanted {want})",
            policy_version(base)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn policies_reload_on_change_sighup_and_admin_call_and_bad_sets_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.yaml");
    std::fs::write(&file, "name: default\n").unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("audit.jsonl");
    let s = start_with_env(
        &[
            "--policies",
            dir.path().to_str().unwrap(),
            "--policy-poll-ms",
            "100",
            "--audit-log",
            log.to_str().unwrap(),
        ],
        &[("SAFEGATE_ADMIN_KEY", "sekret")],
    );
    assert_eq!(policy_version(&s.base), 1);

    // A valid edit goes into force.
    std::fs::write(&file, "name: default\ninput: { threshold: 0.3 }\n").unwrap();
    wait_for_version(&s.base, 2);

    // An invalid edit is rejected; the previous set stays in force and the metric counts it.
    std::fs::write(&file, "name: default\ninput: { threshold: 3 }\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&s.base);
        if m.contains(
            r#"safegate_policy_reloads_total{outcome="rejected",trigger="file_change"} 1"#,
        ) {
            break;
        }
        assert!(Instant::now() < deadline, "no rejection counted:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(policy_version(&s.base), 2);

    // The admin endpoint: wrong key, then the right one (after fixing the file).
    let (code, v) = match ureq::post(&format!("{}/admin/policies/reload", s.base))
        .set("authorization", "Bearer nope")
        .call()
    {
        Err(ureq::Error::Status(c, r)) => (c, r.into_json::<Value>().unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    std::fs::write(dir.path().join("other.yaml"), "name: other\n").unwrap();
    std::fs::write(&file, "name: default\n").unwrap();
    // Two writes: the watcher may see them as one change or as two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while policy_version(&s.base) < 3 {
        assert!(
            Instant::now() < deadline,
            "the fixed files were not reloaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Settled: the version stays the same for five poll intervals (the second write's
    // reload, if there is one, is done), so the admin call's version is the next one.
    let mut v = policy_version(&s.base);
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_millis(500) {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "versions never settled"
        );
        std::thread::sleep(Duration::from_millis(50));
        let now = policy_version(&s.base);
        if now != v {
            (v, stable_since) = (now, Instant::now());
        }
    }
    let r: Value = ureq::post(&format!("{}/admin/policies/reload", s.base))
        .set("authorization", "Bearer sekret")
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["policy_version"], v + 1);
    // Admin calls are audited, the refused one too.
    let admin: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["endpoint"] == "admin_policy_reload")
        .collect();
    assert_eq!(admin.len(), 2, "{admin:?}");
    assert_eq!(
        (&admin[0]["status"], &admin[0]["key_id"]),
        (&json!(401), &Value::Null)
    );
    assert_eq!(
        (&admin[1]["status"], &admin[1]["key_id"]),
        (&json!(200), &json!("admin"))
    );
    assert_eq!(admin[1]["policy_version"], v + 1);
    // A token on the command line is refused: `ps` would show it.
    let out = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args(["serve", "--admin-key", "sekret"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("SAFEGATE_ADMIN_KEY"),
        "{stderr}"
    );

    // SIGHUP reloads too.
    let status = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_version(&s.base, v + 2);
}

#[test]
fn a_slow_guard_fails_closed_or_open_as_the_policy_says() {
    let model = fixture("tiny-llama3");
    for (on_error, want) in [("fail_closed", 503u16), ("fail_open", 200)] {
        let dir = policy_dir(&format!("name: default\ninput: {{ timeout_ms: 1 }}\noutput: {{ enabled: false }}\non_error: {on_error}\n"));
        let s = start(&[
            "--model",
            model.to_str().unwrap(),
            "--guard-model",
            model.to_str().unwrap(),
            "--policies",
            dir.path().to_str().unwrap(),
        ]);
        let t0 = Instant::now();
        let (code, v) = post(&s.base, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hello there, how are you today?"}], "max_tokens": 2}).to_string());
        assert_eq!(code, want, "{on_error}: {v}");
        if want == 503 {
            assert_eq!(v["error"]["code"], "guard_error");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no verdict within 1 ms"),
                "{v}"
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        // A request the model's 512-token context cannot hold is the client's error, found
        // before the guard runs: 400 either way, and the guard's error count stays at 1.
        let (code, v) = post(
            &s.base,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 600})
                .to_string(),
        );
        assert_eq!(
            (
                code,
                v["error"]["code"].as_str(),
                v["error"]["param"].as_str()
            ),
            (400, Some("context_length_exceeded"), Some("messages")),
            "{on_error}: {v}"
        );
        let metrics = metrics(&s.base);
        let line =
            format!(r#"safegate_check_errors_total{{check="guard",outcome="{on_error}"}} 1"#);
        assert!(metrics.contains(&line), "{metrics}");
    }
}

#[test]
fn the_audit_log_is_recreated_when_removed_underneath() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let s = start(&["--audit-log", log.to_str().unwrap()]);
    let scan = |text: &str| {
        post(
            &s.base,
            "/v1/shield/scan",
            &json!({"text": text, "language": "python"}).to_string(),
        )
        .0
    };
    assert_eq!(scan("print(1)"), 200);
    std::fs::remove_file(&log).unwrap();
    assert_eq!(scan("eval(x)"), 200);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["endpoint"], "shield_scan");
    assert_eq!(lines[0]["decision"]["action"], "block");
    assert_eq!(lines[0]["text_sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn audit_records_blocks_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let pol = policy_dir("name: default\ninput: { threshold: 0.0 }\n");
    let s = start_guarded(&pol, &["--audit-log", log.to_str().unwrap()]);
    let secret = "my secret prompt text";
    post(
        &s.base,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": secret}]}).to_string(),
    );
    post(&s.base, "/v1/chat/completions", "{bad");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(secret), "prompts are stored as hashes");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["outcome"], "blocked");
    assert_eq!(lines[0]["error"], "content_filter");
    assert_eq!(lines[0]["input"]["decision"]["action"], "block");
    assert_eq!(lines[0]["policy"], "default");
    assert_eq!(lines[0]["prompt_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(lines[1]["status"], 400);
    assert_ne!(lines[0]["request_id"], lines[1]["request_id"]);
}

/// The audit files beside `log`: the rotated ones in name order, then the live one.
fn audit_files(log: &std::path::Path) -> Vec<PathBuf> {
    let name = log.file_name().unwrap().to_str().unwrap().to_string();
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.len() > name.len() + 1 && n.starts_with(&format!("{name}."))
        })
        .collect();
    rotated.sort();
    rotated.push(log.to_path_buf());
    rotated
}

#[test]
fn audit_rotation_keeps_every_acknowledged_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let texts: Vec<String> = (0..25).map(|i| format!("x = {i}\n")).collect();
    let scan_all = |s: &Server, texts: &[String]| {
        for t in texts {
            let (code, v) = post(&s.base, "/v1/shield/scan", &json!({"text": t}).to_string());
            assert_eq!(code, 200, "{v}");
        }
    };
    // Lines of ~300 bytes against a 600-byte limit: a rotation every line or two.
    let s = start(&[
        "--audit-log",
        log.to_str().unwrap(),
        "--audit-max-bytes",
        "600",
    ]);
    scan_all(&s, &texts[..15]);
    drop(s);
    // A restart goes on numbering after the files already there.
    let s = start(&[
        "--audit-log",
        log.to_str().unwrap(),
        "--audit-max-bytes",
        "600",
    ]);
    scan_all(&s, &texts[15..]);
    drop(s);
    let files = audit_files(&log);
    assert!(files.len() > 10, "{files:?}");
    let lines: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    // Every request's line, once, and the file names sort oldest first.
    let hashes: Vec<String> = lines
        .iter()
        .map(|l| l["text_sha256"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = texts.iter().map(|t| sha256_hex(t)).collect();
    assert_eq!(hashes, expected);
    let times: Vec<u64> = lines
        .iter()
        .map(|l| l["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // With --audit-keep, only the newest rotated files stay.
    let kept = dir.path().join("kept.jsonl");
    let s = start(&[
        "--audit-log",
        kept.to_str().unwrap(),
        "--audit-max-bytes",
        "600",
        "--audit-keep",
        "3",
    ]);
    scan_all(&s, &texts);
    drop(s);
    let files = audit_files(&kept);
    assert_eq!(files.len(), 4, "{files:?}");
    let last = std::fs::read_to_string(files.last().unwrap()).unwrap();
    assert!(last.contains(&sha256_hex(texts.last().unwrap())));
}

#[test]
fn moderations_follow_openai_schema_with_s_codes_alongside() {
    let pol = policy_dir("name: default\ninput: { threshold: 0.0 }\n");
    let model = fixture("tiny-llama3");
    let s = start(&[
        "--guard-model",
        model.to_str().unwrap(),
        "--policies",
        pol.path().to_str().unwrap(),
    ]);
    let (code, v) = post(
        &s.base,
        "/v1/moderations",
        &json!({"input": ["one", {"type": "text", "text": "two"}]}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    let r = &v["results"][0];
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(r["flagged"], true);
    assert_eq!(r["category_scores"].as_object().unwrap().len(), 13);
    assert_eq!(r["categories"].as_object().unwrap().len(), 13);
    assert_eq!(r["safegate"]["taxonomy"], "llama-guard-2");
    assert_eq!(r["safegate"]["categories"].as_object().unwrap().len(), 11);
    let (code, v) = post(&s.base, "/v1/moderations", r#"{"input": 7}"#);
    assert_eq!((code, v["error"]["param"].as_str()), (400, Some("input")));

    // The classify API: the agent type follows the conversation unless given.
    let convo =
        json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]);
    let (code, v) = post(
        &s.base,
        "/v1/guard/classify",
        &json!({"messages": convo}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["agent_type"], "agent");
    assert_eq!(v["policy"], "default");
    assert!(v["verdict"]["p_unsafe"].as_f64().unwrap() > 0.0);
    assert_eq!(v["decision"]["stage"], "output");
    let (code, v) = post(
        &s.base,
        "/v1/guard/classify",
        &json!({"messages": convo, "agent_type": "user"}).to_string(),
    );
    assert_eq!((code, v["agent_type"].as_str()), (200, Some("user")));
    assert_eq!(v["decision"]["action"], "block", "input threshold 0 blocks");
    let (code, v) = post(
        &s.base,
        "/v1/guard/classify",
        &json!({"messages": convo, "policy": "nope"}).to_string(),
    );
    assert_eq!((code, v["error"]["param"].as_str()), (400, Some("policy")));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("loaded: default"));
    let metrics = metrics(&s.base);
    assert!(
        metrics.contains(r#"safegate_queue_depth{model="guard"} 0"#),
        "{metrics}"
    );
    // Four classifications above (two moderation inputs, two classify calls; the unknown
    // policy is refused first), each at least one guard model run of at least one sequence.
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    let (runs, rows) = (
        value("safegate_guard_batches_total"),
        value("safegate_guard_batch_rows_total"),
    );
    assert!(runs >= 4 && rows >= runs, "{runs} runs, {rows} rows");
    // Moderation decisions are policy decisions too: two moderation inputs and one
    // classify call judged the user's turn, all blocked at threshold 0.
    assert_eq!(
        value(r#"safegate_policy_decisions_total{action="block",policy="default",stage="input"}"#),
        3
    );
}

/// POSTs a streaming request; the `data:` payloads in order.
fn sse(base: &str, body: &Value) -> Vec<String> {
    let r = ureq::post(&format!("{base}/v1/chat/completions"))
        .send_json(body.clone())
        .unwrap();
    assert_eq!(r.content_type(), "text/event-stream");
    let text = r.into_string().unwrap();
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| f.strip_prefix("data: ").expect(f).to_string())
        .collect()
}

/// The content deltas of a stream, its finish reason and its usage chunk.
fn parse_stream(frames: &[String]) -> (Vec<String>, Option<String>, Option<Value>) {
    assert_eq!(
        frames.last().map(String::as_str),
        Some("[DONE]"),
        "{frames:?}"
    );
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut deltas = Vec::new();
    let mut finish = None;
    let mut usage = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"], "one id per stream");
        if let Some(choice) = c["choices"].get(0) {
            if let Some(t) = choice["delta"]["content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                deltas.push(t.to_string());
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        } else {
            usage = Some(c["usage"].clone());
        }
    }
    (deltas, finish, usage)
}

#[test]
fn streams_equal_whole_responses_and_the_guard_releases_only_scored_text() {
    // Threshold 1.0: the output guard runs on every window but never blocks. The shield is
    // off: the tiny model's random tokens on one line would be held as possible code until
    // the end, and this test is about what the guard releases.
    let pol = policy_dir(
        "name: default\ninput: { threshold: 1.0 }\noutput: { threshold: 1.0 }\n\
         streaming: { rescore_every_tokens: 4, hold_back_tokens: 2 }\nshield: { enabled: false }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let s = start_guarded(&pol, &["--audit-log", log.to_str().unwrap()]);
    let messages = json!([{"role": "user", "content": "Tell me a story"}]);
    let (code, whole) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 24}).to_string(),
    );
    assert_eq!(code, 200, "{whole}");
    let frames = sse(
        &s.base,
        &json!({"messages": messages, "max_tokens": 24, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    let (deltas, finish, usage) = parse_stream(&frames);
    assert_eq!(
        deltas.concat(),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(
        deltas.len() >= 2,
        "released in steps, not all at the end: {deltas:?}"
    );
    assert_eq!(finish.as_deref(), Some("length"));
    let usage = usage.expect("include_usage sends a usage chunk");
    assert_eq!(usage["completion_tokens"], 24);
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + 24
    );

    let audit: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1]["stream"], true);
    assert_eq!(audit[1]["outcome"], "ok");
    assert_eq!(audit[1]["response_sha256"], audit[0]["response_sha256"]);
}

#[test]
fn an_unsafe_stream_ends_with_content_filter_before_any_text_leaks() {
    // Every response is unsafe at the output stage: the first score blocks, and nothing
    // generated before it may have been sent.
    let pol = policy_dir(
        "name: default\ninput: { threshold: 1.0 }\n\
         output: { threshold: 0.0, message: \"Withheld by test policy.\" }\n\
         streaming: { rescore_every_tokens: 4, hold_back_tokens: 2 }\n",
    );
    let s = start_guarded(&pol, &[]);
    let frames = sse(
        &s.base,
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": true}),
    );
    let (deltas, finish, usage) = parse_stream(&frames);
    assert_eq!(deltas, vec!["Withheld by test policy.".to_string()]);
    assert_eq!(finish.as_deref(), Some("content_filter"));
    assert!(usage.is_none());
    let last: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(
        last["choices"][0]["content_filter_results"]["action"],
        "block"
    );
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let model = fixture("tiny-llama3");
    // The tiny model writes random tokens on one line, which the shield holds as possible
    // code until the line ends; with the shield off the first frame comes at once.
    let pol = policy_dir("name: default\nshield: { enabled: false }\n");
    let s = start(&[
        "--model",
        model.to_str().unwrap(),
        "--policies",
        pol.path().to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
    ]);
    let r = ureq::post(&format!("{}/v1/chat/completions", s.base))
        .send_json(json!({"messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 400, "stream": true}))
        .unwrap();
    let mut reader = std::io::BufReader::new(r.into_reader());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
    assert!(first.starts_with("data: "), "{first}");
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["outcome"], "client_closed", "{v}");
            assert!(
                v.get("usage").is_none(),
                "the generation did not run to its end"
            );
            // Measured: once the gateway has noticed, the model runs at most one more
            // decode step.
            let steps = |m: &str| -> u64 {
                m.lines()
                    .find_map(|l| {
                        l.strip_prefix("safegate_decode_steps_total ")?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .unwrap_or_else(|| panic!("no decode step counter: {m}"))
            };
            let noticed = steps(&common::metrics(&s.base));
            std::thread::sleep(Duration::from_millis(300));
            let later = steps(&common::metrics(&s.base));
            assert!(
                later <= noticed + 1,
                "{} steps after the disconnect",
                later - noticed
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit line after the disconnect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// POSTs with a bearer token: (status, Retry-After, body).
fn post_as(
    base: &str,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut r = ureq::post(&format!("{base}{path}"));
    if let Some(k) = key {
        r = r.set("authorization", &format!("Bearer {k}"));
    }
    match r.send_json(body.clone()) {
        Ok(r) => (r.status(), None, r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (
            code,
            r.header("retry-after").map(str::to_string),
            r.into_json().unwrap(),
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn api_keys_authenticate_authorize_and_rate_limit() {
    // A key made by `safegate keys new`, as an operator would.
    let out = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args(["keys", "new", "--id", "team-a"])
        .output()
        .unwrap();
    let entry = String::from_utf8(out.stdout).unwrap();
    let key = entry
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_string();
    assert!(key.starts_with("sg-") && !entry.contains(&format!("sha256 = \"{key}")));
    let shield_only = "shield-only-secret";
    let shield_hash = sha256_hex(shield_only);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let config = dir.path().join("safegate.toml");
    std::fs::write(
        &config,
        format!(
            "{}requests_per_minute = 2\n\n[[keys]]\nid = \"scanner\"\nsha256 = \"{shield_hash}\"\nendpoints = [\"shield\"]\n",
            entry.lines().skip(1).collect::<Vec<_>>().join("\n") + "\n"
        ),
    )
    .unwrap();
    let model = fixture("tiny-llama3");
    let s = start(&[
        "--config",
        config.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
    ]);
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let scan = json!({"text": "eval(x)", "language": "python"});

    let (code, _, v) = post_as(&s.base, "/v1/chat/completions", None, &chat);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (code, _, _) = post_as(&s.base, "/v1/chat/completions", Some("sg-wrong"), &chat);
    assert_eq!(code, 401);
    let (code, _, v) = post_as(&s.base, "/v1/chat/completions", Some(shield_only), &chat);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    let (code, _, _) = post_as(&s.base, "/v1/shield/scan", Some(shield_only), &scan);
    assert_eq!(code, 200);

    for _ in 0..2 {
        let (code, _, v) = post_as(&s.base, "/v1/chat/completions", Some(&key), &chat);
        assert_eq!(code, 200, "{v}");
    }
    let (code, retry, v) = post_as(&s.base, "/v1/chat/completions", Some(&key), &chat);
    assert_eq!(
        (code, v["error"]["type"].as_str()),
        (429, Some("rate_limit_error"))
    );
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");

    let audit = std::fs::read_to_string(&log).unwrap();
    assert!(
        !audit.contains(&key) && !audit.contains(shield_only),
        "keys never reach the log"
    );
    let ids: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["key_id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![
            json!(null),
            json!(null),
            json!("scanner"),
            json!("scanner"),
            json!("team-a"),
            json!("team-a"),
            json!("team-a")
        ]
    );
}

/// SHA-256 in hex, computed by coreutils (independent of the server's code).
fn sha256_hex(text: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn bad_config_files_are_refused_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_safegate"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run("[[keys]]\nid = \"a\"\nsha256 = \"my-plain-key\"\n");
    assert!(
        e.contains("bad.toml: keys[0] (`a`)") && e.contains("64 hex digits"),
        "{e}"
    );
    let e = run("listen = \"127.0.0.1:0\"\nlisen = 3\n");
    assert!(
        e.contains("bad.toml") && e.contains("line 2") && e.contains("lisen"),
        "{e}"
    );
    let e = run(&format!(
        "[[keys]]\nid = \"a\"\nsha256 = \"{0}\"\n[[keys]]\nid = \"a\"\nsha256 = \"{0}\"\n",
        "ab".repeat(32)
    ));
    assert!(e.contains("used twice"), "{e}");
    // Keys allow listening beyond loopback.
    let e = run("listen = \"0.0.0.0:1\"\n");
    assert!(e.contains("refusing to listen on 0.0.0.0:1"), "{e}");
    // Two guards: refused, not one silently winning.
    let e = run("guard_model = \"g\"\n[guard_remote]\nbase_url = \"http://v:8000\"\nmodel = \"m\"\ntokenizer = \"t\"\n");
    assert!(
        e.contains("bad.toml") && e.contains("[guard_remote]") && e.contains("remove one"),
        "{e}"
    );
    // A CA file without TLS, and a scheme Redis does not have.
    let e = run("[redis]\nurl = \"redis://127.0.0.1:6379\"\nca_file = \"ca.pem\"\n");
    assert!(e.contains("bad.toml") && e.contains("rediss://"), "{e}");
    let e = run("[redis]\nurl = \"http://127.0.0.1:6379\"\n");
    assert!(e.contains("[redis] url must be"), "{e}");
}

/// A scripted upstream: the n-th request gets the n-th canned response (raw HTTP).
fn fake_upstream(responses: Vec<Vec<u8>>) -> String {
    format!("{}/v1", serve_raw(move |n, _| responses.get(n).cloned()))
}

fn upstream_config(dir: &tempfile::TempDir, models: &[(&str, &str)]) -> String {
    let text: String = models
        .iter()
        .map(|(name, url)| {
            format!("[[models]]\nname = \"{name}\"\nupstream = \"{url}\"\ntimeout_ms = 5000\n\n")
        })
        .collect();
    let path = dir.path().join("upstreams.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn upstream_models_are_relayed_with_the_same_checks() {
    // Upstream: another safegate serving the tiny model.
    let model = fixture("tiny-llama3");
    let inner = start(&["--model", model.to_str().unwrap()]);
    // A scripted upstream whose reply carries insecure code, in small pieces.
    let code = "Sure:\n```python\nimport os\nos.system(input())\n```\nDone.";
    let pieces: Vec<Value> = code
        .as_bytes()
        .chunks(7)
        .map(|c| delta(std::str::from_utf8(c).unwrap()))
        .collect();
    let warning = "```python\nimport hashlib\nh = hashlib.md5(data)\n```\n";
    let scripted = fake_upstream(vec![sse_response(&pieces), sse_response(&[delta(warning)])]);
    let garbage = fake_upstream(vec![
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {not json\n\n".into(),
    ]);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let config = upstream_config(
        &dir,
        &[
            ("remote-tiny", &format!("{}/v1", inner.base)),
            ("scripted", &scripted),
            ("garbage", &garbage),
            ("down", &closed),
        ],
    );
    // The inner safegate knows its model by its own name.
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "timeout_ms = 5000\n",
        "timeout_ms = 5000\nupstream_model = \"tiny-llama3\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let s = start(&["--config", &config]);

    let models: Value = ureq::get(&format!("{}/v1/models", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 4);

    let messages = json!([{"role": "user", "content": "Tell me a story"}]);
    let direct = post(
        &inner.base,
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 12}).to_string(),
    )
    .1;
    let (code, relayed) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "remote-tiny", "messages": messages, "max_tokens": 12}).to_string(),
    );
    assert_eq!(code, 200, "{relayed}");
    assert_eq!(relayed["model"], "remote-tiny");
    assert_eq!(
        relayed["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
    assert_eq!(relayed["usage"]["completion_tokens"], 12);
    let frames = sse(
        &s.base,
        &json!({"model": "remote-tiny", "messages": messages, "max_tokens": 12, "stream": true}),
    );
    let (deltas, finish, _) = parse_stream(&frames);
    assert_eq!(
        deltas.concat(),
        direct["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(finish.as_deref(), Some("length"));

    // The shield blocks the upstream's insecure code before any of it is relayed.
    let frames = sse(
        &s.base,
        &json!({"model": "scripted", "messages": messages, "stream": true}),
    );
    let (deltas, finish, _) = parse_stream(&frames);
    assert_eq!(finish.as_deref(), Some("content_filter"), "{frames:?}");
    let sent = deltas.concat();
    assert!(sent.starts_with("Sure:"), "{sent}");
    assert!(!sent.contains("os.system"), "insecure code leaked: {sent}");

    // A warning-level finding: the reply goes out with the policy's security note and a
    // flagged content_filter_results.
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "scripted", "messages": messages}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with(warning) && content.contains("Security note"),
        "{content}"
    );
    let results = &v["choices"][0]["content_filter_results"];
    assert_eq!(results["action"], "flag", "{results}");
    assert!(
        results["reasons"].to_string().contains("CWE-328"),
        "{results}"
    );

    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "garbage", "messages": messages}).to_string(),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (502, Some("upstream_error")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{v}"
    );
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "down", "messages": messages}).to_string(),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (502, Some("upstream_error")),
        "{v}"
    );
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "nope", "messages": messages}).to_string(),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{v}"
    );
}

/// Code without a fence is code too: an upstream streaming an insecure script without a
/// fence gets the same verdict as with one, whole and streamed, and the insecure line never
/// reaches the client.
#[test]
fn unfenced_code_from_an_upstream_is_held_until_scanned() {
    let script = "import os\nimport sys\n\ndef clean(path):\n    os.system(\"rm -rf \" + path)\n\nclean(sys.argv[1])\n";
    let unfenced = format!("Here is the script.\n{script}Run it with the folder as argument.\n");
    let fenced = format!(
        "Here is the script.\n```python\n{script}```\nRun it with the folder as argument.\n"
    );
    let pieces = |text: &str| -> Vec<u8> {
        let deltas: Vec<Value> = text
            .as_bytes()
            .chunks(5)
            .map(|c| delta(std::str::from_utf8(c).unwrap()))
            .collect();
        sse_response(&deltas)
    };
    let dir = tempfile::tempdir().unwrap();
    let config = upstream_config(
        &dir,
        &[
            (
                "unfenced",
                &fake_upstream(vec![pieces(&unfenced), pieces(&unfenced)]),
            ),
            (
                "fenced",
                &fake_upstream(vec![pieces(&fenced), pieces(&fenced)]),
            ),
        ],
    );
    let log = dir.path().join("audit.jsonl");
    let s = start(&["--config", &config, "--audit-log", log.to_str().unwrap()]);
    let messages = json!([{"role": "user", "content": "Write a cleanup script"}]);
    let mut streamed_bytes = Vec::new();
    for model in ["unfenced", "fenced"] {
        let (code, whole) = post(
            &s.base,
            "/v1/chat/completions",
            &json!({"model": model, "messages": messages}).to_string(),
        );
        assert_eq!(code, 200, "{whole}");
        assert_eq!(
            whole["choices"][0]["finish_reason"], "content_filter",
            "{model} whole: {whole}"
        );
        let frames = sse(
            &s.base,
            &json!({"model": model, "messages": messages, "stream": true}),
        );
        let (deltas, finish, _) = parse_stream(&frames);
        assert_eq!(
            finish.as_deref(),
            Some("content_filter"),
            "{model}: {frames:?}"
        );
        let sent = deltas.concat();
        assert!(
            !sent.contains("os.system"),
            "{model}: insecure code leaked: {sent}"
        );
        assert!(
            !sent.contains("import os"),
            "{model}: the script's start leaked: {sent}"
        );
        // The last delta is the policy's message, not the model's text.
        streamed_bytes.push(deltas[..deltas.len() - 1].concat().len());
    }
    // Whole or streamed, a block is counted as one, and the audit line says how much of
    // the reply the client was sent: nothing whole, the cleared prose streamed.
    let m = metrics(&s.base);
    assert!(
        m.contains(r#"safegate_requests_total{endpoint="chat_completions",outcome="blocked"} 4"#),
        "{m}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["outcome"], "blocked", "{line}");
        let expected = if i % 2 == 0 { 0 } else { streamed_bytes[i / 2] };
        assert_eq!(line["released_bytes"], expected, "{line}");
    }
    let code_at = [
        unfenced.find("import").unwrap(),
        fenced.find("import").unwrap(),
    ];
    assert_eq!(
        streamed_bytes, code_at,
        "the prose before the code, and no more"
    );
    let released: u64 = streamed_bytes.iter().map(|&b| b as u64).sum();
    assert!(
        m.contains(&format!(
            r#"safegate_released_bytes_total{{endpoint="chat_completions",outcome="blocked"}} {released}"#
        )),
        "{m}"
    );
}

/// Nothing an upstream says on an error path reaches the client: an error answer's body, a
/// malformed stream line and an in-stream error message go to the server log; the client
/// gets a fixed OpenAI-style error naming the model and the status.
#[test]
fn upstream_error_texts_never_reach_the_client() {
    let secret = "db_password=hunter2";
    let answer500 = format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nTraceback (most recent call last): {secret}"
    )
    .into_bytes();
    let answer400 = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{{\"error\": {{\"message\": \"bad field; {secret}\"}}}}"
    )
    .into_bytes();
    let malformed = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {{{secret}\n\n"
    )
    .into_bytes();
    let mut midstream = sse_response(&[delta("Hello")]);
    // Replace the stream's end with an in-stream error event.
    let text = String::from_utf8(midstream.clone()).unwrap();
    let cut = text.find("data: [DONE]").expect("a [DONE] line");
    midstream = format!(
        "{}data: {{\"error\": {{\"message\": \"{secret}\"}}}}\n\n",
        &text[..cut]
    )
    .into_bytes();
    let dir = tempfile::tempdir().unwrap();
    let config = upstream_config(
        &dir,
        &[
            ("e500", &fake_upstream(vec![answer500.clone(), answer500])),
            ("e400", &fake_upstream(vec![answer400.clone(), answer400])),
            (
                "malformed",
                &fake_upstream(vec![malformed.clone(), malformed]),
            ),
            (
                "midstream",
                &fake_upstream(vec![midstream.clone(), midstream]),
            ),
        ],
    );
    let s = start(&["--config", &config]);
    let messages = json!([{"role": "user", "content": "Tell me a story"}]);
    // The whole text of an answer, whatever its status.
    let raw = |body: Value| -> (u16, String) {
        match ureq::post(&format!("{}/v1/chat/completions", s.base)).send_json(body) {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    for (model, status, code) in [
        ("e500", 502, "upstream_error"),
        ("e400", 400, "upstream_rejected"),
        ("malformed", 502, "upstream_error"),
        ("midstream", 502, "upstream_error"),
    ] {
        let (got, text) = raw(json!({"model": model, "messages": messages}));
        assert!(
            !text.contains("hunter2"),
            "{model}: the upstream's text leaked: {text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{model}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(model), "{model}: {message}");
        let (_, text) = raw(json!({"model": model, "messages": messages, "stream": true}));
        assert!(
            !text.contains("hunter2"),
            "{model} streamed: the upstream's text leaked: {text}"
        );
    }
}

/// A real Prometheus server (Debian's `prometheus`; .ci/run installs it) scrapes the
/// gateway: the exposition parses, and the metrics can be queried with their labels.
#[test]
fn a_real_prometheus_scrapes_and_queries_the_metrics() {
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Prometheus is not installed: apt-get install prometheus (.ci/run does)");
    let model = fixture("tiny-llama3");
    let s = start(&["--model", model.to_str().unwrap()]);
    let (code, _) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).to_string(),
    );
    assert_eq!(code, 200);
    post(
        &s.base,
        "/v1/shield/scan",
        r#"{"text": "eval(x)", "language": "python"}"#,
    );

    let dir = tempfile::tempdir().unwrap();
    let target = s.base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: safegate\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = |q: &str| -> Option<Vec<Value>> {
        let v: Value = ureq::get(&format!("http://127.0.0.1:{port}/api/v1/query"))
            .query("query", q)
            .call()
            .ok()?
            .into_json()
            .ok()?;
        v["data"]["result"].as_array().cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut up = None;
    while Instant::now() < deadline {
        up = query(r#"up{job="safegate"}"#).filter(|r| !r.is_empty());
        if up.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let checks = (|| {
        let up = up.ok_or("Prometheus never scraped the gateway")?;
        if up[0]["value"][1] != "1" {
            return Err(format!("scrape failed: {up:?}"));
        }
        let ok = query(r#"safegate_requests_total{endpoint="chat_completions",outcome="ok"}"#)
            .unwrap_or_default();
        if ok.first().map(|r| r["value"][1].clone()) != Some(json!("1")) {
            return Err(format!("requests_total: {ok:?}"));
        }
        let findings = query(r#"sum by (cwe) (safegate_shield_findings_total{language="python"})"#)
            .unwrap_or_default();
        if findings.is_empty() {
            return Err("no shield findings series".into());
        }
        let p99 = query(
            // Over the counts so far (a rate needs two scrapes after the traffic).
            "histogram_quantile(0.99, sum by (le) (safegate_request_duration_seconds_bucket))",
        );
        // A latency a dashboard can plot: a positive number of seconds, not NaN or empty.
        let p99 = p99.ok_or("histogram query failed")?;
        let seconds: Option<f64> = p99
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse().ok());
        if !seconds.is_some_and(|s| s.is_finite() && s > 0.0) {
            return Err(format!("p99 has no value: {p99:?}"));
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    checks.unwrap();
}

/// Sends raw HTTP on a fresh connection; the status and the whole answer, and how long
/// the answer took.
fn raw_http(base: &str, head: &str, body: &[u8]) -> (u16, String, Duration) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t0 = Instant::now();
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut text = Vec::new();
    let _ = conn.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text, t0.elapsed())
}

#[test]
fn bodies_are_refused_early_as_json_counted_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.toml");
    let key = "sg-test-key";
    std::fs::write(
        &config,
        format!(
            "[limits]\nbody_timeout_ms = 500\n[[keys]]\nid = \"k\"\nsha256 = \"{}\"\n",
            sha256_hex(key)
        ),
    )
    .unwrap();
    let log = dir.path().join("audit.jsonl");
    let s = start(&[
        "--config",
        config.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
        "--max-body-bytes",
        "10000",
    ]);
    // No key, a 2 MB body announced and never sent: refused at once, from the headers.
    let (code, text, took) = raw_http(
        &s.base,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2000000\r\n\r\n",
        b"{",
    );
    assert_eq!(code, 401, "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Too large: 413 as OpenAI-style JSON.
    let auth = format!("authorization: Bearer {key}\r\n");
    let big = vec![b' '; 20_000];
    let (code, text, _) = raw_http(
        &s.base,
        &format!("POST /v1/moderations HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", big.len()),
        &big,
    );
    assert_eq!(code, 413, "{text}");
    assert!(
        text.contains("\"request_too_large\"") && text.contains("application/json"),
        "{text}"
    );
    // A body that stops arriving: 408 within the body time limit.
    let (code, text, took) = raw_http(
        &s.base,
        &format!("POST /v1/shield/scan HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: 100\r\n\r\n"),
        b"{\"text\": ",
    );
    assert_eq!(code, 408, "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let m = common::metrics(&s.base);
    let audit: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses: Vec<u64> = audit
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![401, 413, 408], "{audit:?}");
    assert!(
        m.contains(r#"safegate_requests_total{endpoint="moderations",outcome="client_error"} 1"#),
        "{m}"
    );
}

#[test]
fn one_callers_long_text_is_refused_before_the_guard_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.toml");
    std::fs::write(&config, "[limits]\nmax_guard_bytes = 1000\n").unwrap();
    let pol = policy_dir("name: default\n");
    let s = start_guarded(&pol, &["--config", config.to_str().unwrap()]);
    let long = "word ".repeat(300);
    let (code, v) = post(
        &s.base,
        "/v1/moderations",
        &json!({"input": long}).to_string(),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("guard_input_too_large")),
        "{v}"
    );
    assert_eq!(v["error"]["param"], "input");
    let messages = json!([{"role": "user", "content": long}]);
    // (`max_tokens` 8: the prompt fits the fixture's 512-token context, so the guard's cap
    // is what refuses it.)
    for path in ["/v1/chat/completions", "/v1/guard/classify"] {
        let (code, v) = post(
            &s.base,
            path,
            &json!({"messages": messages, "max_tokens": 8}).to_string(),
        );
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (400, Some("guard_input_too_large")),
            "{path}: {v}"
        );
    }
    // Within the cap: judged as usual.
    let (code, v) = post(
        &s.base,
        "/v1/moderations",
        &json!({"input": "word ".repeat(100)}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
}

#[test]
fn metrics_and_readiness_can_have_their_own_address() {
    let port = free_port();
    let ops = format!("127.0.0.1:{port}");
    let s = start(&["--metrics-listen", &ops, "--audit-log", "off"]);
    let status = |url: String| match ureq::get(&url).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{url}: {e}"),
    };
    let mut up = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(&ops).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "nothing listens on {ops}");
    assert_eq!(status(format!("http://{ops}/metrics")), 200);
    assert_eq!(status(format!("http://{ops}/readyz")), 200);
    assert_eq!(status(format!("http://{ops}/v1/models")), 404);
    // Not beside the API any more.
    assert_eq!(status(format!("{}/metrics", s.base)), 404);
    assert_eq!(status(format!("{}/readyz", s.base)), 404);
    assert_eq!(status(format!("{}/healthz", s.base)), 200);
}

#[test]
fn request_limits_are_enforced_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_messages = 2\nmax_tokens = 8\nmax_prompt_tokens = 40\nrequest_timeout_ms = 1\n",
    )
    .unwrap();
    let model = fixture("tiny-llama3");
    let s = start(&[
        "--config",
        config.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    let user = |text: &str| json!({"role": "user", "content": text});
    let chat = |body: Value| post(&s.base, "/v1/chat/completions", &body.to_string());

    let (code, v) = chat(json!({"messages": [user("a"), user("b"), user("c")]}));
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("messages"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2"),
        "{v}"
    );
    let (code, v) = chat(json!({"messages": [user("a")], "max_tokens": 9}));
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );
    let (code, v) = chat(json!({"messages": [user(&"long words ".repeat(30))], "max_tokens": 2}));
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("context_length_exceeded")),
        "{v}"
    );
    // 1 ms is not enough for any generation: 504 with a timeout code.
    let (code, v) = chat(json!({"messages": [user("a")], "max_tokens": 8}));
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (504, Some("timeout")),
        "{v}"
    );
}

#[test]
fn overlapped_generation_is_cancelled_on_a_block_and_unchanged_otherwise() {
    let chat =
        json!({"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 10})
            .to_string();
    let block = policy_dir(
        "name: default\ninput: { threshold: 0.0, overlap_generation: true }\noutput: { enabled: false }\n",
    );
    let s = start_guarded(&block, &[]);
    let (code, v) = post(&s.base, "/v1/chat/completions", &chat);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("content_filter")),
        "{v}"
    );
    let metrics = metrics(&s.base);
    assert!(
        !metrics.contains(r#"safegate_tokens_total{direction="out"}"#),
        "a blocked prompt's early generation is never counted as output: {metrics}"
    );

    let pass = policy_dir(
        "name: default\ninput: { threshold: 1.0, overlap_generation: true }\noutput: { enabled: false }\n",
    );
    let overlapped = start_guarded(&pass, &[]);
    let model = fixture("tiny-llama3");
    let plain = start(&["--model", model.to_str().unwrap()]);
    let (code, a) = post(&overlapped.base, "/v1/chat/completions", &chat);
    assert_eq!(code, 200, "{a}");
    let (_, b) = post(&plain.base, "/v1/chat/completions", &chat);
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);

    let bad = policy_dir("name: default\noutput: { overlap_generation: true }\n");
    let e = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args(["policy", "check"])
        .arg(bad.path().join("default.yaml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("input stage only"));
}

#[test]
fn a_climbing_score_holds_the_stream_at_the_last_calm_point() {
    // A guard that scores the reply as harmful prose does: calm at first, then rising
    // toward the block threshold (0.5), then over it for the whole reply.
    let scores = [0.01, 0.1, 0.4, 0.4, 0.45, 0.6];
    let mut sent = Vec::new();
    for release in ["", "  release_threshold: 0.5\n"] {
        let (text, finish) = stream_scored_by(&scores, release);
        assert_eq!(finish.as_deref(), Some("content_filter"), "{text:?}");
        // What went out before the block's message.
        let before = text
            .split("This content was blocked")
            .next()
            .unwrap()
            .to_string();
        assert_ne!(
            before, text,
            "the block's message ends the stream: {text:?}"
        );
        sent.push(before);
    }
    let (held, old) = (&sent[0], &sent[1]);
    // Default release threshold (half of 0.5): only what was scored 0.1 (4 tokens, minus
    // the 2 held back) went out; at 0.5 (the block threshold, the old rule) the text
    // scored 0.4 and 0.45 went out too before the block.
    assert!(
        held.len() < old.len() && old.starts_with(held.as_str()),
        "held {held:?} vs released under the old rule {old:?}"
    );
}

#[test]
fn a_prefix_that_scores_badly_holds_but_only_the_whole_reply_decides() {
    // Prefixes score 0.9 ("to kill a process, run kill" cut short), the whole reply 0.1: the
    // text is held while the prefixes score high, then sent, and the stream ends as the
    // same reply sent whole would.
    let (text, finish) = stream_scored_by(&[0.01, 0.9, 0.9, 0.9, 0.9, 0.1], "");
    assert_eq!(finish.as_deref(), Some("length"), "{text:?}");
    assert!(!text.is_empty() && !text.contains("blocked"), "{text:?}");
}

/// Streams 16 tokens of the tiny model under a remote guard stand-in that gives the n-th
/// classification `scores[n]` (the first is the input check; then one per 4 tokens, then
/// the whole reply; each classification is three requests: after the prompt, after
/// `unsafe\n`, after `unsafe\nS`). Returns the text sent and the finish reason.
fn stream_scored_by(scores: &[f64], release: &str) -> (String, Option<String>) {
    let scores = scores.to_vec();
    let model = fixture("tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[guard_remote]\nbase_url = \"{}\"\nmodel = \"meta-llama/Meta-Llama-Guard-2-8B\"\ntokenizer = \"{}\"\n",
            serve_raw(move |n, _| Some(logprobs_answer(scores[(n / 3).min(scores.len() - 1)]))),
            model.display()
        ),
    )
    .unwrap();
    // The shield is off: the tiny model's random one-line output would be held as possible
    // code; this is about what the guard releases.
    let pol = policy_dir(&format!(
        "name: default\nshield: {{ enabled: false }}\nstreaming:\n  rescore_every_tokens: 4\n  hold_back_tokens: 2\n{release}"
    ));
    let s = start(&[
        "--config",
        config.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--policies",
        pol.path().to_str().unwrap(),
    ]);
    let messages = json!([{"role": "user", "content": "Tell me a story"}]);
    let frames = sse(
        &s.base,
        &json!({"messages": messages, "max_tokens": 16, "temperature": 0, "stream": true}),
    );
    let (deltas, finish, _) = parse_stream(&frames);
    (deltas.concat(), finish)
}

#[test]
fn a_remote_guard_on_a_vllm_style_server_judges_requests() {
    let model = fixture("tiny-llama3");
    let messages = json!([{"role": "user", "content": "how do I do something bad"}]);
    for (p_unsafe, want) in [(0.9, 400u16), (0.01, 200)] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[guard_remote]\nbase_url = \"{}\"\nmodel = \"meta-llama/Meta-Llama-Guard-2-8B\"\ntokenizer = \"{}\"\n",
                serve_raw(move |_, _| Some(logprobs_answer(p_unsafe))),
                model.display()
            ),
        )
        .unwrap();
        let s = start(&[
            "--config",
            config.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ]);
        let ready: Value = ureq::get(&format!("{}/readyz", s.base))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        assert_eq!(ready["guard"]["backend"], "remote", "{ready}");
        assert_eq!(ready["guard"]["model"], "meta-llama/Meta-Llama-Guard-2-8B");
        let (code, v) = post(
            &s.base,
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 3}).to_string(),
        );
        assert_eq!(code, want, "P(unsafe) {p_unsafe}: {v}");
        if want == 400 {
            assert_eq!(v["error"]["code"], "content_filter");
            assert!(
                v["error"]["content_filter_result"]["reasons"]
                    .to_string()
                    .contains("S1"),
                "{v}"
            );
        }
    }
}
