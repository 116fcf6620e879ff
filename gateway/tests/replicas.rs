//! Several replicas sharing one Redis: a key's request rate and token budget hold across
//! them, a policy change reaches all of them, and Redis going away (or stalling) does what
//! `[redis] on_error` says. A real `redis-server` (Debian's package) on a loopback port.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{delta, free_port, metrics, serve_raw, sse_response, start, Server};
use serde_json::{json, Value};

struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis() -> Redis {
    let port = free_port();
    spawn_redis(port, &["--port", &port.to_string()])
}

/// A throwaway `redis-server` (loopback, nothing saved) listening on `port` as `args` say.
fn spawn_redis(port: u16, args: &[&str]) -> Redis {
    let child = Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server; scripts/test.sh installs it)");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Redis { child, port }
}

/// A Redis that speaks TLS only (`--port 0`), its certificate for 127.0.0.1 signed by a
/// private CA; and the CA's PEM file.
fn redis_tls(dir: &std::path::Path) -> (Redis, std::path::PathBuf) {
    let ca = common::test_ca(dir);
    let cert_file = dir.join("redis.crt");
    let key_file = dir.join("redis.key");
    std::fs::write(&cert_file, ca.cert.pem()).unwrap();
    std::fs::write(&key_file, ca.key.serialize_pem()).unwrap();
    let port = free_port();
    let redis = spawn_redis(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert_file.to_str().unwrap(),
            "--tls-key-file",
            key_file.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.ca_file.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    (redis, ca.ca_file)
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An upstream whose every reply spends 50 tokens (40 in, 10 out).
fn upstream() -> String {
    let reply = sse_response(&[
        delta("Rivers run to the sea."),
        json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 10}}),
    ]);
    format!("{}/v1", serve_raw(move |_, _| Some(reply.clone())))
}

/// A gateway with two keys (`rate`: 6 requests a minute; `budget`: 120 tokens a day)
/// and this `[redis]` section.
fn replica(
    dir: &std::path::Path,
    name: &str,
    redis: &str,
    upstream: &str,
    policies: &std::path::Path,
) -> Server {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "{redis}\n[[keys]]\nid = \"rate\"\nsha256 = \"{}\"\nrequests_per_minute = 6\n\n\
             [[keys]]\nid = \"budget\"\nsha256 = \"{}\"\ntokens_per_day = 120\n\n\
             [[models]]\nname = \"m\"\nupstream = \"{upstream}\"\nretries = 0\n",
            sha256_hex("sk-rate"),
            sha256_hex("sk-budget"),
        ),
    )
    .unwrap();
    start(&[
        "--config",
        config.to_str().unwrap(),
        "--policies",
        policies.to_str().unwrap(),
        "--policy-poll-ms",
        "100",
        "--audit-log",
        dir.join(format!("{name}-audit.jsonl")).to_str().unwrap(),
    ])
}

/// One chat request with this key: status, Retry-After, body.
fn chat(base: &str, key: &str) -> (u16, Option<String>, Value) {
    let body = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Tell me about rivers."}]});
    let request = ureq::post(&format!("{base}/v1/chat/completions"))
        .set("authorization", &format!("Bearer {key}"))
        .timeout(Duration::from_secs(20));
    match request.send_json(body) {
        Ok(r) => (r.status(), None, r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => {
            let retry = r.header("retry-after").map(str::to_string);
            (code, retry, r.into_json().unwrap())
        }
        Err(e) => panic!("{e}"),
    }
}

fn policies() -> tempfile::TempDir {
    common::policy_dir("name: default\n")
}

#[test]
fn a_keys_rate_and_token_budget_hold_across_replicas() {
    let redis = redis();
    let dir = tempfile::tempdir().unwrap();
    let policies = policies();
    let section = format!("[redis]\nurl = \"redis://127.0.0.1:{}\"\n", redis.port);
    let up = upstream();
    let a = replica(dir.path(), "a", &section, &up, policies.path());
    let b = replica(dir.path(), "b", &section, &up, policies.path());

    // 20 requests, alternating replicas, within a few seconds: 6 a minute in all.
    let mut accepted = [0, 0];
    for i in 0..20 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (status, retry_after, body) = chat(base, "sk-rate");
        match status {
            200 => accepted[i % 2] += 1,
            429 => {
                assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
                let seconds: u64 = retry_after.unwrap().parse().unwrap();
                assert!((1..=10).contains(&seconds), "Retry-After {seconds}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(
        accepted[0] + accepted[1],
        6,
        "accepted per replica: {accepted:?}"
    );
    assert!(accepted[0] >= 1 && accepted[1] >= 1, "{accepted:?}");

    // 120 tokens a day, 50 per request: the third request (100 spent) passes, the fourth
    // is refused wherever it lands.
    for (i, base) in [&a.base, &b.base, &a.base].into_iter().enumerate() {
        let (status, _, body) = chat(base, "sk-budget");
        assert_eq!(status, 200, "request {i}: {body}");
        // Spending happens as the request ends, off the response's path.
        std::thread::sleep(Duration::from_millis(200));
    }
    for base in [&b.base, &a.base] {
        let (status, retry_after, body) = chat(base, "sk-budget");
        assert_eq!(status, 429, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("token budget per day"),
            "{body}"
        );
        assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    }
    let m = metrics(&a.base);
    assert!(
        m.contains("safegate_ratelimit_rejections_total{reason=\"tokens_per_day\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("safegate_ratelimit_redis_seconds_count 0\n"),
        "{m}"
    );
    assert!(
        m.contains("safegate_ratelimit_redis_errors_total{kind=\"error\"} 0"),
        "{m}"
    );
}

/// `rediss://`: the limits are shared over TLS, the server's certificate checked against
/// `ca_file`; without it (the system's roots do not know the private CA) Redis is
/// unreachable and `on_error` applies.
#[test]
fn rediss_shares_limits_over_tls_checked_against_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, ca) = redis_tls(dir.path());
    let policies = policies();
    let up = upstream();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let section = format!(
        "[redis]\nurl = \"{url}\"\nca_file = \"{}\"\ntimeout_ms = 2000\non_error = \"closed\"\n",
        ca.display()
    );
    let a = replica(dir.path(), "a", &section, &up, policies.path());
    let b = replica(dir.path(), "b", &section, &up, policies.path());
    let mut accepted = 0;
    for i in 0..10 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (status, _, body) = chat(base, "sk-rate");
        match status {
            200 => accepted += 1,
            429 => assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(accepted, 6, "6 a minute across both replicas");
    let m = metrics(&a.base);
    assert!(
        m.contains("safegate_ratelimit_redis_errors_total{kind=\"error\"} 0"),
        "{m}"
    );

    let untrusted = replica(
        dir.path(),
        "untrusted",
        &format!("[redis]\nurl = \"{url}\"\ntimeout_ms = 2000\non_error = \"closed\"\n"),
        &up,
        policies.path(),
    );
    let (status, _, body) = chat(&untrusted.base, "sk-rate");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
}

#[test]
fn a_policy_change_reaches_every_replica() {
    let redis = redis();
    let dir = tempfile::tempdir().unwrap();
    let policies = policies();
    let section = format!("[redis]\nurl = \"redis://127.0.0.1:{}\"\n", redis.port);
    let up = upstream();
    let replicas = [
        replica(dir.path(), "a", &section, &up, policies.path()),
        replica(dir.path(), "b", &section, &up, policies.path()),
    ];
    let version = |s: &Server| -> (u64, Value) {
        let ready: Value = ureq::get(&format!("{}/readyz", s.base))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        (
            ready["policy_version"].as_u64().unwrap(),
            ready["policies"].clone(),
        )
    };
    let before: Vec<u64> = replicas.iter().map(|s| version(s).0).collect();
    std::fs::write(policies.path().join("strict.yaml"), "name: strict\n").unwrap();
    let t0 = Instant::now();
    for (s, v0) in replicas.iter().zip(before) {
        loop {
            let (v, names) = version(s);
            if v > v0 && names.to_string().contains("strict") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} never saw the change",
                s.base
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn without_redis_each_replica_does_what_on_error_says_and_never_stalls() {
    let mut redis = redis();
    let dir = tempfile::tempdir().unwrap();
    let policies = policies();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let up = upstream();
    let open = replica(
        dir.path(),
        "open",
        &format!("[redis]\nurl = \"{url}\"\ntimeout_ms = 200\non_error = \"local\"\n"),
        &up,
        policies.path(),
    );
    let closed = replica(
        dir.path(),
        "closed",
        &format!("[redis]\nurl = \"{url}\"\ntimeout_ms = 200\non_error = \"closed\"\n"),
        &up,
        policies.path(),
    );
    assert_eq!(chat(&open.base, "sk-rate").0, 200);
    assert_eq!(chat(&closed.base, "sk-rate").0, 200);
    let _ = redis.child.kill();
    let _ = redis.child.wait();

    let t0 = Instant::now();
    let (status, _, body) = chat(&open.base, "sk-rate");
    assert_eq!(status, 200, "{body}");
    // The replica's own bucket applies: 6 a minute, one used just now.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(chat(&open.base, "sk-rate").0);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let (status, _, body) = chat(&closed.base, "sk-rate");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
    let m = metrics(&open.base);
    assert!(
        m.contains("safegate_ratelimit_local_fallbacks_total 7"),
        "{m}"
    );
    assert!(
        !m.contains("safegate_ratelimit_redis_errors_total{kind=\"error\"} 0\n"),
        "{m}"
    );

    // A Redis that accepts connections and never answers costs a request at most the
    // limiter's time budget, and only the first request of each second pays it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled = replica(
        dir.path(),
        "stalled",
        &format!(
            "[redis]\nurl = \"redis://{}\"\ntimeout_ms = 200\n",
            silent.local_addr().unwrap()
        ),
        &up,
        policies.path(),
    );
    let mut took = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (status, _, body) = chat(&stalled.base, "sk-rate");
        assert_eq!(status, 200, "{body}");
        took.push(t.elapsed());
    }
    assert!(took[0] < Duration::from_millis(1500), "{took:?}");
    assert!(
        took[1] < Duration::from_millis(150) && took[2] < Duration::from_millis(150),
        "{took:?}"
    );
    let m = metrics(&stalled.base);
    assert!(
        m.contains("safegate_ratelimit_redis_errors_total{kind=\"timeout\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("safegate_ratelimit_local_fallbacks_total 3"),
        "{m}"
    );
}

/// The audit sink for containers: JSON lines on stdout (the log on stderr), each written
/// before its request is answered; a closed stdout fails requests instead of losing lines.
#[test]
fn audit_lines_on_stdout_for_the_log_agent() {
    use std::io::BufRead;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--audit-log",
            "stdout",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let t0 = Instant::now();
    while ureq::get(&format!("{base}/healthz")).call().is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    let scan = |code: &str| match ureq::post(&format!("{base}/v1/shield/scan"))
        .send_json(json!({"text": code, "language": "python"}))
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    };
    for code in ["x = 1", "import os\nos.system(input())"] {
        assert_eq!(scan(code), 200);
        // The line is there once the answer is: nothing else is on stdout.
        let line = lines.next().unwrap().unwrap();
        let record: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(record["endpoint"], "shield_scan", "{record}");
        assert_eq!(record["status"], 200);
    }
    // Nobody reads stdout any more: requests fail rather than go unaudited.
    drop(lines);
    assert_eq!(scan("y = 2"), 500);
    let _ = child.kill();
    let _ = child.wait();
}
