//! What both response modes of a chat share: the request that passed the input stage,
//! the output checks it gets, and the metrics and audit fields of its reply.

use std::sync::Arc;

use safegate_engine::Completion;
use safegate_policies::{Decision, Policy};

use super::audit::{sha256_hex, AuditRecord, FindingRecord, StageRecord};
use super::backend::{Backend, ChatRequest, Source};
use super::respond::record_decision;
use super::{ApiError, AppState};
use crate::output::OutputChecks;

/// A chat request that passed validation and the input stage.
pub(super) struct Prepared {
    pub req: ChatRequest,
    pub backend: Box<dyn Backend>,
    pub policy: Arc<Policy>,
    pub input: Decision,
    pub stream: bool,
    pub include_usage: bool,
    /// A generation started while the input guard was judging (`overlap_generation`).
    pub early: Option<Source>,
}

impl Prepared {
    /// The generation: the one started early, or a new one (queue full: 429).
    pub fn start(&mut self) -> Result<Source, ApiError> {
        match self.early.take() {
            Some(source) => Ok(source),
            None => self.backend.start(&self.req),
        }
    }

    /// The output checks of this request's reply.
    pub fn output_checks(&self, state: &AppState) -> OutputChecks {
        OutputChecks::new(
            self.policy.clone(),
            state.guard.is_some() && self.policy.output.enabled,
            self.policy.shield.enabled,
        )
    }
}

/// Generation metrics shared by both response modes.
pub(super) fn observe_generation(state: &AppState, completion: &Completion) {
    let m = &state.metrics;
    super::trace::generation_ended(None);
    super::trace::attr(
        "gen_ai.response.finish_reasons",
        vec![finish_reason_name(completion.finish_reason).to_string()],
    );
    let stage = |name: &str, d: std::time::Duration| {
        m.stage_duration
            .with_label_values(&[name])
            .observe(d.as_secs_f64())
    };
    stage("queue", completion.queue_time);
    stage("time_to_first_token", completion.time_to_first_token);
    stage("generation", completion.decode_time);
    m.tokens
        .with_label_values(&["in"])
        .inc_by(completion.usage.prompt_tokens as u64);
    m.tokens
        .with_label_values(&["out"])
        .inc_by(completion.usage.completion_tokens as u64);
}

/// The output decision on the reply as the checks saw it, recorded in the metrics and
/// the audit record.
pub(super) fn record_output(
    state: &AppState,
    checks: &OutputChecks,
    audit: &mut AuditRecord,
) -> Decision {
    let output = checks.decision();
    record_decision(state, checks.policy(), &output, checks.findings());
    audit.output = Some(StageRecord {
        verdict: checks.verdict().cloned(),
        decision: output.clone(),
    });
    audit.findings = Some(FindingRecord::list(checks.findings()));
    audit.response_sha256 = Some(sha256_hex(checks.text()));
    // The whole reply as generated (debugging traces only; a blocked part included).
    super::trace::text_attr("safegate.debug.completion", || checks.text().to_string());
    output
}

pub(super) fn finish_reason_name(r: safegate_engine::FinishReason) -> &'static str {
    match r {
        safegate_engine::FinishReason::Stop => "stop",
        safegate_engine::FinishReason::Length => "length",
    }
}

/// The finish reason of a reply that made calls: "tool_calls", unless it was cut short,
/// when its arguments may be unfinished and "length" says so (as OpenAI answers).
pub(super) fn finish_reason_with_calls(r: safegate_engine::FinishReason) -> &'static str {
    match r {
        safegate_engine::FinishReason::Stop => "tool_calls",
        safegate_engine::FinishReason::Length => "length",
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A unique id with this prefix (`chatcmpl`, `modr`).
pub(super) fn response_id(prefix: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{:x}{seq:04x}", nanos & 0xffff_ffff_ffff)
}
