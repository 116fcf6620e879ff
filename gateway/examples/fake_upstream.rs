//! A fake OpenAI-compatible model server with a fixed latency, for load benchmarks of the
//! gateway's own overhead (scripts/bench/gateway_load.sh).
//!
//!     cargo run --release -p safegate-gateway --example fake_upstream -- 127.0.0.1:9100 20
//!     ... -- 127.0.0.1:9443 20 cert.pem key.pem     (HTTPS, HTTP/1.1 and HTTP/2)
//!
//! Every `POST /v1/chat/completions` waits the given milliseconds, then answers with a short
//! reply: server-sent events when `stream` is true, one JSON object otherwise.

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

const WORDS: [&str; 6] = ["The ", "answer ", "is ", "forty", "-two", "."];

async fn chat(body: web::Json<Value>, latency: web::Data<Duration>) -> HttpResponse {
    // tokio's timer has millisecond granularity: a zero latency skips it altogether.
    if !latency.is_zero() {
        actix_web::rt::time::sleep(**latency).await;
    }
    let usage = json!({"prompt_tokens": 10, "completion_tokens": WORDS.len(), "total_tokens": 10 + WORDS.len()});
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let mut out = String::new();
        for w in WORDS {
            let chunk = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
            out.push_str(&format!("data: {chunk}\n\n"));
        }
        let last = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage});
        out.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
        HttpResponse::Ok()
            .content_type("text/event-stream")
            .body(out)
    } else {
        HttpResponse::Ok().json(json!({
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS.concat()}, "finish_reason": "stop"}],
            "usage": usage,
        }))
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9100".into());
    let ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let latency = web::Data::new(Duration::from_millis(ms));
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => Some(tls_config(&cert, &key)?),
        _ => None,
    };
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(latency.clone())
                .route("/v1/chat/completions", web::post().to(chat))
        })
        .workers(1);
        match tls {
            Some(tls) => server.bind_rustls_0_23(addr, tls)?,
            None => server.bind(addr)?,
        }
        .run()
        .await
    })
}

fn tls_config(cert: &str, key: &str) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(std::io::Error::other)?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
