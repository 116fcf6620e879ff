//! OpenTelemetry traces of requests (off unless `[tracing]` or `OTEL_EXPORTER_OTLP_*`
//! configure an OTLP receiver). One span per request, named after the OpenTelemetry GenAI
//! conventions (`chat {model}` for chat completions), with a child span per stage that
//! ran: `input_guard`, the generation (`generate` locally; `chat {upstream model}`, a
//! client span, on an upstream, whose id goes upstream in `traceparent`), `shield`,
//! `output_guard`, `audit`. A stage that runs many times in one request (the shield on a
//! stream, the guard's re-scoring) is one span from its first start to its last end, with
//! `safegate.calls` and `safegate.busy_ms`.
//!
//! The request's trace lives in a task-local (set by the middleware in `begin`, carried
//! into a stream's task), so the stages record into it where they already record their
//! metrics. Attributes never carry prompt or reply text unless `include_prompts` is set.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use safegate_otel::{AttrValue, Exporter, SpanData, SpanKind};

use super::audit::AuditRecord;
use crate::config::TracingConfig;

/// The exporter and the sampling rule, when tracing is on.
pub struct Tracing {
    exporter: Exporter,
    sample_ratio: f64,
    pub include_prompts: bool,
}

impl Tracing {
    pub fn start(config: &TracingConfig) -> anyhow::Result<Self> {
        let exporter = Exporter::start(safegate_otel::ExporterConfig {
            url: config.traces_url(),
            service_name: config.service_name.clone(),
            protocol: config
                .protocol
                .parse()
                .map_err(|e| anyhow::anyhow!("[tracing] protocol: {e}"))?,
            ca_file: config.ca_file.clone(),
            headers: config.headers.clone().into_iter().collect(),
            queue: 8192,
            batch: 512,
            interval: Duration::from_millis(config.export_interval_ms),
            timeout: Duration::from_secs(10),
        })
        .map_err(|e| anyhow::anyhow!("[tracing]: {e}"))?;
        tracing::info!(url = %config.traces_url(), "OpenTelemetry traces on");
        Ok(Self {
            exporter,
            sample_ratio: config.sample_ratio,
            include_prompts: config.include_prompts,
        })
    }
}

impl Tracing {
    /// At shutdown: the spans still queued go out (a few seconds at most).
    pub fn flush(&self) {
        self.exporter.flush(Duration::from_secs(5));
    }
}

struct Stage {
    name: String,
    kind: SpanKind,
    span_id: [u8; 8],
    start: Instant,
    end: Option<Instant>,
    calls: u32,
    busy: Duration,
    attributes: Vec<(String, AttrValue)>,
    error: Option<String>,
}

/// One request's trace, being recorded.
pub struct RequestTrace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: SystemTime,
    t0: Instant,
    name: String,
    attributes: Vec<(String, AttrValue)>,
    stages: Vec<Stage>,
    include_prompts: bool,
}

pub type Handle = Rc<RefCell<RequestTrace>>;

tokio::task_local! {
    static CURRENT: Handle;
}

/// A new trace for a request (the caller's `traceparent` continued when valid); `None`
/// when tracing is off or the request is not sampled.
pub fn begin(
    tracing: Option<&Tracing>,
    method: &str,
    path: &str,
    traceparent: Option<&str>,
) -> Option<Handle> {
    let tracing = tracing?;
    let caller = traceparent.and_then(safegate_otel::parse_traceparent);
    let trace_id = caller.map_or_else(safegate_otel::new_trace_id, |c| c.trace_id);
    let sampled = match caller {
        // The caller decided (parent-based sampling).
        Some(c) => c.sampled,
        // Ours: by the trace id, so every service sampling by ratio agrees.
        None => {
            let x = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default());
            (x as f64) < tracing.sample_ratio * (u64::MAX as f64)
        }
    };
    if !sampled {
        return None;
    }
    Some(Rc::new(RefCell::new(RequestTrace {
        trace_id,
        span_id: safegate_otel::new_span_id(),
        parent: caller.map(|c| c.span_id),
        start: SystemTime::now(),
        t0: Instant::now(),
        name: format!("{method} {path}"),
        attributes: vec![
            ("http.request.method".into(), method.into()),
            ("http.route".into(), path.into()),
        ],
        stages: Vec::new(),
        include_prompts: tracing.include_prompts,
    })))
}

/// Runs `f` with `trace` as the task's current trace.
pub async fn scoped<F: std::future::Future>(trace: Option<Handle>, f: F) -> F::Output {
    match trace {
        Some(t) => CURRENT.scope(t, f).await,
        None => f.await,
    }
}

/// The task's current trace.
pub fn current() -> Option<Handle> {
    CURRENT.try_with(Rc::clone).ok()
}

fn with(f: impl FnOnce(&mut RequestTrace)) {
    let _ = CURRENT.try_with(|t| f(&mut t.borrow_mut()));
}

/// Names the request's span (`chat {model}`).
pub fn name(name: String) {
    with(|t| t.name = name);
}

pub fn attr(key: &str, value: impl Into<AttrValue>) {
    let value = value.into();
    with(|t| set(&mut t.attributes, key, value));
}

/// Prompt or reply text, only where the configuration asks for it (debugging).
pub fn text_attr(key: &str, text: impl FnOnce() -> String) {
    with(|t| {
        if t.include_prompts {
            set(&mut t.attributes, key, AttrValue::Str(text()));
        }
    });
}

fn set(attrs: &mut Vec<(String, AttrValue)>, key: &str, value: AttrValue) {
    match attrs.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => attrs.push((key.to_string(), value)),
    }
}

/// A stage that ran from `started` until now (merged with earlier runs of the same stage).
pub fn stage(name: &str, started: Instant) {
    let now = Instant::now();
    with(|t| {
        match t
            .stages
            .iter_mut()
            .find(|s| s.name == name && s.end.is_some())
        {
            Some(s) => {
                s.start = s.start.min(started);
                s.end = Some(now.max(s.end.unwrap_or(now)));
                s.calls += 1;
                s.busy += now.saturating_duration_since(started);
            }
            None => t.stages.push(Stage {
                name: name.to_string(),
                kind: SpanKind::Internal,
                span_id: safegate_otel::new_span_id(),
                start: started,
                end: Some(now),
                calls: 1,
                busy: now.saturating_duration_since(started),
                attributes: Vec::new(),
                error: None,
            }),
        }
    });
}

/// The generation starts: a span open until `generation_ended`. For an upstream, the
/// `traceparent` naming that span, to send along.
pub fn generation_started(upstream: Option<(&str, &str)>) -> Option<String> {
    let mut header = None;
    with(|t| {
        let span_id = safegate_otel::new_span_id();
        let (name, kind, attributes) = match upstream {
            Some((model, url)) => {
                header = Some(safegate_otel::traceparent(&t.trace_id, &span_id, true));
                let mut attrs = vec![
                    ("gen_ai.operation.name".to_string(), AttrValue::from("chat")),
                    ("gen_ai.request.model".to_string(), model.into()),
                ];
                if let Some(host) = url.split("://").nth(1).and_then(|r| r.split('/').next()) {
                    attrs.push(("server.address".into(), host.into()));
                }
                (format!("chat {model}"), SpanKind::Client, attrs)
            }
            None => ("generate".to_string(), SpanKind::Internal, Vec::new()),
        };
        t.stages.push(Stage {
            name,
            kind,
            span_id,
            start: Instant::now(),
            end: None,
            calls: 1,
            busy: Duration::ZERO,
            attributes,
            error: None,
        });
    });
    header
}

/// The generation ended (an error: how it failed).
pub fn generation_ended(error: Option<&str>) {
    let now = Instant::now();
    with(|t| {
        if let Some(s) = t.stages.iter_mut().find(|s| s.end.is_none()) {
            s.end = Some(now);
            s.busy = now.saturating_duration_since(s.start);
            s.error = error.map(str::to_string);
        }
    });
}

/// Ends the request's trace with what its audit record says, and exports it.
pub fn finish(tracing: Option<&Tracing>, audit: &AuditRecord) {
    let (Some(tracing), Some(handle)) = (tracing, current()) else {
        return;
    };
    let mut t = handle.borrow_mut();
    annotate(&mut t, audit);
    for s in t.stages.iter_mut().filter(|s| s.end.is_none()) {
        // A generation still open failed with the request, or was cut off by it.
        s.error = audit.error.clone();
    }
    let error = audit
        .status
        .filter(|s| *s >= 500)
        .map(|_| audit.error.clone().unwrap_or_else(|| "error".into()));
    let now = Instant::now();
    let at = |i: Instant| t.start + i.saturating_duration_since(t.t0);
    let mut spans = vec![SpanData {
        trace_id: t.trace_id,
        span_id: t.span_id,
        parent_span_id: t.parent,
        name: t.name.clone(),
        kind: SpanKind::Server,
        start: t.start,
        end: at(now),
        attributes: t.attributes.clone(),
        error,
    }];
    for s in &t.stages {
        let mut attributes = s.attributes.clone();
        if s.calls > 1 {
            attributes.push(("safegate.calls".into(), AttrValue::Int(s.calls.into())));
            attributes.push((
                "safegate.busy_ms".into(),
                AttrValue::Float(s.busy.as_secs_f64() * 1e3),
            ));
        }
        spans.push(SpanData {
            trace_id: t.trace_id,
            span_id: s.span_id,
            parent_span_id: Some(t.span_id),
            name: s.name.clone(),
            kind: s.kind,
            start: at(s.start),
            // A generation still open (the client left, a check blocked) ends now.
            end: at(s.end.unwrap_or(now)),
            attributes,
            error: s.error.clone(),
        });
    }
    tracing.exporter.export(spans);
}

/// safegate's decision and the GenAI usage, from the audit record (never text).
fn annotate(t: &mut RequestTrace, audit: &AuditRecord) {
    let attrs = &mut t.attributes;
    if let Some(status) = audit.status {
        set(
            attrs,
            "http.response.status_code",
            AttrValue::Int(status.into()),
        );
    }
    if let Some(outcome) = audit.outcome {
        set(attrs, "safegate.outcome", outcome.into());
    }
    if let Some(e) = &audit.error {
        set(attrs, "error.type", e.as_str().into());
    }
    if let Some(p) = &audit.policy {
        set(attrs, "safegate.policy", p.as_str().into());
    }
    if let Some(u) = &audit.usage {
        set(attrs, "gen_ai.usage.input_tokens", u.prompt_tokens.into());
        set(
            attrs,
            "gen_ai.usage.output_tokens",
            u.completion_tokens.into(),
        );
    }
    let mut categories = Vec::new();
    let mut rules = Vec::new();
    for (stage, record) in [("input", &audit.input), ("output", &audit.output)] {
        let Some(record) = record else { continue };
        set(
            attrs,
            &format!("safegate.{stage}.action"),
            record.decision.action.as_str().into(),
        );
        if let Some(v) = &record.verdict {
            set(
                attrs,
                &format!("safegate.{stage}.p_unsafe"),
                v.p_unsafe.into(),
            );
        }
        for reason in &record.decision.reasons {
            use safegate_policies::Reason;
            match reason {
                Reason::Category { code, .. } => categories.push(code.clone()),
                Reason::Unsafe {
                    top_category: Some(code),
                    ..
                } => categories.push(code.clone()),
                Reason::Finding { rule, .. } => rules.push(rule.clone()),
                _ => {}
            }
        }
    }
    for f in audit.findings.iter().flatten() {
        rules.push(f.rule.clone());
    }
    categories.sort();
    categories.dedup();
    rules.sort();
    rules.dedup();
    if !categories.is_empty() {
        set(attrs, "safegate.categories", categories.into());
    }
    if !rules.is_empty() {
        set(attrs, "safegate.rule_ids", rules.into());
    }
}
