//! Generation on OpenAI-compatible upstream servers (vLLM, TGI, llama.cpp's server, Ollama,
//! hosted APIs, another safegate), with the same output checks as local generation. The
//! request is always sent with `stream: true`, so whole and streamed responses both arrive
//! as deltas that the checks see as they come.
//!
//! The relay is a task on the worker's runtime (`safegate_upstream` does the HTTP): it
//! tries the model's upstream, then its fallbacks in order, while nothing of a reply has
//! been relayed; it holds the reply to the request's `max_tokens` (`crate::budget`); and it
//! ends, dropping the upstream connection, as soon as the receiver goes (the client left,
//! or a check blocked), even while the upstream is silent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use safegate_engine::{Completion, FinishReason, Usage};
use safegate_upstream::{
    ApiStyle, Deadlines, Endpoint, EndpointConfig, RetryPolicy, UpstreamError,
};
use serde_json::{json, Value};

use super::metrics::UpstreamMetrics;
use super::ApiError;
use crate::budget::TokenBudget;
use crate::config::{ApiStyleName, UpstreamModel};

/// What the upstream sent.
pub enum UpstreamEvent {
    Delta(String),
    /// A piece of a tool call (held by the checks until the reply is complete).
    ToolCall(safegate_sse::ToolCallDelta),
    Done(Completion),
    Failed(ApiError),
}

/// One configured upstream model, ready to call.
pub struct Target {
    pub config: UpstreamModel,
    endpoint: Endpoint,
    tokenizer: Option<tokenizers::Tokenizer>,
    health: Mutex<Health>,
}

/// What the calls to an upstream found lately (for /readyz).
#[derive(Default)]
struct Health {
    consecutive_failures: u32,
    last_ok_unix: Option<u64>,
    last_error: Option<(&'static str, u64)>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The configured upstream models, with credentials read and TLS settings built: a missing
/// key, CA file or tokenizer stops the start-up, not the first request.
pub fn build_targets(models: &[UpstreamModel]) -> anyhow::Result<Vec<Arc<Target>>> {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Target::build(m)
                .map(Arc::new)
                .with_context(|| format!("models[{i}] (`{}`)", m.name))
        })
        .collect()
}

impl Target {
    fn build(m: &UpstreamModel) -> anyhow::Result<Self> {
        let api_key = match (&m.api_key_env, &m.api_key_file) {
            (Some(var), _) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|k| !k.is_empty())
                    .with_context(|| format!("api_key_env: {var} is not set"))?,
            ),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("api_key_file: cannot read {}", path.display()))?;
                let key = text.lines().next().unwrap_or("").trim().to_string();
                anyhow::ensure!(!key.is_empty(), "api_key_file: {} is empty", path.display());
                Some(key)
            }
            (None, None) => None,
        };
        let style = match m.api_style {
            ApiStyleName::Openai => ApiStyle::OpenAi,
            ApiStyleName::Azure => ApiStyle::Azure {
                api_version: m.api_version.clone().unwrap_or_default(),
            },
        };
        let endpoint = Endpoint::new(EndpointConfig {
            base_url: m.upstream.clone(),
            style,
            api_key,
            ca_file: m.ca_file.clone(),
            deadlines: Deadlines {
                connect: Duration::from_millis(m.connect_timeout_ms),
                first_byte: Duration::from_millis(m.timeout_ms),
                idle: Duration::from_millis(m.timeout_ms),
                total: Duration::from_millis(m.total_timeout_ms),
            },
            retry: RetryPolicy {
                retries: m.retries,
                backoff: Duration::from_millis(m.retry_backoff_ms),
                max_wait: Duration::from_millis(m.total_timeout_ms).min(Duration::from_secs(30)),
            },
            max_line_bytes: m.max_line_bytes,
        })?;
        let tokenizer = match &m.tokenizer {
            Some(p) => {
                let file = if p.is_dir() {
                    p.join("tokenizer.json")
                } else {
                    p.clone()
                };
                Some(
                    tokenizers::Tokenizer::from_file(&file)
                        .map_err(|e| anyhow::anyhow!("tokenizer {}: {e}", file.display()))?,
                )
            }
            None => None,
        };
        Ok(Self {
            config: m.clone(),
            endpoint,
            tokenizer,
            health: Mutex::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Calls in progress (each holds one connection).
    pub fn open_calls(&self) -> usize {
        self.endpoint.open_calls()
    }

    /// For /readyz: where it is (without credentials) and how its calls went lately.
    pub fn health_json(&self) -> Value {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "name": self.config.name,
            "url": self.config.upstream,
            "fallbacks": self.config.fallbacks,
            "status": if h.consecutive_failures == 0 { "ok" } else { "failing" },
            "consecutive_failures": h.consecutive_failures,
            "last_ok_unix": h.last_ok_unix,
            "last_error": h.last_error.map(|(kind, at)| json!({"kind": kind, "at_unix": at})),
            "open_calls": self.open_calls(),
        })
    }

    fn record(&self, result: Result<(), &UpstreamError>) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                h.consecutive_failures = 0;
                h.last_ok_unix = Some(unix_now());
            }
            Err(e) => {
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                h.last_error = Some((e.kind(), unix_now()));
            }
        }
    }
}

/// One upstream request: the model's chain (its upstream, then its fallbacks) and what to
/// send.
pub struct Relay {
    pub chain: Vec<Arc<Target>>,
    pub messages: Value,
    pub params: serde_json::Map<String, Value>,
    pub max_tokens: usize,
    /// Headers passed on (`traceparent`).
    pub headers: Vec<(&'static str, String)>,
    pub metrics: UpstreamMetrics,
}

/// Starts the relay; events arrive on the returned channel. Dropping the receiver ends the
/// relay and its upstream call.
pub fn start(relay: Relay) -> tokio::sync::mpsc::Receiver<UpstreamEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    actix_web::rt::spawn(async move {
        tokio::select! {
            _ = tx.closed() => {}
            () = run(&relay, &tx) => {}
        }
    });
    rx
}

async fn run(relay: &Relay, tx: &tokio::sync::mpsc::Sender<UpstreamEvent>) {
    for (i, target) in relay.chain.iter().enumerate() {
        if let Some(previous) = i.checked_sub(1).map(|p| &relay.chain[p]) {
            relay.metrics.fallbacks(previous.name(), target.name());
            tracing::warn!(
                from = previous.name(),
                to = target.name(),
                "upstream fallback"
            );
        }
        match call(relay, target, tx).await {
            Ok(()) => return,
            Err(Failure { error, relayed }) => {
                let last = i + 1 == relay.chain.len();
                if relayed || last || !error.falls_back() {
                    let _ = tx
                        .send(UpstreamEvent::Failed(to_api_error(target, &error)))
                        .await;
                    return;
                }
            }
        }
    }
}

struct Failure {
    error: UpstreamError,
    /// Part of the reply went on already: no other upstream may start it again.
    relayed: bool,
}

/// One upstream, retries included, to the end of its reply.
async fn call(
    relay: &Relay,
    target: &Target,
    tx: &tokio::sync::mpsc::Sender<UpstreamEvent>,
) -> Result<(), Failure> {
    let mut body = json!({
        "model": target.config.upstream_model.as_deref().unwrap_or(&target.config.name),
        "messages": relay.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(obj) = body.as_object_mut() {
        obj.extend(relay.params.clone());
    }
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let name = target.name();
    let metrics = &relay.metrics;
    let t0 = Instant::now();
    let failed = |error: UpstreamError, relayed: bool| {
        metrics.call(name, error.kind());
        target.record(Err(&error));
        log_failure(name, &error);
        Failure { error, relayed }
    };
    let mut upstream_call = target
        .endpoint
        .open(&body, &relay.headers, |e, wait| {
            metrics.retry(name, e.kind());
            tracing::info!(model = name, error = %e, wait_ms = wait.as_millis() as u64, "upstream retry");
        })
        .await
        .map_err(|e| failed(e, false))?;
    let mut budget = TokenBudget::new(target.tokenizer.as_ref(), relay.max_tokens);
    let mut finish = None;
    let mut usage = None;
    let mut first_event = None;
    let mut first_text = None;
    let mut relayed = false;
    let mut cut = false;
    loop {
        let chunk = match upstream_call.next().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Err(failed(e, relayed)),
        };
        if first_event.is_none() {
            first_event = Some(t0.elapsed());
            metrics.first_byte(name, t0.elapsed());
        }
        if let Some(u) = chunk.usage {
            usage = Some(u);
        }
        if let Some(f) = chunk.finish_reason {
            finish = Some(f);
        }
        for call in chunk.tool_calls {
            relayed = true;
            let spent = budget.spend_tool(call.arguments.as_deref().unwrap_or(""));
            if tx.send(UpstreamEvent::ToolCall(call)).await.is_err() {
                return Ok(());
            }
            cut |= spent;
        }
        if cut {
            break;
        }
        if let Some(text) = chunk.text {
            first_text.get_or_insert_with(|| t0.elapsed());
            let pass = budget.push(&text);
            if !pass.text.is_empty() {
                relayed = true;
                if tx.send(UpstreamEvent::Delta(pass.text)).await.is_err() {
                    return Ok(()); // nobody listens any more: drop the connection
                }
            }
            if pass.spent {
                cut = true;
                break;
            }
        }
    }
    drop(upstream_call); // back to the pool when read to its end; closed when cut short
    let tail = budget.finish();
    cut |= tail.spent;
    metrics.call(name, "ok");
    target.record(Ok(()));
    let finish_reason = match finish.as_deref() {
        _ if cut => FinishReason::Length,
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    let usage = match usage {
        Some((prompt_tokens, completion_tokens)) if !cut => Usage {
            prompt_tokens,
            completion_tokens,
        },
        // Cut short (the upstream's count never came) or not reported: ours.
        other => Usage {
            prompt_tokens: other.map_or(0, |u| u.0),
            completion_tokens: budget.used(),
        },
    };
    let ttft = first_text.unwrap_or_else(|| t0.elapsed());
    let _ = tx
        .send(UpstreamEvent::Done(Completion {
            finish_reason,
            usage,
            tail_text: tail.text,
            time_to_first_token: ttft,
            queue_time: Duration::ZERO,
            decode_time: t0.elapsed().saturating_sub(ttft),
        }))
        .await;
    Ok(())
}

fn log_failure(name: &str, e: &UpstreamError) {
    // What the upstream said stays in the server log: an error body can carry anything
    // (stack traces, connection strings), and nothing an upstream says reaches the client
    // without the checks. The client learns the model and what went wrong.
    match e {
        UpstreamError::Status { status, body, .. } => {
            tracing::warn!(model = name, status, body = %body, "upstream error answer")
        }
        other => {
            tracing::warn!(model = name, error = %other, kind = other.kind(), "upstream call failed")
        }
    }
}

fn to_api_error(target: &Target, e: &UpstreamError) -> ApiError {
    use actix_web::http::StatusCode;
    let name = target.name();
    let bad_gateway = |message: String| ApiError {
        status: StatusCode::BAD_GATEWAY,
        code: Some("upstream_error".into()),
        ..ApiError::internal(message)
    };
    match e {
        UpstreamError::Status {
            status: 429,
            retry_after,
            ..
        } => ApiError {
            retry_after: Some(retry_after.map_or(1, |d| d.as_secs().max(1))),
            ..ApiError::rate_limited(format!(
                "the upstream for `{name}` is rate-limiting this gateway; retry later"
            ))
        },
        UpstreamError::Status { status, .. }
            if (400..500).contains(status) && !matches!(status, 401 | 403) =>
        {
            ApiError {
                code: Some("upstream_rejected".into()),
                ..ApiError::invalid(format!(
                    "the upstream model `{name}` refused the request (HTTP {status})"
                ))
            }
        }
        UpstreamError::Status { status, .. } => {
            bad_gateway(format!("the upstream for `{name}` answered HTTP {status}"))
        }
        UpstreamError::Timeout(_, limit) => ApiError {
            message: format!("the upstream for `{name}` {e}"),
            ..ApiError::timeout(*limit)
        },
        UpstreamError::Connect(_) => {
            bad_gateway(format!("the upstream for `{name}` cannot be reached"))
        }
        // The event's text (a malformed line, an in-stream error message) goes to the log
        // only, as for error answers.
        UpstreamError::Malformed(_) => bad_gateway(format!(
            "the upstream for `{name}` sent a malformed stream event"
        )),
        UpstreamError::Failed(_) => {
            bad_gateway(format!("the upstream for `{name}` failed mid-stream"))
        }
        UpstreamError::BrokeOff(_) => {
            bad_gateway(format!("the upstream for `{name}` broke off its stream"))
        }
        UpstreamError::Truncated => bad_gateway(format!(
            "the upstream stream for `{name}` ended without [DONE] or a finish reason"
        )),
        UpstreamError::LineTooLong { .. } | UpstreamError::Config(_) => {
            bad_gateway(format!("the upstream for `{name}` {e}"))
        }
    }
}
