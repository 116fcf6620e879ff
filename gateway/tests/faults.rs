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
    assert!(acked >= 5, "the load ran ({acked} responses)");
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
    // At least one request answered around each of the six reloads.
    assert!(ok >= 6, "{ok}");
    assert_eq!(failed, 0, "requests failed during reloads");
    // Both kinds of reload happened (the series exist from start-up at 0: read the values).
    let metrics = metrics(&s.base);
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing: {metrics}"))
    };
    assert!(
        value(r#"safegate_policy_reloads_total{outcome="rejected",trigger="file_change"}"#) >= 1,
        "{metrics}"
    );
    assert!(
        value(r#"safegate_policy_reloads_total{outcome="ok",trigger="file_change"}"#) >= 1,
        "{metrics}"
    );
}

/// An upstream that streams `deltas` words, one every `gap`, then `[DONE]`.
fn slow_upstream(deltas: usize, gap: Duration) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                read_request(&mut std::io::BufReader::new(stream.try_clone().unwrap()));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                );
                for _ in 0..deltas {
                    std::thread::sleep(gap);
                    let event = format!("data: {}\n\n", delta("word "));
                    if stream.write_all(event.as_bytes()).is_err() {
                        return;
                    }
                }
                let _ = stream.write_all(b"data: [DONE]\n\n");
            });
        }
    });
    base
}

#[test]
fn sigterm_lets_a_running_stream_finish() {
    // An upstream that takes 2 s for its reply: the stream is surely running at SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slow.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"slow\"\nupstream = \"{}\"\ntimeout_ms = 10000\n",
            slow_upstream(40, Duration::from_millis(50))
        ),
    )
    .unwrap();
    let s = start(&["--config", config.to_str().unwrap(), "--audit-log", "off"]);
    let r = ureq::post(&format!("{}/v1/chat/completions", s.base))
        .send_json(
            json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}],
                          "stream": true}),
        )
        .unwrap();
    let mut reader = std::io::BufReader::new(r.into_reader());
    // Wait for the first words of the reply: the generation is under way.
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        if line.contains("word") {
            break;
        }
    }
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
    // Words kept coming after the signal, for about the rest of the reply's 2 s.
    let words_after = rest.matches("word").count();
    assert!(words_after >= 20, "{words_after} words after SIGTERM");
    assert!(
        t0.elapsed() > Duration::from_millis(800),
        "{:?}",
        t0.elapsed()
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
