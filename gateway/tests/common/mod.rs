//! Helpers shared by the tests that start the real `safegate serve` binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(extra: &[&str]) -> Server {
    start_with_env(extra, &[])
}

/// `start` with environment variables set for the server.
pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args([
            "serve",
            "--listen",
            &listen,
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .env_remove("ORT_DYLIB_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned by `Server` at once, so the process is reaped whatever happens next.
    let server = Server {
        child,
        base: format!("http://{listen}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ureq::get(&format!("{}/healthz", server.base))
            .call()
            .is_ok()
        {
            return server;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server did not start");
}

/// The tiny fixture as chat and guard model, under the policies in `policies`.
pub fn start_guarded(policies: &tempfile::TempDir, extra: &[&str]) -> Server {
    let model = fixture("tiny-llama3");
    let model = model.to_str().unwrap();
    let dir = policies.path().to_str().unwrap();
    let mut args = vec!["--model", model, "--guard-model", model, "--policies", dir];
    args.extend_from_slice(extra);
    start(&args)
}

/// A policy folder holding `default.yaml` with the given text.
pub fn policy_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("default.yaml"), yaml).unwrap();
    dir
}

pub fn post(base: &str, path: &str, body: &str) -> (u16, Value) {
    match ureq::post(&format!("{base}{path}"))
        .set("content-type", "application/json")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

/// The gateway's Prometheus exposition.
pub fn metrics(base: &str) -> String {
    ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

/// Runs `scripts/conformance/{script}` with the openai client's Python (.cache/venv, from
/// scripts/setup.sh) and `args`; its stdout, once it exited 0.
pub fn run_conformance(script: &str, args: &[&str]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "run scripts/setup.sh: it installs the openai client into .cache/venv"
    );
    let out = Command::new(python)
        .arg(root.join("scripts/conformance").join(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads one HTTP request (head and body) from `reader`; the body.
pub fn read_request(reader: &mut impl std::io::BufRead) -> Vec<u8> {
    read_request_with_head(reader).1
}

/// One HTTP/1.1 request: its head (request line and headers, lower-cased) and its body.
pub fn read_request_with_head(reader: &mut impl std::io::BufRead) -> (String, Vec<u8>) {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let line = line.to_ascii_lowercase();
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    (head, body)
}

/// Builds the embedded default guard into `dir` as scripts/run.sh does
/// (scripts/guard/install_default.sh, with this test build's binary).
pub fn install_default_guard(dir: &std::path::Path) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(root.join("scripts/guard/install_default.sh"))
        .arg(dir)
        .env("SAFEGATE_BIN", env!("CARGO_BIN_EXE_safegate"))
        .status()
        .unwrap();
    assert!(status.success(), "install_default.sh failed");
}

/// Serves raw HTTP on a fresh loopback port, one request per connection: `respond(n,
/// body)` gives the bytes to send back for the n-th request (None: stop serving). Stands
/// in for upstream models and guard servers, well-behaved or not. Returns `http://ADDR`.
pub fn serve_raw(respond: impl Fn(usize, &[u8]) -> Option<Vec<u8>> + Send + 'static) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let mut reader = std::io::BufReader::new(stream);
            let body = read_request(&mut reader);
            let Some(response) = respond(n, &body) else {
                return;
            };
            let _ = reader.into_inner().write_all(&response);
        }
    });
    base
}

/// A complete `200 OK` response with a JSON body.
pub fn json_response(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A complete `200 OK` event stream: the events, then `[DONE]`.
pub fn sse_response(events: &[Value]) -> Vec<u8> {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A chat completion chunk carrying `text`.
pub fn delta(text: &str) -> Value {
    serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

/// A vLLM-style `/v1/completions` answer: these next-token log-probabilities.
pub fn logprobs_answer(p_unsafe: f64) -> Vec<u8> {
    let top = serde_json::json!({"unsafe": p_unsafe.ln(), "safe": (1.0 - p_unsafe).ln(), "S": 0.0, "1": 0.0});
    json_response(&serde_json::json!({"choices": [{"logprobs": {"top_logprobs": [top]}}]}))
}

/// A private CA (its PEM file written to `dir/ca.pem`) and a server certificate for
/// 127.0.0.1 and localhost signed by it, with its key: what the TLS tests serve.
pub struct TestCa {
    pub ca_file: PathBuf,
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

pub fn test_ca(dir: &std::path::Path) -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "safegate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    TestCa { ca_file, cert, key }
}
