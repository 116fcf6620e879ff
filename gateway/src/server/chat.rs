//! `/v1/chat/completions` (whole responses; streams are in `stream.rs`), `/v1/shield/scan`
//! and `/v1/moderations`, with the policy
//! enforced on the way in and on the way out.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use safegate_engine::{ChatMessage, GenerateRequest, GenerationEvent, SamplingParams};
use safegate_guard::{build_prompt, AgentType, CategorySelection};
use safegate_policies::{decide, Action, Decision, Policy, Reason, Stage};
use safegate_shield::{Finding, Language, ScanOptions};
use serde_json::{json, Value};

use super::{ApiError, AppState};

fn api_error(e: safegate_api::RequestError) -> ApiError {
    match e.param {
        Some(p) => ApiError::invalid_param(&p, e.message),
        None => ApiError::invalid(e.message),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    safegate_api::parse_body(body).map_err(api_error)
}

pub(super) fn shield_options(policy: &Policy, language: Option<Language>) -> ScanOptions {
    ScanOptions {
        language,
        languages: policy.shield.languages.clone(),
        disabled_rules: policy.shield.disabled_rules.clone(),
        ..Default::default()
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Log => "log",
        Action::Flag => "flag",
        Action::Block => "block",
    }
}

fn record(state: &AppState, policy: &Policy, d: &Decision, findings: &[Finding]) {
    let stage = match d.stage {
        Stage::Input => "input",
        Stage::Output => "output",
    };
    state
        .metrics
        .decisions
        .with_label_values(&[&policy.name, stage, action_name(d.action)])
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
            state
                .metrics
                .guard_verdicts
                .with_label_values(&[stage, policy.taxonomy.name(), code, action_name(*action)])
                .inc();
        }
    }
    for f in findings {
        let action = d.reasons.iter().find_map(|r| match r {
            Reason::Finding { rule, action, .. } if rule == &f.rule => Some(*action),
            _ => None,
        });
        let lang = f.language.map_or("unknown", Language::name);
        state
            .metrics
            .shield_findings
            .with_label_values(&[
                lang,
                &f.cwe,
                f.severity.as_str(),
                action.map_or("none", action_name),
            ])
            .inc();
    }
}

pub async fn shield_scan(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = serde_json::Map::new();
    let result = async {
        let caller = authorize(&state, &req, "shield", &mut audit)?;
        let v = parse_body(&body)?;
        let text = v
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid_param("text", "`text` (a string) is required"))?
            .to_string();
        let language = match v.get("language").and_then(Value::as_str) {
            Some(l) => Some(l.parse::<Language>().map_err(|e| ApiError::invalid_param("language", e))?),
            None => None,
        };
        audit.insert("text_sha256".into(), json!(super::audit::sha256_hex(&text)));
        let policy = state.policies.current().for_group(caller.group.as_deref());
        let options = shield_options(&policy, language);
        let shield = state.shield;
        let report = web::block(move || shield.scan(&text, &options))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let decision = decide(&policy, Stage::Output, None, &report.findings);
        record(&state, &policy, &decision, &report.findings);
        audit.insert("policy".into(), json!(policy.name));
        audit.insert("decision".into(), json!(decision));
        Ok::<_, ApiError>(json!({"findings": report.findings, "blocks": report.blocks, "decision": decision, "policy": policy.name}))
    }
    .await;
    respond(&state, "shield_scan", t0, audit, result).await
}

/// The bounded `outcome` label of a failed request.
pub(super) fn outcome_of(e: &ApiError) -> &'static str {
    match (e.code.as_deref(), e.status.as_u16()) {
        (Some("content_filter"), _) => "blocked",
        (_, 429) => "rejected",
        (_, s) if s < 500 => "client_error",
        _ => "server_error",
    }
}

pub(super) fn observe_request(state: &AppState, endpoint: &str, t0: Instant, outcome: &str) {
    state
        .metrics
        .duration
        .with_label_values(&[endpoint])
        .observe(t0.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, outcome])
        .inc();
}

/// The validated request.
pub(super) struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

/// The request's `messages` (OpenAI schema), errors naming the field.
fn messages_param(v: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    safegate_api::messages_param(v)
        .map(crate::messages::to_chat_messages)
        .map_err(api_error)
}

/// SHA-256 of a conversation (role and content of each message), for the audit log.
fn conversation_sha256(messages: &[ChatMessage]) -> String {
    let text: String = messages
        .iter()
        .map(|m| format!("{}\n{}\n", m.role, m.content))
        .collect();
    super::audit::sha256_hex(&text)
}

fn parse_chat(v: &Value, limits: &crate::config::Limits) -> Result<ChatRequest, ApiError> {
    let params = safegate_api::parse_chat(
        v,
        &safegate_api::ChatLimits {
            max_messages: limits.max_messages,
            max_tokens: limits.max_tokens,
        },
    )
    .map_err(api_error)?;
    let sampling = SamplingParams {
        temperature: params.temperature as f32,
        top_p: params.top_p as f32,
        seed: params.seed,
        ..Default::default()
    };
    sampling
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(ChatRequest {
        messages: crate::messages::to_chat_messages(params.messages),
        max_tokens: params.max_tokens,
        sampling,
        stop: params.stop,
    })
}

/// Runs the guard on a conversation, if one is configured and the stage is on.
pub(super) async fn guard_stage(
    state: &AppState,
    policy: &Policy,
    stage: Stage,
    messages: Vec<ChatMessage>,
) -> Result<Option<safegate_policies::Verdict>, ApiError> {
    let Some(guard) = state.guard.clone() else {
        return Ok(None);
    };
    if !policy.stage(stage).enabled {
        return Ok(None);
    }
    let agent = if stage == Stage::Input {
        AgentType::User
    } else {
        AgentType::Agent
    };
    let selection = CategorySelection {
        codes: None,
        custom: &policy.custom_categories,
        with_descriptions: false,
    };
    let prompt = build_prompt(policy.taxonomy, agent, &messages, &selection)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let t0 = Instant::now();
    // The stage's time budget: past it the guard counts as failed (on_error decides).
    let budget = std::time::Duration::from_millis(policy.stage(stage).timeout_ms);
    let deadline = t0 + budget;
    let result = match actix_web::rt::time::timeout(
        budget,
        web::block(move || guard.classify_until(&prompt, deadline)),
    )
    .await
    {
        Ok(joined) => match joined.map_err(|e| ApiError::internal(e.to_string()))? {
            // A full guard queue is overload, not a failing guard: the client retries
            // (429 + Retry-After) instead of the policy's on_error deciding.
            Err(safegate_guard::GuardError::Engine(safegate_engine::EngineError::QueueFull)) => {
                return Err(ApiError::overloaded())
            }
            other => other.map_err(|e| e.to_string()),
        },
        Err(_) => Err(format!("no verdict within {} ms", budget.as_millis())),
    };
    let name = if stage == Stage::Input {
        "input_guard"
    } else {
        "output_guard"
    };
    state
        .metrics
        .stage_duration
        .with_label_values(&[name])
        .observe(t0.elapsed().as_secs_f64());
    match result {
        Ok(c) => Ok(Some(c.verdict)),
        Err(e) => on_check_error(state, policy, "guard", "the safety check", e).map(|()| None),
    }
}

pub(super) fn filter_details(d: &Decision) -> Value {
    json!({"content_filter_result": {"action": action_name(d.action), "reasons": d.reasons}})
}

pub async fn completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = serde_json::Map::new();
    let result = match prepare(&state, &req, &body, &mut audit).await {
        Ok(p) if p.stream => {
            // The stream's task writes the audit line and the metrics when it ends.
            match super::stream::start(state.clone(), p, t0, audit.clone()) {
                Ok(resp) => return resp,
                Err(e) => Err(e),
            }
        }
        Ok(p) => {
            let limit = std::time::Duration::from_millis(state.limits.request_timeout_ms);
            match actix_web::rt::time::timeout(limit, complete_whole(&state, p, &mut audit)).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::timeout(limit)),
            }
        }
        Err(e) => Err(e),
    };
    respond(&state, "chat_completions", t0, audit, result).await
}

/// Authenticates the caller for `endpoint`; the key id (never the key) goes to the audit
/// record, refusals included.
pub(super) fn authorize(
    state: &AppState,
    req: &HttpRequest,
    endpoint: &str,
    audit: &mut serde_json::Map<String, Value>,
) -> Result<super::auth::Caller, ApiError> {
    let mut key_id = None;
    let result = state.keys.authenticate(req, endpoint, &mut key_id);
    audit.insert("key_id".into(), json!(key_id));
    result
}

/// Ends a JSON request: metrics, the audit line (a response never leaves without it), the
/// body.
async fn respond(
    state: &AppState,
    endpoint: &str,
    t0: Instant,
    mut audit: serde_json::Map<String, Value>,
    result: Result<Value, ApiError>,
) -> HttpResponse {
    let (status, outcome) = match &result {
        Ok(_) => (200, "ok".to_string()),
        Err(e) => (
            e.status.as_u16(),
            e.code.clone().unwrap_or_else(|| e.kind.to_string()),
        ),
    };
    audit.insert("status".into(), json!(status));
    audit.insert("outcome".into(), json!(outcome));
    let (label, mut resp) = match result {
        Ok(v) => ("ok", HttpResponse::Ok().json(v)),
        Err(e) => (outcome_of(&e), e.into_response()),
    };
    observe_request(state, endpoint, t0, label);
    if let Err(e) = super::write_audit(state, endpoint, t0, audit).await {
        tracing::error!("audit log write failed: {e}");
        resp = ApiError::internal("the audit log cannot be written; the request was not completed")
            .into_response();
    }
    resp
}

/// Where a reply is generated.
pub(super) enum Backend {
    Local {
        engine: safegate_engine::Engine,
        prompt_ids: Vec<u32>,
    },
    Upstream(crate::config::UpstreamModel),
}

/// A chat request that passed validation and the input stage.
pub(super) struct Prepared {
    pub req: ChatRequest,
    pub backend: Backend,
    pub policy: std::sync::Arc<Policy>,
    pub input: Decision,
    pub stream: bool,
    pub include_usage: bool,
    /// A generation started while the input guard was judging (`overlap_generation`).
    pub early: Option<Source>,
}

/// A reply being generated, locally or upstream, as one kind of event stream.
pub(super) enum Source {
    Local(safegate_engine::TokenStream),
    Upstream(tokio::sync::mpsc::Receiver<super::upstream::UpstreamEvent>),
}

pub(super) enum Event {
    Text(String),
    Done(safegate_engine::Completion),
    Failed(ApiError),
}

impl Source {
    pub async fn next(&mut self) -> Event {
        use super::upstream::UpstreamEvent;
        match self {
            Source::Local(stream) => match stream.next().await {
                Some(GenerationEvent::Token { text, .. }) => Event::Text(text),
                Some(GenerationEvent::Done(c)) => Event::Done(c),
                Some(GenerationEvent::Error(e)) => Event::Failed(e.into()),
                None => Event::Failed(ApiError::internal("generation stopped unexpectedly")),
            },
            Source::Upstream(rx) => match rx.recv().await {
                Some(UpstreamEvent::Delta(text)) => Event::Text(text),
                Some(UpstreamEvent::Done(c)) => Event::Done(c),
                Some(UpstreamEvent::Failed(e)) => Event::Failed(e),
                None => Event::Failed(ApiError::internal("the upstream relay stopped")),
            },
        }
    }
}

impl Prepared {
    pub fn model_name(&self) -> String {
        match &self.backend {
            Backend::Local { engine, .. } => engine.info().name.clone(),
            Backend::Upstream(m) => m.name.clone(),
        }
    }

    /// The generation: the one started early, or a new one (queue full: 429).
    pub fn start(&mut self) -> Result<Source, ApiError> {
        match self.early.take() {
            Some(source) => Ok(source),
            None => start_generation(&self.backend, &self.req),
        }
    }
}

fn start_generation(backend: &Backend, req: &ChatRequest) -> Result<Source, ApiError> {
    {
        match backend {
            Backend::Local { engine, prompt_ids } => {
                Ok(Source::Local(engine.generate(GenerateRequest {
                    prompt_ids: prompt_ids.clone(),
                    max_tokens: req.max_tokens,
                    sampling: req.sampling.clone(),
                    stop: req.stop.clone(),
                    ignore_eos: false,
                })?))
            }
            Backend::Upstream(model) => {
                let messages: Vec<Value> = req
                    .messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect();
                let mut params = serde_json::Map::new();
                params.insert("max_tokens".into(), json!(req.max_tokens));
                params.insert("temperature".into(), json!(req.sampling.temperature));
                params.insert("top_p".into(), json!(req.sampling.top_p));
                if let Some(seed) = req.sampling.seed {
                    params.insert("seed".into(), json!(seed));
                }
                if !req.stop.is_empty() {
                    params.insert("stop".into(), json!(req.stop));
                }
                Ok(Source::Upstream(super::upstream::start(
                    model,
                    Value::Array(messages),
                    params,
                )))
            }
        }
    }
}

async fn prepare(
    state: &AppState,
    http: &HttpRequest,
    body: &[u8],
    audit: &mut serde_json::Map<String, Value>,
) -> Result<Prepared, ApiError> {
    let caller = authorize(state, http, "chat", audit)?;
    let v = parse_body(body)?;
    let req = parse_chat(&v, &state.limits)?;
    let stream = match v.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "stream",
                "`stream` must be a boolean",
            ))
        }
    };
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let requested = v.get("model").and_then(Value::as_str);
    let upstream = requested.and_then(|name| state.upstreams.iter().find(|m| m.name == name));
    let engine = match (upstream, &state.engine) {
        (Some(_), _) => None,
        (None, Some(engine)) => Some(engine.clone()),
        (None, None) if !state.upstreams.is_empty() => {
            return Err(ApiError {
                code: Some("model_not_found".into()),
                ..ApiError::not_found(format!(
                    "model `{}` does not exist here (available: {})",
                    requested.unwrap_or(""),
                    state
                        .upstreams
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        }
        (None, None) => {
            return Err(ApiError::unavailable(
                "no chat model is loaded (start with --model DIR)",
            ))
        }
    };
    let set = state.policies.current();
    let policy = set.for_group(caller.group.as_deref());
    audit.insert("policy".into(), json!(policy.name));
    audit.insert("policy_version".into(), json!(set.version));
    audit.insert("stream".into(), json!(stream));
    audit.insert(
        "prompt_sha256".into(),
        json!(conversation_sha256(&req.messages)),
    );

    let backend = match (engine, upstream) {
        (Some(engine), _) => {
            let prompt_ids = engine.tokenizer().encode_chat(&req.messages, true)?;
            check_prompt_length(state, prompt_ids.len())?;
            Backend::Local { engine, prompt_ids }
        }
        (None, Some(model)) => Backend::Upstream(model.clone()),
        (None, None) => unreachable!("one backend was chosen above"),
    };
    audit.insert(
        "backend".into(),
        json!(match &backend {
            Backend::Local { .. } => "local",
            Backend::Upstream(_) => "upstream",
        }),
    );
    // With `overlap_generation`, generation starts now; nothing it produces is looked at
    // before the verdict, and dropping it cancels it.
    let early = if policy.input.overlap_generation && state.guard.is_some() {
        Some(start_generation(&backend, &req)?)
    } else {
        None
    };

    // Input: the guard judges the prompt before anything generated is used.
    let verdict = guard_stage(state, &policy, Stage::Input, req.messages.clone()).await?;
    let input = decide(&policy, Stage::Input, verdict.as_ref(), &[]);
    record(state, &policy, &input, &[]);
    audit.insert(
        "input".into(),
        json!({"verdict": verdict, "decision": input}),
    );
    if input.blocked() {
        return Err(ApiError::content_filter(
            input.message.clone().unwrap_or_default(),
            filter_details(&input),
        ));
    }
    Ok(Prepared {
        req,
        backend,
        policy,
        input,
        stream,
        include_usage,
        early,
    })
}

fn check_prompt_length(state: &AppState, tokens: usize) -> Result<(), ApiError> {
    if tokens > state.limits.max_prompt_tokens {
        return Err(ApiError {
            code: Some("context_length_exceeded".into()),
            ..ApiError::invalid_param(
                "messages",
                format!(
                    "the prompt has {tokens} tokens; this server accepts at most {}",
                    state.limits.max_prompt_tokens
                ),
            )
        });
    }
    Ok(())
}

/// Generation metrics shared by both response modes.
pub(super) fn observe_generation(state: &AppState, completion: &safegate_engine::Completion) {
    let m = &state.metrics;
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

/// The output decision on the whole response, recorded in metrics and the audit record.
pub(super) fn decide_output(
    state: &AppState,
    policy: &Policy,
    verdict: Option<&safegate_policies::Verdict>,
    findings: &[Finding],
    text: &str,
    audit: &mut serde_json::Map<String, Value>,
) -> Decision {
    let output = decide(policy, Stage::Output, verdict, findings);
    record(state, policy, &output, findings);
    audit.insert(
        "output".into(),
        json!({"verdict": verdict, "decision": output}),
    );
    audit.insert(
        "findings".into(),
        json!(findings
            .iter()
            .map(|f| json!({"rule": f.rule, "cwe": f.cwe, "severity": f.severity, "line": f.line}))
            .collect::<Vec<_>>()),
    );
    audit.insert(
        "response_sha256".into(),
        json!(super::audit::sha256_hex(text)),
    );
    output
}

pub(super) fn finish_reason_name(r: safegate_engine::FinishReason) -> &'static str {
    match r {
        safegate_engine::FinishReason::Stop => "stop",
        safegate_engine::FinishReason::Length => "length",
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn completion_id() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("chatcmpl-{:x}{seq:04x}", t0_nanos() & 0xffff_ffff_ffff)
}

/// Fails the request or lets it through after a check could not run, as the policy says.
/// A check (`guard` or `shield`) could not run: fails the request (code `{check}_error`)
/// or lets it through, as the policy says; counted either way.
pub(super) fn on_check_error(
    state: &AppState,
    policy: &Policy,
    check: &str,
    what: &str,
    why: String,
) -> Result<(), ApiError> {
    let outcome = match policy.on_error {
        safegate_policies::OnError::FailClosed => "fail_closed",
        safegate_policies::OnError::FailOpen => "fail_open",
    };
    state
        .metrics
        .check_errors
        .with_label_values(&[check, outcome])
        .inc();
    match policy.on_error {
        safegate_policies::OnError::FailClosed => Err(ApiError {
            code: Some(format!("{check}_error")),
            ..ApiError::unavailable(format!("{what} failed ({why}); the policy fails closed"))
        }),
        safegate_policies::OnError::FailOpen => {
            tracing::warn!("{what} failed, policy fails open: {why}");
            Ok(())
        }
    }
}

async fn complete_whole(
    state: &AppState,
    mut p: Prepared,
    audit: &mut serde_json::Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut source = p.start()?;
    let Prepared {
        req, policy, input, ..
    } = &p;
    let mut text = String::new();
    let completion = loop {
        match source.next().await {
            Event::Text(t) => text.push_str(&t),
            Event::Done(c) => {
                text.push_str(&c.tail_text);
                break c;
            }
            Event::Failed(e) => return Err(e),
        }
    };
    observe_generation(state, &completion);

    // Output: the shield scans the code, the guard judges the response, the policy decides.
    let t_shield = Instant::now();
    let findings = if policy.shield.enabled {
        let (shield, scan_text, options) =
            (state.shield, text.clone(), shield_options(policy, None));
        let budget = std::time::Duration::from_millis(policy.shield.timeout_ms);
        let scanned = actix_web::rt::time::timeout(
            budget,
            web::block(move || shield.scan(&scan_text, &options)),
        )
        .await
        .map_err(|_| format!("no result within {} ms", budget.as_millis()))
        .and_then(|joined| joined.map_err(|e| e.to_string()))
        .and_then(|report| report.map_err(|e| e.to_string()));
        match scanned {
            Ok(report) => report.findings,
            Err(why) => {
                on_check_error(state, policy, "shield", "the code scan", why)?;
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    state
        .metrics
        .stage_duration
        .with_label_values(&["shield"])
        .observe(t_shield.elapsed().as_secs_f64());
    let mut convo = req.messages.clone();
    convo.push(ChatMessage::new("assistant", text.clone()));
    let verdict = guard_stage(state, policy, Stage::Output, convo).await?;
    let output = decide_output(state, policy, verdict.as_ref(), &findings, &text, audit);
    audit.insert("usage".into(), json!(completion.usage));

    let (content, finish_reason) = if output.blocked() {
        (output.message.clone().unwrap_or_default(), "content_filter")
    } else {
        let mut content = text;
        if let Some(note) = &output.note {
            content.push_str("\n\n");
            content.push_str(note);
        }
        (content, finish_reason_name(completion.finish_reason))
    };
    Ok(json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": unix_now(),
        "model": p.model_name(),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
            "content_filter_results": filter_details(&output)["content_filter_result"],
        }],
        "usage": {
            "prompt_tokens": completion.usage.prompt_tokens,
            "completion_tokens": completion.usage.completion_tokens,
            "total_tokens": completion.usage.prompt_tokens + completion.usage.completion_tokens,
        },
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filter_details(input)["content_filter_result"]}],
    }))
}

/// `POST /v1/moderations`: OpenAI's schema, the taxonomy mapped onto its 13 categories,
/// the native S-codes and scores alongside under `safegate`.
pub async fn moderations(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = serde_json::Map::new();
    let result = match authorize(&state, &req, "moderations", &mut audit) {
        Ok(caller) => moderations_inner(&state, caller.group.as_deref(), &body, &mut audit).await,
        Err(e) => Err(e),
    };
    respond(&state, "moderations", t0, audit, result).await
}

async fn moderations_inner(
    state: &AppState,
    group: Option<&str>,
    body: &[u8],
    audit: &mut serde_json::Map<String, Value>,
) -> Result<Value, ApiError> {
    let v = parse_body(body)?;
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("text") => o
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid_param("input", "a text part needs `text`")),
                _ => Err(ApiError::invalid_param(
                    "input",
                    "`input` items must be strings or {type: text, text} parts",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid_param(
                "input",
                "`input` must be a string or a non-empty array",
            ))
        }
    };
    if state.guard.is_none() {
        return Err(ApiError::unavailable(
            "no guard model is loaded (start with --guard-model DIR)",
        ));
    }
    let set = state.policies.current();
    let policy = set.for_group(group);
    let mut results = Vec::with_capacity(inputs.len());
    let mut hashes = Vec::new();
    for text in inputs {
        hashes.push(super::audit::sha256_hex(&text));
        let verdict = guard_stage(
            state,
            &policy,
            Stage::Input,
            vec![ChatMessage::new("user", text)],
        )
        .await?
        .ok_or_else(|| {
            ApiError::unavailable("the guard gave no verdict (input stage disabled or failed open)")
        })?;
        let decision = decide(&policy, Stage::Input, Some(&verdict), &[]);
        let scores = safegate_guard::moderation::openai_scores(policy.taxonomy, &verdict);
        let threshold = policy.input.threshold;
        let categories: serde_json::Map<String, Value> = scores
            .iter()
            .map(|(c, s)| (c.to_string(), json!(*s >= threshold)))
            .collect();
        let types: serde_json::Map<String, Value> = scores
            .keys()
            .map(|c| (c.to_string(), json!(["text"])))
            .collect();
        results.push(json!({
            "flagged": decision.action >= Action::Flag,
            "categories": categories,
            "category_scores": scores,
            "category_applied_input_types": types,
            "safegate": {"taxonomy": policy.taxonomy.name(), "p_unsafe": verdict.p_unsafe, "categories": verdict.category_scores, "decision": decision},
        }));
    }
    audit.insert("policy".into(), json!(policy.name));
    audit.insert("input_sha256".into(), json!(hashes));
    let model = state
        .guard
        .as_ref()
        .map(|g| g.model_name())
        .unwrap_or_default();
    Ok(json!({"id": format!("modr-{:x}", t0_nanos()), "model": model, "results": results}))
}

fn t0_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `POST /v1/guard/classify`: a conversation in, the guard's verdict and the policy's
/// decision out. `policy` names a loaded policy (default: the caller's); `agent_type` is
/// `user` (judge the last user turn) or `agent` (judge the last assistant turn; the default
/// when the conversation ends with one).
pub async fn guard_classify(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = serde_json::Map::new();
    let result = async {
        let caller = authorize(&state, &req, "guard", &mut audit)?;
        let v = parse_body(&body)?;
        let messages = messages_param(&v)?;
        if messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must not be empty",
            ));
        }
        let stage = match v.get("agent_type").and_then(Value::as_str) {
            Some("user") => Stage::Input,
            Some("agent") => Stage::Output,
            None if messages.last().is_some_and(|m| m.role == "assistant") => Stage::Output,
            None => Stage::Input,
            Some(other) => {
                return Err(ApiError::invalid_param(
                    "agent_type",
                    format!("agent_type must be `user` or `agent`, got `{other}`"),
                ))
            }
        };
        let set = state.policies.current();
        let policy = match v.get("policy").and_then(Value::as_str) {
            Some(name) => set.policies.get(name).cloned().ok_or_else(|| {
                ApiError::invalid_param(
                    "policy",
                    format!(
                        "no policy named `{name}` (loaded: {})",
                        set.policies.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?,
            None => set.for_group(caller.group.as_deref()),
        };
        if state.guard.is_none() {
            return Err(ApiError::unavailable(
                "no guard model is loaded (start with --guard-model DIR)",
            ));
        }
        audit.insert("policy".into(), json!(policy.name));
        audit.insert(
            "conversation_sha256".into(),
            json!(conversation_sha256(&messages)),
        );
        let verdict = guard_stage(&state, &policy, stage, messages).await?;
        let decision = decide(&policy, stage, verdict.as_ref(), &[]);
        record(&state, &policy, &decision, &[]);
        audit.insert("verdict".into(), json!(verdict));
        audit.insert("decision".into(), json!(decision));
        Ok(json!({
            "policy": policy.name,
            "taxonomy": policy.taxonomy.name(),
            "agent_type": if stage == Stage::Input { "user" } else { "agent" },
            "verdict": verdict,
            "decision": decision,
        }))
    }
    .await;
    respond(&state, "guard_classify", t0, audit, result).await
}
