//! Streamed chat completions (server-sent events) with the output checks in the loop.
//!
//! What reaches the client is only text that every check has seen:
//! - the guard re-scores the accumulated response every `rescore_every_tokens` tokens; text
//!   is released only up to the last scored point minus `hold_back_tokens` tokens (so a
//!   phrase that turns unsafe a few tokens later is still held), only while that score is
//!   below the policy's release threshold (stricter than the block threshold), and the
//!   rest after the final score of the whole response, which alone decides a block (so a
//!   streamed reply gets the decision the same reply gets whole);
//! - the code of a block still open is held until the block closes and the shield has
//!   scanned it, and so is code without a fence (`StreamScanner::unscanned_from`); prose
//!   outside code is released line by line, an incomplete line only while it is plain prose.
//!
//! A block ends the stream with `finish_reason: "content_filter"` and the policy's message;
//! the generation is cancelled at once, as it is when the client goes away.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use safegate_engine::{ChatMessage, Completion};
use safegate_policies::{decide, Decision, Policy, Stage, Verdict};
use safegate_shield::{Finding, StreamScanner};
use serde_json::{json, Value};

use super::chat::{self, Event, Prepared, Source};
use super::{ApiError, AppState};

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
    audit: serde_json::Map<String, Value>,
) -> Result<HttpResponse, ApiError> {
    let generation = prepared.start()?;
    // A few frames of slack; a slow reader then slows the relay, not the server's memory.
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    let sse = Sse {
        tx,
        id: chat::completion_id(),
        created: chat::unix_now(),
        model: prepared.model_name(),
        include_usage: prepared.include_usage,
    };
    actix_web::rt::spawn(run(state, prepared, generation, sse, t0, audit));
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
    async fn send(&self, payload: &Value) -> bool {
        let frame = format!("data: {payload}\n\n");
        self.tx.send(Bytes::from(frame)).await.is_ok()
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>, extra: Option<Value>) -> Value {
        let mut choice = json!({"index": 0, "delta": delta, "finish_reason": finish_reason});
        if let (Some(Value::Object(extra)), Some(obj)) = (extra, choice.as_object_mut()) {
            obj.extend(extra);
        }
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    async fn content(&self, text: &str) -> bool {
        text.is_empty()
            || self
                .send(&self.chunk(json!({"content": text}), None, None))
                .await
    }
}

/// How a stream ended.
enum End {
    Finished(Completion),
    Blocked(Decision),
    ClientGone,
    Failed(ApiError),
}

/// The output checks of one stream and how much of the text they have cleared.
struct Checks<'a> {
    state: &'a AppState,
    policy: &'a Policy,
    messages: &'a [ChatMessage],
    scanner: Option<StreamScanner<'static>>,
    findings: Vec<Finding>,
    verdict: Option<Verdict>,
    guard_on: bool,
    /// Tokens the guard had seen at its last score.
    scored_tokens: usize,
    /// Bytes of the response the guard has cleared.
    guard_cleared: usize,
}

impl Checks<'_> {
    /// Feeds a chunk to the shield; a blocking decision when its findings call for one.
    async fn scan(&mut self, chunk: &str) -> Result<Option<Decision>, ApiError> {
        let Some(mut scanner) = self.scanner.take() else {
            return Ok(None);
        };
        // Whole lines make the shield work; a chunk without a line break only appends.
        let (scanner, result) = if chunk.contains('\n') {
            let chunk = chunk.to_string();
            let t = Instant::now();
            let out = web::block(move || {
                let r = scanner.push(&chunk);
                (scanner, r)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
            self.observe("shield", t);
            out
        } else {
            let r = scanner.push(chunk);
            (scanner, r)
        };
        self.scanner = Some(scanner);
        match result {
            Ok(new) => self.findings.extend(new),
            Err(e) => {
                chat::on_check_error(
                    self.state,
                    self.policy,
                    "shield",
                    "the code scan",
                    e.to_string(),
                )?;
                self.scanner = None;
            }
        }
        Ok(self.blocking_decision())
    }

    /// Ends the shield's stream (the unclosed block, a whole-code response).
    async fn finish_scan(&mut self) -> Result<(), ApiError> {
        let Some(scanner) = self.scanner.take() else {
            return Ok(());
        };
        let t = Instant::now();
        let report = web::block(move || scanner.finish())
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.observe("shield", t);
        match report {
            Ok(r) => self.findings = r.findings,
            Err(e) => chat::on_check_error(
                self.state,
                self.policy,
                "shield",
                "the code scan",
                e.to_string(),
            )?,
        }
        Ok(())
    }

    /// Scores the response so far with the guard; it clears all but the held-back tail.
    async fn rescore(
        &mut self,
        text: &str,
        token_ends: &[usize],
        final_score: bool,
    ) -> Result<Option<Decision>, ApiError> {
        if !self.guard_on {
            return Ok(None);
        }
        let mut convo = self.messages.to_vec();
        convo.push(ChatMessage::new("assistant", text));
        let verdict = chat::guard_stage(self.state, self.policy, Stage::Output, convo).await?;
        self.scored_tokens = token_ends.len();
        if final_score {
            // Only the verdict on the whole reply decides, as for a reply sent whole.
            self.verdict = verdict;
            self.guard_cleared = text.len();
            return Ok(self.blocking_decision());
        }
        // A prefix's score only decides what may be released: while it is below the release
        // threshold (stricter than the block threshold), up to the scored point minus the
        // hold-back; a score climbing toward a block holds the text at the last calm point
        // until the whole reply is judged. (A prefix never blocks by itself: "to kill a
        // process, run kill" can read worse cut short than whole.)
        let calm = verdict
            .as_ref()
            .is_none_or(|v| v.p_unsafe < self.policy.release_threshold());
        if calm {
            let hold = self.policy.streaming.hold_back_tokens as usize;
            self.guard_cleared = match self.scored_tokens.saturating_sub(hold) {
                0 => 0,
                n => token_ends[n - 1],
            };
        }
        Ok(None)
    }

    fn due_for_rescore(&self, tokens: usize) -> bool {
        self.guard_on
            && tokens - self.scored_tokens
                >= self.policy.streaming.rescore_every_tokens.max(1) as usize
    }

    fn blocking_decision(&self) -> Option<Decision> {
        let d = decide(
            self.policy,
            Stage::Output,
            self.verdict.as_ref(),
            &self.findings,
        );
        d.blocked().then_some(d)
    }

    /// Bytes of the response every check has cleared.
    fn cleared(&self, text_len: usize) -> usize {
        let guard = if self.guard_on {
            self.guard_cleared
        } else {
            text_len
        };
        let shield = self
            .scanner
            .as_ref()
            .map_or(text_len, StreamScanner::unscanned_from);
        guard.min(shield)
    }

    fn observe(&self, stage: &str, t: Instant) {
        self.state
            .metrics
            .stage_duration
            .with_label_values(&[stage])
            .observe(t.elapsed().as_secs_f64());
    }
}

async fn run(
    state: web::Data<AppState>,
    p: Prepared,
    mut generation: Source,
    sse: Sse,
    t0: Instant,
    mut audit: serde_json::Map<String, Value>,
) {
    let policy: Arc<Policy> = p.policy.clone();
    let mut checks = Checks {
        state: &state,
        policy: &policy,
        messages: &p.req.messages,
        scanner: policy
            .shield
            .enabled
            .then(|| StreamScanner::new(state.shield, chat::shield_options(&policy, None))),
        findings: Vec::new(),
        verdict: None,
        guard_on: state.guard.is_some() && policy.output.enabled,
        scored_tokens: 0,
        guard_cleared: 0,
    };
    let mut text = String::new();
    let mut token_ends: Vec<usize> = Vec::new();
    let mut sent = 0;

    let first = sse.chunk(json!({"role": "assistant", "content": ""}), None, None);
    let end = if !sse.send(&first).await {
        End::ClientGone
    } else {
        let limit = std::time::Duration::from_millis(state.limits.request_timeout_ms);
        let deadline = tokio::time::Instant::from_std(t0 + limit);
        loop {
            let event = match tokio::time::timeout_at(deadline, generation.next()).await {
                Ok(event) => event,
                Err(_) => break End::Failed(ApiError::timeout(limit)),
            };
            let step = match event {
                Event::Text(t) => {
                    text.push_str(&t);
                    token_ends.push(text.len());
                    if sse.tx.is_closed() {
                        break End::ClientGone;
                    }
                    match checks.scan(&t).await {
                        Ok(None) if checks.due_for_rescore(token_ends.len()) => {
                            checks.rescore(&text, &token_ends, false).await
                        }
                        other => other,
                    }
                }
                Event::Done(c) => {
                    text.push_str(&c.tail_text);
                    let checked = async {
                        if let Some(d) = checks.scan(&c.tail_text).await? {
                            return Ok(Some(d));
                        }
                        checks.finish_scan().await?;
                        if let Some(d) = checks.blocking_decision() {
                            return Ok(Some(d));
                        }
                        checks.rescore(&text, &token_ends, true).await
                    };
                    match checked.await {
                        Ok(None) => break End::Finished(c),
                        other => other,
                    }
                }
                Event::Failed(e) => Err(e),
            };
            match step {
                Ok(Some(decision)) => break End::Blocked(decision),
                Err(e) => break End::Failed(e),
                Ok(None) => {}
            }
            let upto = checks.cleared(text.len());
            if upto > sent {
                if !sse.content(&text[sent..upto]).await {
                    break End::ClientGone;
                }
                sent = upto;
            }
        }
    };
    // Stop generating now (local: within one step; upstream: the relay drops the
    // connection), whatever happens to the rest of the response.
    drop(generation);

    let outcome = match &end {
        End::Finished(_) => "ok",
        End::Blocked(_) => "blocked",
        End::ClientGone => "client_closed",
        End::Failed(e) => chat::outcome_of(e),
    };
    let verdict = checks.verdict.clone();
    let findings = std::mem::take(&mut checks.findings);
    let output = chat::decide_output(
        &state,
        &policy,
        verdict.as_ref(),
        &findings,
        &text,
        &mut audit,
    );
    audit.insert("streamed_bytes".into(), json!(sent));
    audit.insert("outcome".into(), json!(outcome));
    audit.insert(
        "status".into(),
        json!(match &end {
            End::Failed(e) => e.status.as_u16(),
            _ => 200,
        }),
    );
    if let End::Finished(c) = &end {
        chat::observe_generation(&state, c);
        audit.insert("usage".into(), json!(c.usage));
    }
    chat::observe_request(&state, "chat_completions", t0, outcome);
    // The last frames leave only after the audit line is on disk.
    if let Err(e) = super::write_audit(&state, "chat_completions", t0, audit).await {
        tracing::error!("audit log write failed: {e}");
        let e = ApiError::internal("the audit log cannot be written; the response is incomplete");
        sse.send(&json!({"error": e.body()})).await;
        return;
    }
    match end {
        End::Finished(c) => {
            if let Some(note) = &output.note {
                if !sse.content(&text[sent..]).await || !sse.content(&format!("\n\n{note}")).await {
                    return;
                }
            } else if !sse.content(&text[sent..]).await {
                return;
            }
            let results = chat::filter_details(&output)["content_filter_result"].clone();
            let last = sse.chunk(
                json!({}),
                Some(chat::finish_reason_name(c.finish_reason)),
                Some(json!({"content_filter_results": results})),
            );
            if !sse.send(&last).await {
                return;
            }
            if sse.include_usage {
                let u = c.usage;
                let usage = json!({
                    "id": sse.id, "object": "chat.completion.chunk", "created": sse.created,
                    "model": sse.model, "choices": [],
                    "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                              "total_tokens": u.prompt_tokens + u.completion_tokens},
                });
                if !sse.send(&usage).await {
                    return;
                }
            }
            let _ = sse.tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        }
        End::Blocked(decision) => {
            let results = chat::filter_details(&decision)["content_filter_result"].clone();
            let last = sse.chunk(
                json!({"content": decision.message.clone().unwrap_or_default()}),
                Some("content_filter"),
                Some(json!({"content_filter_results": results})),
            );
            if sse.send(&last).await {
                let _ = sse.tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            }
        }
        End::Failed(e) => {
            sse.send(&json!({"error": e.body()})).await;
        }
        End::ClientGone => {}
    }
}
