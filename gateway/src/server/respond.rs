//! What every endpoint does around its own work: authenticate, parse the JSON body into an
//! OpenAI-style error when it is bad, count the request, write its audit line, answer.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse};
use safegate_policies::{Decision, Policy, Reason};
use safegate_shield::{Finding, Language};
use serde_json::{json, Value};

use super::audit::AuditRecord;
use super::{ApiError, AppState};
use crate::output::Outcome;

/// A request body, read only after the headers passed `KeyStore::precheck` (an
/// unauthenticated sender is refused before its body arrives), at most `max_body_bytes`
/// (413) and within `limits.body_timeout_ms` (408). It never fails as an extractor: the
/// handler takes the error with `?`, so it is answered as OpenAI-style JSON, counted and
/// audited like any other.
pub(super) struct Body(pub Result<actix_web::web::Bytes, ApiError>);

impl actix_web::FromRequest for Body {
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(state) = req.app_data::<actix_web::web::Data<AppState>>().cloned() else {
            return Box::pin(async { Ok(Body(Err(ApiError::internal("no server state")))) });
        };
        if let Err(e) = state.keys.precheck(req) {
            return Box::pin(async { Ok(Body(Err(e))) });
        }
        let max = state.max_body_bytes;
        let too_large = move |size: usize| ApiError {
            status: actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            code: Some("request_too_large".into()),
            ..ApiError::invalid(format!(
                "the request body has {size} bytes or more; this server accepts at most {max}"
            ))
        };
        let declared = req
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = declared.filter(|&n| n > max) {
            let e = too_large(n);
            return Box::pin(async { Ok(Body(Err(e))) });
        }
        let mut payload = payload.take();
        let limit = std::time::Duration::from_millis(state.limits.body_timeout_ms);
        Box::pin(async move {
            let read = async {
                let mut body = actix_web::web::BytesMut::new();
                while let Some(chunk) = std::future::poll_fn(|cx| {
                    futures_core::Stream::poll_next(std::pin::Pin::new(&mut payload), cx)
                })
                .await
                {
                    let chunk = chunk.map_err(|e| {
                        ApiError::invalid(format!("the body could not be read: {e}"))
                    })?;
                    if body.len() + chunk.len() > max {
                        return Err(too_large(body.len() + chunk.len()));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body.freeze())
            };
            Ok(Body(
                match actix_web::rt::time::timeout(limit, read).await {
                    Ok(read) => read,
                    Err(_) => Err(ApiError {
                        status: actix_web::http::StatusCode::REQUEST_TIMEOUT,
                        code: Some("request_timeout".into()),
                        ..ApiError::invalid(format!(
                            "the request body did not arrive within {} ms",
                            limit.as_millis()
                        ))
                    }),
                },
            ))
        })
    }
}

/// A request's answer and how it ended.
pub(super) struct Reply {
    pub body: Value,
    pub outcome: Outcome,
    /// Bytes of a model reply released to the client (chat only).
    pub released_bytes: Option<usize>,
}

impl From<Value> for Reply {
    fn from(body: Value) -> Self {
        Reply {
            body,
            outcome: Outcome::Ok,
            released_bytes: None,
        }
    }
}

fn api_error(e: safegate_api::RequestError) -> ApiError {
    match e.param {
        Some(p) => ApiError::invalid_param(&p, e.message),
        None => ApiError::invalid(e.message),
    }
}

/// The request body as JSON, or a 400 naming what is wrong.
pub(super) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    safegate_api::parse_body(body).map_err(api_error)
}

/// A typed request body, or a 400 naming the field.
pub(super) fn parse_request<T>(
    body: &[u8],
    parse: impl FnOnce(&Value) -> Result<T, safegate_api::RequestError>,
) -> Result<T, ApiError> {
    parse(&parse_body(body)?).map_err(api_error)
}

/// Authenticates the caller for `endpoint`; the key id (never the key) goes to the audit
/// record, refusals included.
pub(super) async fn authorize(
    state: &AppState,
    req: &HttpRequest,
    endpoint: &str,
    audit: &mut AuditRecord,
) -> Result<super::auth::Caller, ApiError> {
    let mut key_id = None;
    let result = state.keys.authenticate(req, endpoint, &mut key_id);
    audit.key_id = key_id;
    let caller = result?;
    if let Some((id, limits)) = &caller.key {
        state.limiter.admit(id, limits).await?;
    }
    Ok(caller)
}

/// Counts a finished request: its latency, its outcome and the reply bytes it released.
pub(super) fn observe_request(
    state: &AppState,
    endpoint: &str,
    t0: Instant,
    outcome: Outcome,
    released_bytes: Option<usize>,
) {
    let m = &state.metrics;
    m.duration
        .with_label_values(&[endpoint])
        .observe(t0.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[endpoint, outcome.as_str()])
        .inc();
    if let Some(bytes) = released_bytes {
        m.released_bytes
            .with_label_values(&[endpoint, outcome.as_str()])
            .inc_by(bytes as u64);
    }
}

/// Ends a JSON request: metrics, the audit line (a response never leaves without it), the
/// body.
pub(super) async fn respond(
    state: &AppState,
    endpoint: &'static str,
    t0: Instant,
    mut audit: AuditRecord,
    result: Result<Reply, ApiError>,
) -> HttpResponse {
    let (outcome, released) = match &result {
        Ok(r) => (r.outcome, r.released_bytes),
        Err(e) => (
            Outcome::of_error(e.status.as_u16(), e.code.as_deref()),
            None,
        ),
    };
    audit.outcome = Some(outcome.as_str());
    audit.released_bytes = released;
    let mut resp = match result {
        Ok(r) => {
            audit.status = Some(200);
            HttpResponse::Ok().json(r.body)
        }
        Err(e) => {
            audit.status = Some(e.status.as_u16());
            audit.error = Some(e.code.clone().unwrap_or_else(|| e.kind.to_string()));
            e.into_response()
        }
    };
    observe_request(state, endpoint, t0, outcome, released);
    if let Err(e) = write_audit(state, endpoint, t0, audit).await {
        tracing::error!("audit log write failed: {e}");
        resp = ApiError::internal("the audit log cannot be written; the request was not completed")
            .into_response();
    }
    resp
}

static REQUEST_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes one audit record (when the audit log is on), stamped with the time, a request
/// id, the endpoint and the latency.
pub(super) async fn write_audit(
    state: &AppState,
    endpoint: &'static str,
    t0: Instant,
    mut record: AuditRecord,
) -> std::io::Result<()> {
    // The tokens a finished request used go to its key's budgets.
    if let (Some(id), Some(usage)) = (&record.key_id, &record.usage) {
        if let Some(limits) = state.keys.limits(id) {
            let tokens = (usage.prompt_tokens + usage.completion_tokens) as u64;
            state.limiter.spend(id, limits, tokens);
        }
    }
    let Some(log) = &state.audit else {
        super::trace::finish(state.tracing.as_ref(), &record);
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seq = REQUEST_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    record.time_ms = now.as_millis() as u64;
    record.request_id = format!("req-{:x}-{seq}", now.as_secs());
    record.endpoint = endpoint;
    record.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let written = log.write(&record).await.inspect_err(|_| {
        state.metrics.audit_errors.inc();
    });
    super::trace::stage("audit", t);
    super::trace::finish(state.tracing.as_ref(), &record);
    written
}

/// Counts a policy decision: by policy, stage and action; the guard categories and shield
/// findings behind it.
pub(super) fn record_decision(
    state: &AppState,
    policy: &Policy,
    d: &Decision,
    findings: &[Finding],
) {
    let stage = d.stage.as_str();
    let m = &state.metrics;
    m.decisions
        .with_label_values(&[&policy.name, stage, d.action.as_str()])
        .inc();
    for r in &d.reasons {
        let named = match r {
            Reason::Category { code, action, .. } => Some((code, action)),
            Reason::Unsafe {
                top_category: Some(code),
                action,
                ..
            } => Some((code, action)),
            _ => None,
        };
        if let Some((code, action)) = named {
            m.guard_verdicts
                .with_label_values(&[stage, policy.taxonomy.name(), code, action.as_str()])
                .inc();
        }
        if let Reason::PromptAttack { action, .. } = r {
            m.prompt_attacks.with_label_values(&[action.as_str()]).inc();
        }
    }
    for f in findings {
        let action = d.reasons.iter().find_map(|r| match r {
            Reason::Finding { rule, action, .. } if rule == &f.rule => Some(*action),
            _ => None,
        });
        let lang = f.language.map_or("unknown", Language::name);
        m.shield_findings
            .with_label_values(&[
                lang,
                &f.cwe,
                f.severity.as_str(),
                action.map_or("none", |a| a.as_str()),
            ])
            .inc();
    }
}

/// A decision as OpenAI's `content_filter_results` carries it.
pub(super) fn filter_results(d: &Decision) -> Value {
    json!({"action": d.action.as_str(), "reasons": d.reasons})
}
