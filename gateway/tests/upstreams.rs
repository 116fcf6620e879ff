//! Upstream models as users run them: over TLS with a private CA, hanging, flooding,
//! failing over to a fallback, ignoring `max_tokens`. The real `safegate serve` binary,
//! raw HTTP (and TLS) servers standing in for vLLM and hosted APIs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{delta, metrics, post, read_request, sse_response, start_with_env, Server};
use serde_json::{json, Value};

/// Writes the config with these `[[models]]` entries (TOML bodies) and starts the gateway.
fn gateway(dir: &tempfile::TempDir, models: &[String], env: &[(&str, &str)]) -> Server {
    let text: String = models
        .iter()
        .map(|m| format!("[[models]]\n{m}\n\n"))
        .collect();
    let text = format!("[limits]\nrequest_timeout_ms = 3000\n\n{text}");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    start_with_env(&["--config", path.to_str().unwrap()], env)
}

fn chat(model: &str, max_tokens: u32, stream: bool) -> String {
    json!({"model": model, "max_tokens": max_tokens, "stream": stream,
           "messages": [{"role": "user", "content": "Tell me about rivers."}]})
    .to_string()
}

/// A counter a test server bumps.
fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// An upstream that streams these words as deltas.
fn words_reply(words: usize) -> Vec<u8> {
    let events: Vec<Value> = (0..words).map(|i| delta(&format!("w{i} "))).collect();
    sse_response(&events)
}

/// A raw upstream answering each request with `respond(n)`, counting the requests.
fn upstream(
    count: Arc<AtomicUsize>,
    respond: impl Fn(usize) -> Vec<u8> + Send + 'static,
) -> String {
    let base = common::serve_raw(move |_, _| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        Some(respond(n))
    });
    format!("{base}/v1")
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

// ---------------------------------------------------------------- TLS

/// A CA, and a certificate for 127.0.0.1 and localhost signed by it; the CA's PEM file.
fn private_ca(dir: &std::path::Path) -> (std::path::PathBuf, rustls::ServerConfig) {
    let common::TestCa {
        ca_file,
        cert: leaf,
        key: leaf_key,
    } = common::test_ca(dir);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    (ca_file, config)
}

/// An HTTPS upstream (HTTP/1.1 over TLS) streaming `words` words per request; counts the
/// requests whose TLS handshake succeeded, and keeps the protocols each client offered
/// (ALPN).
fn tls_upstream(
    config: rustls::ServerConfig,
    words: usize,
    served: Arc<AtomicUsize>,
    offered: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
) -> String {
    format!(
        "{}/v1",
        tls_server(config, served, offered, move || words_reply(words))
    )
}

/// An HTTPS server answering every request with `answer()`; `https://ADDR`.
fn tls_server(
    config: rustls::ServerConfig,
    served: Arc<AtomicUsize>,
    offered: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    answer: impl Fn() -> Vec<u8> + Send + Sync + 'static,
) -> String {
    let answer = Arc::new(answer);
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let config = config.clone();
            let served = served.clone();
            let offered = offered.clone();
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut acceptor = rustls::server::Acceptor::default();
                let accepted = loop {
                    if acceptor.read_tls(&mut stream).unwrap_or(0) == 0 {
                        return;
                    }
                    match acceptor.accept() {
                        Ok(Some(accepted)) => break accepted,
                        Ok(None) => continue,
                        Err(_) => return,
                    }
                };
                let alpn = accepted
                    .client_hello()
                    .alpn()
                    .map(|protocols| {
                        protocols
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                offered.lock().unwrap().push(alpn);
                // HTTP/1.1 only here: the client must fall back to it.
                let Ok(conn) = accepted.into_connection(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut reader = BufReader::new(&mut tls);
                // The handshake happens on the first read; a client that refuses the
                // certificate ends here.
                if reader.fill_buf().is_err() {
                    return;
                }
                read_request(&mut reader);
                served.fetch_add(1, Ordering::SeqCst);
                let _ = tls.write_all(&answer());
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    base
}

#[test]
fn an_https_upstream_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, tls) = private_ca(dir.path());
    let served = counter();
    let offered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = tls_upstream(tls, 6, served.clone(), offered.clone());
    let server = gateway(
        &dir,
        &[
            format!(
                "name = \"private\"\nupstream = \"{url}\"\nca_file = \"{}\"\nretries = 0",
                ca_file.display()
            ),
            format!("name = \"untrusted\"\nupstream = \"{url}\"\nretries = 0"),
        ],
        &[],
    );
    for stream in [false, true] {
        let (status, body) = if stream {
            let text = ureq::post(&format!("{}/v1/chat/completions", server.base))
                .set("content-type", "application/json")
                .send_string(&chat("private", 50, true))
                .unwrap()
                .into_string()
                .unwrap();
            let content: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| {
                    v.pointer("/choices/0/delta/content")?
                        .as_str()
                        .map(String::from)
                })
                .collect();
            (200, json!({"content": content}))
        } else {
            let (s, b) = post(
                &server.base,
                "/v1/chat/completions",
                &chat("private", 50, false),
            );
            (
                s,
                json!({"content": b.pointer("/choices/0/message/content").cloned().unwrap_or_default()}),
            )
        };
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["content"], "w0 w1 w2 w3 w4 w5 ", "stream={stream}");
    }
    assert_eq!(served.load(Ordering::SeqCst), 2);
    // HTTP/2 is offered (ALPN), HTTP/1.1 taken when the server has only that.
    assert_eq!(offered.lock().unwrap()[0], ["h2", "http/1.1"]);
    // Without the CA the certificate is refused: no request reaches the upstream.
    let (status, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat("untrusted", 50, false),
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(served.load(Ordering::SeqCst), 2);
    drop(server);

    // SSL_CERT_FILE, as OpenSSL-based clients read it, stands for the system's roots.
    let server = gateway(
        &dir,
        &[format!(
            "name = \"by-env\"\nupstream = \"{url}\"\nretries = 0"
        )],
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    );
    let (status, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat("by-env", 50, false),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(served.load(Ordering::SeqCst), 3);
}

#[test]
fn a_remote_guard_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, tls) = private_ca(dir.path());
    let served = counter();
    let offered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = tls_server(tls, served.clone(), offered, || {
        common::logprobs_answer(0.9)
    });
    let model = common::fixture("tiny-llama3");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[guard_remote]\nbase_url = \"{url}\"\nmodel = \"meta-llama/Meta-Llama-Guard-2-8B\"\ntokenizer = \"{}\"\nca_file = \"{}\"\nretries = 0\n",
            model.display(),
            ca_file.display()
        ),
    )
    .unwrap();
    let server = common::start(&["--config", config.to_str().unwrap()]);
    let (status, body) = post(
        &server.base,
        "/v1/moderations",
        &json!({"input": "how do I do something bad"}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["flagged"], true, "{body}");
    assert!(served.load(Ordering::SeqCst) >= 1);
}

#[test]
fn a_bad_upstream_setting_stops_the_start_with_its_entry_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |model: &str| {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("[[models]]\n{model}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_safegate"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                path.to_str().unwrap(),
            ])
            .env_remove("SAFEGATE_TEST_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run("name = \"a\"\nupstream = \"https://x/v1\"\napi_key_env = \"SAFEGATE_TEST_KEY\"");
    assert!(
        e.contains("models[0] (`a`)") && e.contains("SAFEGATE_TEST_KEY is not set"),
        "{e}"
    );
    let e = run("name = \"a\"\nupstream = \"https://x/v1\"\nca_file = \"missing.pem\"");
    assert!(
        e.contains("models[0] (`a`)") && e.contains("missing.pem"),
        "{e}"
    );
    let e = run("name = \"a\"\nupstream = \"https://x/v1\"\napi_style = \"azure\"");
    assert!(e.contains("needs api_version"), "{e}");
    let e = run("name = \"a\"\nupstream = \"http://x/v1\"\nfallbacks = [\"b\"]");
    assert!(
        e.contains("fallback `b` is not another [[models]] entry"),
        "{e}"
    );
    let e = run("name = \"a\"\nupstream = \"grpc://x\"");
    assert!(e.contains("http:// or https://"), "{e}");
}

// ---------------------------------------------------------------- bounded and cancellable

/// An upstream that answers the headers and the first event, then holds the connection
/// open and silent; counts connections open now.
fn hanging_upstream(open: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let open = open.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                read_request(&mut reader);
                open.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
                );
                // Wait until the gateway hangs up (read returns 0 or fails).
                let mut buf = [0u8; 64];
                while matches!(reader.get_mut().read(&mut buf), Ok(n) if n > 0) {}
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    base
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// Sends a streamed chat request, reads the response head and drops the connection.
fn stream_and_leave(base: &str, model: &str) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = chat(model, 50, true);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 256];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut head).unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
}

#[test]
fn a_hanging_upstream_leaves_no_thread_or_connection_behind() {
    let dir = tempfile::tempdir().unwrap();
    let open = counter();
    let url = hanging_upstream(open.clone());
    let server = gateway(
        &dir,
        &[format!(
            "name = \"hang\"\nupstream = \"{url}\"\ntimeout_ms = 60000"
        )],
        &[],
    );
    let pid = server.child.id();
    // One round first, so whatever the runtime starts once is there before counting.
    stream_and_leave(&server.base, "hang");
    assert!(wait_until(Duration::from_secs(5), || open
        .load(Ordering::SeqCst)
        == 0));
    let threads = proc_status(pid, "Threads:");

    // Five clients that give up on a stream: their upstream calls end with them.
    for _ in 0..5 {
        stream_and_leave(&server.base, "hang");
    }
    assert!(
        wait_until(Duration::from_secs(3), || open.load(Ordering::SeqCst) == 0),
        "{} upstream connections still open after the clients left",
        open.load(Ordering::SeqCst)
    );
    // Five whole requests: the request time limit (3 s) answers 504 and ends the calls.
    let t0 = Instant::now();
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let base = server.base.clone();
            std::thread::spawn(move || {
                post(&base, "/v1/chat/completions", &chat("hang", 50, false))
            })
        })
        .collect();
    for h in handles {
        let (status, body) = h.join().unwrap();
        assert_eq!(status, 504, "{body}");
    }
    assert!(t0.elapsed() < Duration::from_secs(6));
    assert!(
        wait_until(Duration::from_secs(2), || open.load(Ordering::SeqCst) == 0),
        "{} upstream connections still open after the 504s",
        open.load(Ordering::SeqCst)
    );
    assert_eq!(
        proc_status(pid, "Threads:"),
        threads,
        "the gateway's thread count grew"
    );
    let m = metrics(&server.base);
    assert!(
        m.contains("safegate_upstream_open_calls{upstream=\"hang\"} 0"),
        "{m}"
    );
}

#[test]
fn a_flooding_upstream_costs_a_bounded_amount_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let sent = counter();
    let sent_by_server = sent.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            read_request(&mut reader);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: ");
            // 300 MiB on one line, unless the gateway hangs up first.
            let block = vec![b'x'; 1 << 20];
            for _ in 0..300 {
                if stream.write_all(&block).is_err() {
                    break;
                }
                sent_by_server.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let server = gateway(
        &dir,
        &[format!("name = \"flood\"\nupstream = \"{url}\"")],
        &[],
    );
    let pid = server.child.id();
    let before = proc_status(pid, "VmRSS:");
    let (status, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat("flood", 50, false),
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 1048576 bytes"),
        "{body}"
    );
    let peak = proc_status(pid, "VmHWM:");
    assert!(
        peak < before + 64 * 1024,
        "resident memory grew from {before} kB to a peak of {peak} kB"
    );
    // The gateway hung up long before the 300 MiB.
    assert!(
        sent.load(Ordering::SeqCst) < 100,
        "{} MiB sent",
        sent.load(Ordering::SeqCst)
    );
}

#[test]
fn max_tokens_holds_when_the_upstream_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = upstream(counter(), |_| words_reply(300));
    let tokenizer = common::fixture("tiny-llama3");
    let server = gateway(
        &dir,
        &[
            format!("name = \"chatty\"\nupstream = \"{url}\""),
            format!(
                "name = \"chatty-tok\"\nupstream = \"{url}\"\ntokenizer = \"{}\"",
                tokenizer.display()
            ),
        ],
        &[],
    );
    // By deltas: five of them.
    let (status, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat("chatty", 5, false),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "w0 w1 w2 w3 w4 ");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    // By the model's tokens: the reply is exactly max_tokens tokens long.
    let (status, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat("chatty-tok", 7, false),
    );
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let tok = tokenizers::Tokenizer::from_file(tokenizer.join("tokenizer.json")).unwrap();
    assert_eq!(tok.encode(content, false).unwrap().len(), 7, "{content:?}");
    assert!(
        "w0 w1 w2 w3 w4 w5 w6 w7 ".starts_with(content),
        "{content:?}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 7);
    // Streamed: the same five deltas, then `length`.
    let text = ureq::post(&format!("{}/v1/chat/completions", server.base))
        .set("content-type", "application/json")
        .send_string(&chat("chatty", 5, true))
        .unwrap()
        .into_string()
        .unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let content: String = events
        .iter()
        .filter_map(|v| v.pointer("/choices/0/delta/content")?.as_str())
        .collect();
    assert_eq!(content, "w0 w1 w2 w3 w4 ");
    assert!(events
        .iter()
        .any(|v| v.pointer("/choices/0/finish_reason") == Some(&json!("length"))));
}

// ---------------------------------------------------------------- retries and fallbacks

fn status_answer(code: u16, extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} X\r\ncontent-length: 4\r\nconnection: close\r\n{extra}\r\nbusy")
        .into_bytes()
}

#[test]
fn retries_then_fallbacks_in_order_and_never_after_the_reply_began() {
    let dir = tempfile::tempdir().unwrap();
    let primary_calls = counter();
    let primary = upstream(primary_calls.clone(), |_| status_answer(503, ""));
    let second_calls = counter();
    let second = upstream(second_calls.clone(), |_| {
        status_answer(429, "retry-after: 0\r\n")
    });
    let third_calls = counter();
    let third = upstream(third_calls.clone(), |_| words_reply(3));
    let refusing_calls = counter();
    let refusing = upstream(refusing_calls.clone(), |_| status_answer(400, ""));
    let broken_calls = counter();
    let broken = upstream(broken_calls.clone(), |_| {
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"Half \"}}]}\n\n".to_vec()
    });
    let server = gateway(
        &dir,
        &[
            format!("name = \"primary\"\nupstream = \"{primary}\"\nretries = 2\nretry_backoff_ms = 10\nfallbacks = [\"second\", \"third\"]"),
            format!("name = \"second\"\nupstream = \"{second}\"\nretries = 1\nretry_backoff_ms = 10"),
            format!("name = \"third\"\nupstream = \"{third}\""),
            format!("name = \"refusing\"\nupstream = \"{refusing}\"\nfallbacks = [\"third\"]"),
            format!("name = \"broken\"\nupstream = \"{broken}\"\nfallbacks = [\"third\"]"),
        ],
        &[],
    );
    let (status, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat("primary", 50, false),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "w0 w1 w2 ");
    assert_eq!(body["model"], "primary");
    // One try and two retries, one try and one retry, then the reply.
    assert_eq!(primary_calls.load(Ordering::SeqCst), 3);
    assert_eq!(second_calls.load(Ordering::SeqCst), 2);
    assert_eq!(third_calls.load(Ordering::SeqCst), 1);
    let m = metrics(&server.base);
    for line in [
        "safegate_upstream_retries_total{reason=\"status_5xx\",upstream=\"primary\"} 2",
        "safegate_upstream_retries_total{reason=\"status_429\",upstream=\"second\"} 1",
        "safegate_upstream_fallbacks_total{from=\"primary\",to=\"second\"} 1",
        "safegate_upstream_fallbacks_total{from=\"second\",to=\"third\"} 1",
        "safegate_upstream_calls_total{result=\"status_5xx\",upstream=\"primary\"} 1",
        "safegate_upstream_calls_total{result=\"ok\",upstream=\"third\"} 1",
        "safegate_upstream_first_byte_seconds_count{upstream=\"third\"} 1",
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
    let ready: Value = ureq::get(&format!("{}/readyz", server.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let health = |name: &str| {
        ready["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(health("primary")["status"], "failing");
    assert_eq!(health("primary")["last_error"]["kind"], "status_5xx");
    assert_eq!(health("third")["status"], "ok");

    // A request the upstream refuses as malformed is the client's to fix: no fallback.
    let (status, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat("refusing", 50, false),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "upstream_rejected");
    assert_eq!(refusing_calls.load(Ordering::SeqCst), 1);
    // A reply that broke off after it began is not started again elsewhere.
    let (status, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat("broken", 50, false),
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(broken_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        third_calls.load(Ordering::SeqCst),
        1,
        "the fallback was called"
    );
}

// ---------------------------------------------------------------- OpenTelemetry

/// What an OTLP/HTTP receiver was sent: each request's content type and body.
type Exports = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A small OTLP/HTTP receiver: keeps every export request (JSON or protobuf) and answers
/// 200, on kept-alive connections.
fn otlp_receiver() -> (String, Exports) {
    let received: Exports = Arc::default();
    let kept = received.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let (head, body) = common::read_request_with_head(&mut reader);
                    if head.is_empty() {
                        return;
                    }
                    let content_type = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-type:")
                                .map(|v| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    kept.lock().unwrap().push((content_type, body));
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (base, received)
}

/// The spans of every OTLP/JSON export received so far, each export's resource checked.
fn json_spans(received: &Exports) -> Vec<Value> {
    let mut spans = Vec::new();
    for (_, body) in received.lock().unwrap().iter() {
        let request: Value = serde_json::from_slice(body).unwrap();
        for rs in request["resourceSpans"].as_array().unwrap() {
            assert_eq!(
                rs["resource"]["attributes"][0]["value"]["stringValue"],
                "safegate"
            );
            for ss in rs["scopeSpans"].as_array().unwrap() {
                spans.extend(ss["spans"].as_array().unwrap().iter().cloned());
            }
        }
    }
    spans
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[test]
fn traces_reach_an_otlp_receiver_with_stages_parents_and_the_upstream_linked() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = otlp_receiver();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let headers = seen.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (head, _) = common::read_request_with_head(&mut reader);
            headers.lock().unwrap().push(head);
            let reply = if n == 1 {
                sse_response(&[delta(
                    "Sure:\n```python\nimport os\nos.system(input())\n```\n",
                )])
            } else {
                words_reply(4)
            };
            let _ = stream.write_all(&reply);
        }
    });
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[tracing]\notlp_endpoint = \"{receiver}\"\nexport_interval_ms = 100\n\n[[models]]\nname = \"traced\"\nupstream = \"{url}\"\nupstream_model = \"llama-up\"\n"
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = common::start(&[
        "--config",
        config.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let send = |traceparent: &str, stream: bool| {
        let r = ureq::post(&format!("{}/v1/chat/completions", server.base))
            .set("content-type", "application/json")
            .set("traceparent", traceparent)
            .send_string(&chat("traced", 50, stream))
            .unwrap();
        r.into_string().unwrap()
    };
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    send(&format!("00-{trace_id}-{client_span}-01"), false);
    // A second request (streamed, its reply blocked by the shield) in a new trace.
    let blocked_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    send(&format!("00-{blocked_trace}-{client_span}-01"), true);
    // The caller's decision not to sample holds.
    let unsampled = "6bf92f3577b34da6a3ce929d0e0e4738";
    send(&format!("00-{unsampled}-{client_span}-00"), false);
    assert!(wait_until(Duration::from_secs(5), || {
        json_spans(&received)
            .iter()
            .filter(|s| s["parentSpanId"] == client_span)
            .count()
            >= 2
    }));
    std::thread::sleep(Duration::from_millis(300));
    let spans = json_spans(&received);
    assert!(
        spans.iter().all(|s| s["traceId"] != unsampled),
        "an unsampled request was traced"
    );
    let text = serde_json::to_string(&spans).unwrap();
    assert!(
        !text.contains("Tell me about rivers"),
        "prompt text in a span"
    );

    let of_trace = |id: &str| {
        spans
            .iter()
            .filter(|s| s["traceId"] == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    let first = of_trace(trace_id);
    let root = first
        .iter()
        .find(|s| s["parentSpanId"] == client_span)
        .unwrap();
    assert_eq!(root["name"], "chat traced");
    assert_eq!(root["kind"], 2);
    assert_eq!(
        attribute(root, "gen_ai.operation.name").unwrap()["stringValue"],
        "chat"
    );
    assert_eq!(
        attribute(root, "gen_ai.request.model").unwrap()["stringValue"],
        "traced"
    );
    assert_eq!(
        attribute(root, "gen_ai.request.max_tokens").unwrap()["intValue"],
        "50"
    );
    assert_eq!(
        attribute(root, "gen_ai.usage.output_tokens").unwrap()["intValue"],
        "4"
    );
    assert_eq!(
        attribute(root, "safegate.outcome").unwrap()["stringValue"],
        "ok"
    );
    assert_eq!(
        attribute(root, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    let children: Vec<&Value> = first
        .iter()
        .filter(|s| s["parentSpanId"] == root["spanId"])
        .collect();
    let names: Vec<&str> = children
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for stage in ["chat llama-up", "shield", "audit"] {
        assert!(names.contains(&stage), "no {stage} span in {names:?}");
    }
    assert_eq!(first.len(), children.len() + 1, "{names:?}");
    let call = children
        .iter()
        .find(|s| s["name"] == "chat llama-up")
        .unwrap();
    assert_eq!(call["kind"], 3);
    assert!(
        call["startTimeUnixNano"].as_str().unwrap() >= root["startTimeUnixNano"].as_str().unwrap()
    );
    // The upstream was told its caller is that client span.
    let upstream_heads = seen.lock().unwrap().clone();
    let expected = format!(
        "traceparent: 00-{trace_id}-{}-01",
        call["spanId"].as_str().unwrap()
    );
    assert!(
        upstream_heads[0].contains(&expected),
        "{}\nwanted {expected}",
        upstream_heads[0]
    );

    let second = of_trace(blocked_trace);
    let root = second
        .iter()
        .find(|s| s["parentSpanId"] == client_span)
        .unwrap();
    assert_eq!(
        attribute(root, "safegate.outcome").unwrap()["stringValue"],
        "blocked"
    );
    assert_eq!(
        attribute(root, "safegate.stream").unwrap()["boolValue"],
        true
    );
    let rules = &attribute(root, "safegate.rule_ids").unwrap()["arrayValue"]["values"];
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["stringValue"].as_str().unwrap().contains("py.")),
        "{rules}"
    );
}

#[test]
fn spans_still_queued_at_sigterm_are_sent_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = otlp_receiver();
    let url = upstream(counter(), |_| words_reply(2));
    let config = dir.path().join("gateway.toml");
    // A batch would wait a minute: only the flush at shutdown sends it.
    std::fs::write(
        &config,
        format!(
            "[tracing]\notlp_endpoint = \"{receiver}/v1/traces\"\nexport_interval_ms = 60000\n\n[[models]]\nname = \"m\"\nupstream = \"{url}\"\n"
        ),
    )
    .unwrap();
    let mut server = common::start(&["--config", config.to_str().unwrap(), "--audit-log", "off"]);
    let (status, body) = post(&server.base, "/v1/chat/completions", &chat("m", 10, false));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(received.lock().unwrap().is_empty());
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t0 = Instant::now();
    while server.child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let spans = json_spans(&received);
    assert!(
        spans.iter().any(|s| s["name"] == "chat m"),
        "{} spans after exit",
        spans.len()
    );
}

/// `protocol = "http/protobuf"`: the spans arrive as `application/x-protobuf` that OTLP's
/// generated types decode; a protocol safegate does not speak stops the start.
#[test]
fn traces_in_otlp_protobuf_when_asked() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;

    let (receiver, received) = otlp_receiver();
    let dir = tempfile::tempdir().unwrap();
    let url = upstream(counter(), |_| words_reply(2));
    let config = dir.path().join("gateway.toml");
    let write = |protocol: &str| {
        std::fs::write(
            &config,
            format!(
                "[tracing]\notlp_endpoint = \"{receiver}\"\nprotocol = \"{protocol}\"\nexport_interval_ms = 100\n\n\
                 [[models]]\nname = \"m\"\nupstream = \"{url}\"\n"
            ),
        )
        .unwrap();
    };
    write("http/protobuf");
    let server = common::start(&["--config", config.to_str().unwrap(), "--audit-log", "off"]);
    let (status, body) = post(&server.base, "/v1/chat/completions", &chat("m", 10, false));
    assert_eq!(status, 200, "{body}");
    let t0 = Instant::now();
    let mut names = Vec::new();
    while !names.iter().any(|n: &String| n == "chat m") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        names.clear();
        for (content_type, body) in received.lock().unwrap().iter() {
            assert_eq!(content_type, "application/x-protobuf");
            let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            for rs in &request.resource_spans {
                let service = &rs.resource.as_ref().unwrap().attributes[0];
                assert_eq!(service.key, "service.name");
                assert_eq!(
                    service.value.as_ref().unwrap().value,
                    Some(Any::StringValue("safegate".into()))
                );
                for ss in &rs.scope_spans {
                    names.extend(ss.spans.iter().map(|s| s.name.clone()));
                }
            }
        }
    }
    assert!(names.iter().any(|n| n == "chat m"), "{names:?}");
    drop(server);

    write("grpc");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[tracing] protocol") && err.contains("gRPC"),
        "{err}"
    );
}
