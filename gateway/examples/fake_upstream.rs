//! A fake OpenAI-compatible model server with a fixed latency, for load benchmarks of the
//! gateway's own overhead (scripts/bench/gateway_load.sh).
//!
//!     cargo run --release -p safegate-gateway --example fake_upstream -- 127.0.0.1:9100 20
//!
//! Every `POST /v1/chat/completions` waits the given milliseconds, then answers with a short
//! reply: server-sent events when `stream` is true, one JSON object otherwise.

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

const WORDS: [&str; 6] = ["The ", "answer ", "is ", "forty", "-two", "."];

async fn chat(body: web::Json<Value>, latency: web::Data<Duration>) -> HttpResponse {
    actix_web::rt::time::sleep(**latency).await;
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
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(latency.clone())
                .route("/v1/chat/completions", web::post().to(chat))
        })
        .workers(1)
        .bind(addr)?
        .run()
        .await
    })
}
