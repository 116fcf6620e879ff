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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
