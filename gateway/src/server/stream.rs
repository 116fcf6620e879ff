//! Streamed chat completions (server-sent events): the reply goes through the same output
//! checks as a whole one (`crate::output::OutputChecks`), and each text the machine
//! releases leaves as a chunk at once. What the release rule means for a reader:
//! - the guard re-scores the reply so far every `rescore_every_tokens` tokens; text goes
//!   out up to the last calm score minus `hold_back_tokens`, and the last piece only once
//!   the verdict on the whole reply (which alone decides a block) is known;
//! - code, fenced or not, is held until its block is complete and the shield has scanned
//!   it; prose outside code goes out line by line, an incomplete line only while it is
//!   plain prose.
//!
//! A block ends the stream with `finish_reason: "content_filter"` and the policy's message;
//! the generation is cancelled at once, as it is when the client goes away.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use safegate_api::response::{ChatCompletionChunk, ChunkChoice, Delta, UsageBody};
use safegate_engine::Completion;
use serde_json::{json, Value};

use super::audit::AuditRecord;
use super::backend::{Event, Source};
use super::checks::{self, StreamShield};
use super::reply::{self, Prepared};
use super::respond::{self, filter_results};
use super::{ApiError, AppState};
use crate::output::{Outcome, OutputChecks};
use crate::tools::ToolCalls;

/// The response body: SSE frames from the task that drives the generation. Dropped by
/// actix when the client disconnects, which the task notices.
struct SseBody(tokio::sync::mpsc::Receiver<Bytes>);

impl futures_core::Stream for SseBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// Starts the generation and returns the streaming response; the task that drives it
/// writes the audit line and the metrics when it ends.
pub(super) fn start(
    state: web::Data<AppState>,
    mut prepared: Prepared,
    t0: Instant,
    audit: &mut AuditRecord,
) -> Result<HttpResponse, ApiError> {
    let generation = prepared.start()?;
    // A few frames of slack; a slow reader then slows the relay, not the server's memory.
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    let sse = Sse {
        tx,
        id: reply::response_id("chatcmpl"),
        created: reply::unix_now(),
        model: prepared.backend.model_name(),
        include_usage: prepared.include_usage,
    };
    let audit = std::mem::take(audit);
    actix_web::rt::spawn(super::trace::scoped(
        super::trace::current(),
        run(state, prepared, generation, sse, t0, audit),
    ));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(SseBody(rx)))
}

struct Sse {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Sse {
    /// Sends one `data:` frame; false when the client has gone.
    async fn send(&self, payload: &impl serde::Serialize) -> bool {
        let Ok(json) = serde_json::to_string(payload) else {
            return false;
        };
        let frame = format!("data: {json}\n\n");
        self.tx.send(Bytes::from(frame)).await.is_ok()
    }

    fn chunk(
        &self,
        delta: Delta,
        finish_reason: Option<&'static str>,
        filter: Option<Value>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                content_filter_results: filter,
            }],
            usage: self.include_usage.then_some(None),
        }
    }

    async fn content(&self, text: &str) -> bool {
        let delta = Delta {
            content: Some(text.to_string()),
            ..Default::default()
        };
        text.is_empty() || self.send(&self.chunk(delta, None, None)).await
    }

    async fn done(&self) -> bool {
        self.tx
            .send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .is_ok()
    }
}

/// How a stream ended.
enum End {
    /// The generation ended and the checks settled (the reply may still be blocked).
    Settled(Completion),
    /// A check blocked the reply before the generation ended.
    Blocked,
    ClientGone,
    Failed(ApiError),
}

/// Drives one stream: generation events into the output checks, released text out to the
/// client, until the reply is settled, blocked, failed or abandoned.
async fn drive(
    state: &AppState,
    p: &Prepared,
    generation: &mut Source,
    checks: &mut OutputChecks,
    tools: &mut ToolCalls,
    sse: &Sse,
    t0: Instant,
) -> End {
    let mut shield = StreamShield::new(state, checks);
    let messages = &p.req.messages;
    let limit = std::time::Duration::from_millis(state.limits.request_timeout_ms);
    let deadline = tokio::time::Instant::from_std(t0 + limit);
    loop {
        let event = match tokio::time::timeout_at(deadline, generation.next()).await {
            Ok(event) => event,
            Err(_) => return End::Failed(ApiError::timeout(limit)),
        };
        let step = match event {
            Event::Text(t) => {
                if sse.tx.is_closed() {
                    return End::ClientGone;
                }
                checks.push(&t);
                match shield.scan(state, checks, &t).await {
                    Ok(()) => checks::rescore_if_due(state, checks, messages).await,
                    e => e,
                }
            }
            // Tool calls are held whole until the reply is settled (never released in part).
            Event::ToolCall(call) => tools.push(&call).map_err(super::chat::tool_calls_too_long),
            Event::Done(c) => {
                checks.push(&c.tail_text);
                let settled = async {
                    shield.scan(state, checks, &c.tail_text).await?;
                    checks::settle(state, checks, shield, messages, tools).await
                };
                return match settled.await {
                    Ok(()) if checks.blocked().is_some() => End::Blocked,
                    Ok(()) => End::Settled(c),
                    Err(e) => End::Failed(e),
                };
            }
            Event::Failed(e) => Err(e),
        };
        if let Err(e) = step {
            return End::Failed(e);
        }
        if checks.blocked().is_some() {
            return End::Blocked;
        }
        if !sse.content(checks.release()).await {
            return End::ClientGone;
        }
    }
}

async fn run(
    state: web::Data<AppState>,
    p: Prepared,
    mut generation: Source,
    sse: Sse,
    t0: Instant,
    mut audit: AuditRecord,
) {
    let mut checks = p.output_checks(&state);
    let mut tools = ToolCalls::new(state.limits.max_tool_call_bytes);
    let first = sse.chunk(
        Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            ..Default::default()
        },
        None,
        None,
    );
    let end = if sse.send(&first).await {
        drive(
            &state,
            &p,
            &mut generation,
            &mut checks,
            &mut tools,
            &sse,
            t0,
        )
        .await
    } else {
        End::ClientGone
    };
    // Stop generating now (local: within one step; upstream: the relay drops the
    // connection), whatever happens to the rest of the response.
    drop(generation);

    let output = reply::record_output(&state, &checks, &mut audit);
    if !tools.is_empty() {
        audit.tool_calls = Some(tools.calls().into_iter().map(|c| c.name).collect());
    }
    // What is still to go out of an answered reply leaves after the audit line, which
    // already counts it.
    let rest = match &end {
        End::Settled(_) => checks.release().to_string(),
        _ => String::new(),
    };
    let outcome = match &end {
        End::Settled(_) | End::Blocked => checks.outcome(),
        End::ClientGone => Outcome::ClientClosed,
        End::Failed(e) => Outcome::of_error(e.status.as_u16(), e.code.as_deref()),
    };
    audit.outcome = Some(outcome.as_str());
    audit.released_bytes = Some(checks.released());
    audit.status = Some(match &end {
        End::Failed(e) => e.status.as_u16(),
        _ => 200,
    });
    if let End::Failed(e) = &end {
        audit.error = Some(e.code.clone().unwrap_or_else(|| e.kind.to_string()));
    }
    if let End::Settled(c) = &end {
        reply::observe_generation(&state, c);
        audit.usage = Some(c.usage);
    }
    respond::observe_request(
        &state,
        "chat_completions",
        t0,
        outcome,
        Some(checks.released()),
    );
    // The last frames leave only after the audit line is on disk.
    if let Err(e) = respond::write_audit(&state, "chat_completions", t0, audit).await {
        tracing::error!("audit log write failed: {e}");
        let e = ApiError::internal("the audit log cannot be written; the response is incomplete");
        sse.send(&json!({"error": e.body()})).await;
        return;
    }
    match end {
        End::Settled(c) if checks.blocked().is_none() => {
            if !sse.content(&rest).await {
                return;
            }
            if let Some(note) = &output.note {
                if !sse.content(&format!("\n\n{note}")).await {
                    return;
                }
            }
            let finish = if tools.is_empty() {
                reply::finish_reason_name(c.finish_reason)
            } else {
                // Cleared with the rest of the reply: the calls go out whole, in one chunk.
                let calls = Delta {
                    tool_calls: Some(tools.to_json(true)),
                    ..Default::default()
                };
                if !sse.send(&sse.chunk(calls, None, None)).await {
                    return;
                }
                reply::finish_reason_with_calls(c.finish_reason)
            };
            let last = sse.chunk(
                Delta::default(),
                Some(finish),
                Some(filter_results(&output)),
            );
            if !sse.send(&last).await {
                return;
            }
            if sse.include_usage {
                let u = c.usage;
                let mut usage = sse.chunk(Delta::default(), None, None);
                usage.choices.clear();
                usage.usage = Some(Some(UsageBody::new(u.prompt_tokens, u.completion_tokens)));
                if !sse.send(&usage).await {
                    return;
                }
            }
            sse.done().await;
        }
        End::Settled(_) | End::Blocked => {
            let decision = checks.blocked().cloned().unwrap_or(output);
            let last = sse.chunk(
                Delta {
                    content: Some(decision.message.clone().unwrap_or_default()),
                    ..Default::default()
                },
                Some("content_filter"),
                Some(filter_results(&decision)),
            );
            if sse.send(&last).await {
                sse.done().await;
            }
        }
        End::Failed(e) => {
            sse.send(&json!({"error": e.body()})).await;
        }
        End::ClientGone => {}
    }
}
