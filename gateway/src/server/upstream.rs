//! Generation on an OpenAI-compatible upstream server (vLLM, TGI, llama.cpp's server, Ollama,
//! another safegate), with the same output checks as local generation. The request is
//! always sent with `stream: true`, so whole and streamed responses both arrive as deltas
//! that the checks see as they come. Plain HTTP (the usual in-cluster hop).
//!
//! The upstream connection is read on a blocking thread; deltas reach the async side
//! through a bounded channel. When the receiver goes away (the client left, or a check
//! blocked), the thread stops and drops the connection.

use std::io::BufRead;
use std::time::{Duration, Instant};

use safegate_engine::{Completion, FinishReason, Usage};
use serde_json::{json, Value};

use super::ApiError;
use crate::config::UpstreamModel;

/// What the upstream sent.
pub enum UpstreamEvent {
    Delta(String),
    Done(Completion),
    Failed(ApiError),
}

fn bad_gateway(message: String) -> ApiError {
    ApiError {
        status: actix_web::http::StatusCode::BAD_GATEWAY,
        code: Some("upstream_error".into()),
        ..ApiError::internal(message)
    }
}

/// One connection pool per upstream model, kept for the life of the process.
fn agent_for(model: &UpstreamModel) -> ureq::Agent {
    static AGENTS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, ureq::Agent>>,
    > = std::sync::OnceLock::new();
    let mut agents = AGENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    agents
        .entry(model.name.clone())
        .or_insert_with(|| {
            let timeout = Duration::from_millis(model.timeout_ms);
            ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5).min(timeout))
                .timeout_read(timeout)
                .max_idle_connections_per_host(256)
                .build()
        })
        .clone()
}

/// Starts the upstream request; events arrive on the returned channel.
pub fn start(
    model: &UpstreamModel,
    messages: Value,
    params: serde_json::Map<String, Value>,
) -> tokio::sync::mpsc::Receiver<UpstreamEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let model = model.clone();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let result = relay(&model, messages, params, t0, &tx);
        if let Err(e) = result {
            let _ = tx.blocking_send(UpstreamEvent::Failed(e));
        }
    });
    rx
}

fn relay(
    model: &UpstreamModel,
    messages: Value,
    params: serde_json::Map<String, Value>,
    t0: Instant,
    tx: &tokio::sync::mpsc::Sender<UpstreamEvent>,
) -> Result<(), ApiError> {
    let mut body = json!({
        "model": model.upstream_model.as_deref().unwrap_or(&model.name),
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(obj) = body.as_object_mut() {
        obj.extend(params);
    }
    let url = format!("{}/chat/completions", model.upstream.trim_end_matches('/'));
    let timeout = Duration::from_millis(model.timeout_ms);
    let agent = agent_for(model);
    let mut request = agent.post(&url).set("accept", "text/event-stream");
    if let Some(var) = &model.api_key_env {
        if let Ok(key) = std::env::var(var) {
            request = request.set("authorization", &format!("Bearer {key}"));
        }
    }
    let response = match request.send_json(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            // What the upstream said stays in the server log: an error body can carry
            // anything (stack traces, connection strings), and nothing an upstream says
            // reaches the client without the checks. The client learns the model and the
            // status.
            let text: String = r
                .into_string()
                .unwrap_or_default()
                .chars()
                .take(2000)
                .collect();
            tracing::warn!(model = %model.name, status = code, body = %text, "upstream error answer");
            return Err(
                if (400..500).contains(&code) && code != 401 && code != 403 {
                    ApiError {
                        code: Some("upstream_rejected".into()),
                        ..ApiError::invalid(format!(
                            "the upstream model `{}` refused the request (HTTP {code})",
                            model.name
                        ))
                    }
                } else {
                    bad_gateway(format!(
                        "the upstream for `{}` answered HTTP {code}",
                        model.name
                    ))
                },
            );
        }
        Err(ureq::Error::Transport(t)) => {
            let timed_out = t.to_string().contains("timed out");
            tracing::warn!(model = %model.name, error = %t, "upstream unreachable");
            return Err(if timed_out {
                ApiError {
                    status: actix_web::http::StatusCode::GATEWAY_TIMEOUT,
                    ..ApiError::timeout(timeout)
                }
            } else {
                bad_gateway(format!(
                    "the upstream for `{}` cannot be reached",
                    model.name
                ))
            });
        }
    };
    let mut finish = None;
    let mut usage = Usage::default();
    let mut first_token = None;
    let mut completion_chars = 0usize;
    let mut reader = std::io::BufReader::new(response.into_reader());
    let mut buf = String::new();
    loop {
        buf.clear();
        let read = reader.read_line(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut
                || e.kind() == std::io::ErrorKind::WouldBlock
            {
                ApiError::timeout(timeout)
            } else {
                tracing::warn!(model = %model.name, error = %e, "upstream stream broke off");
                bad_gateway(format!(
                    "the upstream for `{}` broke off its stream",
                    model.name
                ))
            }
        })?;
        if read == 0 {
            break;
        }
        let chunk = match safegate_sse::parse_line(&buf) {
            Ok(safegate_sse::Line::Ignored) => continue,
            Ok(safegate_sse::Line::Chunk(chunk)) => chunk,
            Ok(safegate_sse::Line::Done) => {
                let finish_reason = match finish.as_deref() {
                    Some("length") => FinishReason::Length,
                    _ => FinishReason::Stop,
                };
                if usage.completion_tokens == 0 && completion_chars > 0 {
                    // An upstream that sends no usage: count deltas as tokens, roughly.
                    usage.completion_tokens = completion_chars;
                }
                // Read to the end of the body so the connection goes back to the pool.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                let ttft = first_token.unwrap_or_else(|| t0.elapsed());
                let _ = tx.blocking_send(UpstreamEvent::Done(Completion {
                    finish_reason,
                    usage,
                    tail_text: String::new(),
                    time_to_first_token: ttft,
                    queue_time: Duration::ZERO,
                    decode_time: t0.elapsed().saturating_sub(ttft),
                }));
                return Ok(());
            }
            Err(e) => {
                // The event's text (a malformed line, an in-stream error message) goes to
                // the log only, as for error answers above.
                tracing::warn!(model = %model.name, error = %e, "upstream stream error");
                let what = match e {
                    safegate_sse::SseError::Malformed(_) => "sent a malformed stream event",
                    safegate_sse::SseError::Upstream(_) => "failed mid-stream",
                };
                return Err(bad_gateway(format!(
                    "the upstream for `{}` {what}",
                    model.name
                )));
            }
        };
        if let Some((prompt_tokens, completion_tokens)) = chunk.usage {
            usage = Usage {
                prompt_tokens,
                completion_tokens,
            };
        }
        if let Some(f) = chunk.finish_reason {
            finish = Some(f);
        }
        if let Some(text) = chunk.text {
            first_token.get_or_insert_with(|| t0.elapsed());
            completion_chars += 1;
            if tx.blocking_send(UpstreamEvent::Delta(text)).is_err() {
                return Ok(()); // nobody listens any more: drop the connection
            }
        }
    }
    Err(bad_gateway(
        "the upstream stream ended without [DONE]".into(),
    ))
}
