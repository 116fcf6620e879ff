//! Faults: the server killed under load, invalid policy reloads under load, SIGTERM during
//! a stream, an upstream that breaks off mid-stream.

mod common;

use std::io::{BufRead, Read};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Runs `threads` clients posting `body` to `path` until `stop`; returns (ok, failed).
fn load(
    base: &str,
    path: &'static str,
    body: Value,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(usize, usize)>> {
    (0..threads)
        .map(|_| {
            let (url, body, stop) = (format!("{base}{path}"), body.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    match ureq::post(&url).send_json(body.clone()) {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

#[test]
fn every_acknowledged_request_survives_a_sigkill_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let mut s = start(&["--audit-log", log.to_str().unwrap()]);
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, acked, stop) = (
                format!("{}/v1/shield/scan", s.base),
                acknowledged.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"text": "eval(x)", "language": "python"});
                    if let Ok(r) = ureq::post(&url).send_json(body) {
                        if r.status() == 200 && r.into_string().is_ok() {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.child.kill().unwrap(); // SIGKILL, mid-load
    s.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acknowledged.load(Ordering::SeqCst);
    let text = std::fs::read_to_string(&log).unwrap();
    let complete: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ok_lines = complete.iter().filter(|v| v["status"] == 200).count();
    assert!(acked > 20, "the load ran ({acked} responses)");
    assert!(
        ok_lines >= acked,
        "{acked} responses acknowledged, {ok_lines} audit lines on disk"
    );
}

#[test]
fn an_invalid_policy_reload_under_load_fails_no_request() {
    let policies = policy_dir("name: default\n");
    let s = start(&[
        "--policies",
        policies.path().to_str().unwrap(),
        "--policy-poll-ms",
        "50",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(
        &s.base,
        "/v1/shield/scan",
        json!({"text": "print(1)", "language": "python"}),
        3,
        stop.clone(),
    );
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(150));
        let text = if i % 2 == 0 {
            "name: default\ninput: { threshold: 7 }\n" // invalid
        } else {
            "name: default\nshield: { enabled: true }\n"
        };
        std::fs::write(policies.path().join("default.yaml"), text).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(ok > 20, "{ok}");
    assert_eq!(failed, 0, "requests failed during reloads");
    let metrics = metrics(&s.base);
    assert!(
        metrics.contains(r#"outcome="rejected""#) && metrics.contains(r#"outcome="ok""#),
        "{metrics}"
    );
}

#[test]
fn sigterm_lets_a_running_stream_finish() {
    let model = fixture("tiny-llama3");
    let s = start(&["--model", model.to_str().unwrap()]);
    let r = ureq::post(&format!("{}/v1/chat/completions", s.base))
        .send_json(json!({"messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 300, "stream": true}))
        .unwrap();
    let mut reader = std::io::BufReader::new(r.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "));
    let t0 = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: ...{}",
        &rest[rest.len().saturating_sub(300)..]
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
    // And the server has stopped accepting.
    std::thread::sleep(Duration::from_millis(500));
    assert!(ureq::get(&format!("{}/healthz", s.base)).call().is_err());
}

#[test]
fn an_upstream_that_breaks_off_mid_stream_is_an_error_not_a_short_answer() {
    // Half a stream, then the connection closes without [DONE].
    let upstream = serve_raw(|_, _| {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
        Some(format!("{head}data: {}\n\n", delta("partial ")).into_bytes())
    }) + "/v1";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[[models]]\nname = \"flaky\"\nupstream = \"{upstream}\"\n"),
    )
    .unwrap();
    let s = start(&["--config", config.to_str().unwrap()]);
    let messages = json!([{"role": "user", "content": "hi"}]);
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "flaky", "messages": messages}).to_string(),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (502, Some("upstream_error")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("without [DONE]") || message.contains("broke off"),
        "{v}"
    );
    let text = ureq::post(&format!("{}/v1/chat/completions", s.base))
        .send_json(json!({"model": "flaky", "messages": messages, "stream": true}))
        .unwrap()
        .into_string()
        .unwrap();
    assert!(text.contains(r#""code":"upstream_error""#), "{text}");
    assert!(
        !text.contains("data: [DONE]"),
        "a broken stream must not look complete: {text}"
    );
}
