//! The client against servers on loopback that speak as vLLM, TGI, llama.cpp's server and
//! Ollama do (streams written from their documented behaviour), and against servers that
//! misbehave: hanging, flooding, failing, answering with a whole completion.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use safegate_upstream::{
    ApiStyle, Call, Chunk, Deadlines, Endpoint, EndpointConfig, RetryPolicy, UpstreamError,
};

/// A server that answers its n-th connection with `answer(n, request)`, then closes it.
/// Returns the base URL and the count of connections taken.
fn serve(
    answer: impl Fn(usize, &str, &mut std::net::TcpStream) + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body by its length.
            while let Ok(k) = stream.read(&mut buf) {
                if k == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..k]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let l = l.to_ascii_lowercase();
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            answer(n, &text, &mut stream);
        }
    });
    (format!("http://{addr}/v1"), count)
}

fn stream_head() -> &'static str {
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
}

fn answer_with(body: &'static str) -> impl Fn(usize, &str, &mut std::net::TcpStream) {
    move |_, _, s| {
        let _ = s.write_all(stream_head().as_bytes());
        let _ = s.write_all(body.as_bytes());
    }
}

fn config(base: &str) -> EndpointConfig {
    EndpointConfig {
        base_url: base.to_string(),
        style: ApiStyle::OpenAi,
        api_key: None,
        ca_file: None,
        deadlines: Deadlines {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            total: Duration::from_secs(20),
        },
        retry: RetryPolicy {
            retries: 2,
            backoff: Duration::from_millis(20),
            max_wait: Duration::from_secs(2),
        },
        max_line_bytes: 1 << 20,
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// All chunks of a call, or its error.
async fn read_all(call: &mut Call) -> Result<Vec<Chunk>, UpstreamError> {
    let mut out = Vec::new();
    while let Some(c) = call.next().await? {
        out.push(c);
    }
    Ok(out)
}

fn text_of(chunks: &[Chunk]) -> String {
    chunks.iter().filter_map(|c| c.text.clone()).collect()
}

fn collect(config: EndpointConfig) -> Result<Vec<Chunk>, UpstreamError> {
    run(async move {
        let endpoint = Endpoint::new(config)?;
        let mut call = endpoint.open(b"{}", &[], |_, _| {}).await?;
        read_all(&mut call).await
    })
}

const VLLM: &str = concat!(
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
    "data: [DONE]\n\n",
);

// TGI's Messages API: `data:` without a space, usage on the last choice chunk.
const TGI: &str = concat!(
    "data:{\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
    "data:{\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\" there\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
    "data:[DONE]\n\n",
);

// llama.cpp's server: CRLF line ends, timings beside the last chunk.
const LLAMA_CPP: &str = concat!(
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"object\":\"chat.completion.chunk\"}\r\n\r\n",
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" there\"}}],\"object\":\"chat.completion.chunk\"}\r\n\r\n",
    "data: {\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{}}],\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":7,\"total_tokens\":9},\"timings\":{\"predicted_n\":2}}\r\n\r\n",
    "data: [DONE]\r\n\r\n",
);

// Ollama's /v1: keep-alive comments and `event:` lines are harmless; no usage unless asked.
const OLLAMA: &str = concat!(
    ": ping\n\n",
    "event: message\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\" there\"},\"finish_reason\":null}]}\n\n",
    ": ping\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn each_servers_dialect_gives_the_same_reply() {
    for (name, body, usage) in [
        ("vllm", VLLM, Some((7, 2))),
        ("tgi", TGI, Some((7, 2))),
        ("llama.cpp", LLAMA_CPP, Some((7, 2))),
        ("ollama", OLLAMA, None),
    ] {
        let (base, _) = serve(answer_with(body));
        let chunks = collect(config(&base)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(text_of(&chunks), "Hello there", "{name}");
        assert_eq!(
            chunks
                .iter()
                .filter_map(|c| c.finish_reason.clone())
                .collect::<Vec<_>>(),
            ["stop"],
            "{name}"
        );
        assert_eq!(chunks.iter().find_map(|c| c.usage), usage, "{name}");
    }
}

#[test]
fn a_missing_done_is_fine_after_a_finish_but_not_before() {
    let finished =
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n";
    let (base, _) = serve(answer_with(finished));
    assert_eq!(text_of(&collect(config(&base)).unwrap()), "Hi");
    // The last line need not end with a line break either.
    let no_newline =
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"length\"}]}";
    let (base, _) = serve(answer_with(no_newline));
    assert_eq!(text_of(&collect(config(&base)).unwrap()), "Hi");
    let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    let (base, _) = serve(answer_with(cut));
    assert!(matches!(
        collect(config(&base)),
        Err(UpstreamError::Truncated)
    ));
}

#[test]
fn an_event_over_several_data_lines_is_joined() {
    let split = concat!(
        "data: {\"choices\":[{\"delta\":\n",
        "data: {\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n"
    );
    let (base, _) = serve(answer_with(split));
    assert_eq!(text_of(&collect(config(&base)).unwrap()), "Hi");
    let broken = "data: {\"choices\":[{\"delta\":\n\ndata: [DONE]\n\n";
    let (base, _) = serve(answer_with(broken));
    assert!(matches!(
        collect(config(&base)),
        Err(UpstreamError::Malformed(_))
    ));
}

#[test]
fn a_whole_completion_instead_of_a_stream_is_one_chunk() {
    let (base, _) = serve(|_, _, s| {
        let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    let chunks = collect(config(&base)).unwrap();
    assert_eq!(text_of(&chunks), "Hello there");
    assert_eq!(chunks[0].usage, Some((7, 2)));
}

#[test]
fn an_error_event_mid_stream_is_a_failure() {
    let body = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"CUDA out of memory\",\"code\":500}}\n\n",
    );
    let (base, _) = serve(answer_with(body));
    match collect(config(&base)) {
        Err(UpstreamError::Failed(m)) => assert_eq!(m, "CUDA out of memory"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_flooding_line_ends_the_call_within_the_bound() {
    let (base, _) = serve(|_, _, s| {
        let _ = s.write_all(stream_head().as_bytes());
        let block = vec![b'x'; 64 * 1024];
        // 64 MiB without a line break, unless the client hangs up first.
        for _ in 0..1024 {
            if s.write_all(&block).is_err() {
                return;
            }
        }
    });
    let mut cfg = config(&base);
    cfg.max_line_bytes = 256 * 1024;
    match collect(cfg) {
        Err(UpstreamError::LineTooLong { limit }) => assert_eq!(limit, 256 * 1024),
        other => panic!("{other:?}"),
    }
}

#[test]
fn deadlines_for_the_first_event_and_between_events() {
    // Headers at once, then nothing.
    let (base, _) = serve(|_, _, s| {
        let _ = s.write_all(stream_head().as_bytes());
        std::thread::sleep(Duration::from_secs(3));
    });
    let mut cfg = config(&base);
    cfg.deadlines.first_byte = Duration::from_millis(300);
    let t0 = Instant::now();
    let e = collect(cfg).unwrap_err();
    assert_eq!(e.kind(), "timeout_first_byte", "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // One event, then silence: the idle limit.
    let (base, _) = serve(|_, _, s| {
        let _ = s.write_all(stream_head().as_bytes());
        let _ = s.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n");
        std::thread::sleep(Duration::from_secs(3));
    });
    let mut cfg = config(&base);
    cfg.deadlines.idle = Duration::from_millis(300);
    let e = collect(cfg).unwrap_err();
    assert_eq!(e.kind(), "timeout_idle", "{e}");
    // Keep-alive comments forever: they keep the connection from counting as idle (that
    // limit is about a dead connection); the total limit ends the call.
    let (base, _) = serve(|_, _, s| {
        let _ = s.write_all(stream_head().as_bytes());
        for _ in 0..30 {
            if s.write_all(b": ping\n\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut cfg = config(&base);
    cfg.deadlines.total = Duration::from_millis(600);
    let t0 = Instant::now();
    let e = collect(cfg).unwrap_err();
    assert!(
        matches!(e.kind(), "timeout_total" | "timeout_first_byte"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn retries_follow_retry_after_and_stop_at_the_limit() {
    // 429 with Retry-After: 1, then a reply.
    let (base, count) = serve(|n, _, s| {
        if n == 0 {
            let _ = s.write_all(
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        } else {
            let _ = s.write_all(stream_head().as_bytes());
            let _ = s.write_all(VLLM.as_bytes());
        }
    });
    let t0 = Instant::now();
    let retries = run(async {
        let endpoint = Endpoint::new(config(&base)).unwrap();
        let mut waits = Vec::new();
        let mut call = endpoint
            .open(b"{}", &[], |e, wait| waits.push((e.kind(), wait)))
            .await
            .unwrap();
        assert_eq!(text_of(&read_all(&mut call).await.unwrap()), "Hello there");
        waits
    });
    assert_eq!(retries, [("status_429", Duration::from_secs(1))]);
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // 503 every time: one try and two retries, then the error.
    let (base, count) = serve(|_, _, s| {
        let _ = s.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy",
        );
    });
    let e = collect(config(&base)).unwrap_err();
    assert_eq!(e.kind(), "status_5xx");
    assert!(matches!(e, UpstreamError::Status { status: 503, ref body, .. } if body == "busy"));
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // 400 is the request's fault: no retry, no fallback.
    let (base, count) = serve(|_, _, s| {
        let _ = s.write_all(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    });
    let e = collect(config(&base)).unwrap_err();
    assert!(!e.retryable() && !e.falls_back());
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn a_closed_port_is_a_connect_error_worth_retrying() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = collect(config(&format!("http://127.0.0.1:{port}/v1"))).unwrap_err();
    assert_eq!(e.kind(), "connect", "{e}");
    assert!(e.retryable() && e.falls_back());
}

#[test]
fn credentials_and_headers_as_each_api_style_wants() {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx = std::sync::Mutex::new(tx);
    let (base, _) = serve(move |_, request, s| {
        let _ = tx.lock().unwrap().send(request.to_string());
        let _ = s.write_all(stream_head().as_bytes());
        let _ = s.write_all(VLLM.as_bytes());
    });
    let mut cfg = config(&base);
    cfg.api_key = Some("sk-upstream".into());
    run(async {
        let endpoint = Endpoint::new(cfg.clone()).unwrap();
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string();
        let mut call = endpoint
            .open(b"{\"x\":1}", &[("traceparent", traceparent)], |_, _| {})
            .await
            .unwrap();
        read_all(&mut call).await.unwrap();
    });
    let request = rx.recv().unwrap().to_ascii_lowercase();
    assert!(
        request.starts_with("post /v1/chat/completions http/1.1"),
        "{request}"
    );
    assert!(
        request.contains("authorization: bearer sk-upstream"),
        "{request}"
    );
    assert!(
        request.contains("traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert!(request.ends_with("{\"x\":1}"));

    cfg.style = ApiStyle::Azure {
        api_version: "2024-10-21".into(),
    };
    run(async {
        let endpoint = Endpoint::new(cfg).unwrap();
        let mut call = endpoint.open(b"{}", &[], |_, _| {}).await.unwrap();
        read_all(&mut call).await.unwrap();
    });
    let request = rx.recv().unwrap().to_ascii_lowercase();
    assert!(
        request.starts_with("post /v1/chat/completions?api-version=2024-10-21 http/1.1"),
        "{request}"
    );
    assert!(request.contains("api-key: sk-upstream") && !request.contains("authorization"));
}

#[test]
fn bad_configurations_fail_at_start() {
    let mut cfg = config("ftp://x/v1");
    assert!(Endpoint::new(cfg.clone()).is_err());
    cfg.base_url = "http://x/v1".into();
    cfg.ca_file = Some("/nonexistent.pem".into());
    let e = Endpoint::new(cfg.clone()).err().unwrap().to_string();
    assert!(e.contains("ca_file is set but"), "{e}");
    cfg.base_url = "https://x/v1".into();
    let e = Endpoint::new(cfg.clone()).err().unwrap().to_string();
    assert!(e.contains("/nonexistent.pem"), "{e}");
    let dir = std::env::temp_dir().join(format!("safegate-ca-{}", std::process::id()));
    std::fs::write(&dir, "not a certificate").unwrap();
    cfg.ca_file = Some(dir.clone());
    let e = Endpoint::new(cfg).err().unwrap().to_string();
    assert!(e.contains("no PEM certificate"), "{e}");
    let _ = std::fs::remove_file(dir);
}

#[test]
fn dropping_a_call_closes_its_connection() {
    // The server notices the client hung up: its write fails within a moment.
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<Duration>();
    let closed_tx = std::sync::Mutex::new(closed_tx);
    let (base, _) = serve(move |_, _, s| {
        let _ = s.write_all(stream_head().as_bytes());
        let _ = s.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if s.write_all(b": ping\n\n").and_then(|_| s.flush()).is_err() {
                let _ = closed_tx.lock().unwrap().send(t0.elapsed());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    run(async {
        let endpoint = Endpoint::new(config(&base)).unwrap();
        let mut call = endpoint.open(b"{}", &[], |_, _| {}).await.unwrap();
        assert_eq!(
            call.next().await.unwrap().unwrap().text.as_deref(),
            Some("Hi")
        );
        assert_eq!(endpoint.open_calls(), 1);
        drop(call);
        assert_eq!(endpoint.open_calls(), 0);
    });
    let after = closed_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(after < Duration::from_secs(5), "{after:?}");
}
