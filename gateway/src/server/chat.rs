//! `/v1/chat/completions` (non-streaming for now) and `/v1/shield/scan`, with the policy
//! enforced on the way in and on the way out.

use std::time::Instant;

use actix_web::{web, HttpResponse};
use safegate_engine::{ChatMessage, GenerateRequest, GenerationEvent, SamplingParams};
use safegate_guard::{build_prompt, AgentType, CategorySelection};
use safegate_policies::{decide, Action, Decision, Policy, Reason, Stage};
use safegate_shield::{Finding, Language, ScanOptions};
use serde_json::{json, Value};

use super::{ApiError, AppState};

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "the body is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })
}

fn shield_options(policy: &Policy, language: Option<Language>) -> ScanOptions {
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
    for r in &d.reasons {
        if let Reason::Category { code, action, .. } = r {
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

pub async fn shield_scan(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = serde_json::Map::new();
    let result = async {
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
        let policy = state.policies.current().for_group(None);
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
    let status = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
    audit.insert("status".into(), json!(status));
    let mut resp = finish(
        &state,
        "shield_scan",
        t0,
        result.map(|v| HttpResponse::Ok().json(v)),
    );
    if let Err(e) = super::write_audit(&state, "shield_scan", t0, audit) {
        tracing::error!("audit log write failed: {e}");
        resp = ApiError::internal("the audit log cannot be written; the request was not completed")
            .into_response();
    }
    resp
}

fn finish(
    state: &AppState,
    endpoint: &str,
    t0: Instant,
    result: Result<HttpResponse, ApiError>,
) -> HttpResponse {
    state
        .metrics
        .duration
        .with_label_values(&[endpoint])
        .observe(t0.elapsed().as_secs_f64());
    let (outcome, resp) = match result {
        Ok(r) => ("ok", r),
        Err(e) => {
            let outcome = match (e.code.as_deref(), e.status.as_u16()) {
                (Some("content_filter"), _) => "blocked",
                (_, 429) => "rejected",
                (_, s) if s < 500 => "client_error",
                _ => "server_error",
            };
            (outcome, e.into_response())
        }
    };
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, outcome])
        .inc();
    resp
}

/// The validated request.
struct ChatRequest {
    messages: Vec<ChatMessage>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
}

fn parse_chat(v: &Value) -> Result<ChatRequest, ApiError> {
    if v.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid_param(
            "stream",
            "streaming is not supported by this server yet; send stream: false",
        ));
    }
    if let Some(n) = v.get("n") {
        if n.as_u64() != Some(1) {
            return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
        }
    }
    let messages =
        crate::messages::parse_message_values(v.get("messages").unwrap_or(&Value::Null), "request")
            .map_err(|e| {
                ApiError::invalid_param("messages", e.to_string().replacen("request: ", "", 1))
            })?;
    let num = |key: &str| -> Result<Option<f64>, ApiError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid_param(key, format!("`{key}` must be a number"))),
        }
    };
    let max_tokens = num("max_completion_tokens")?
        .or(num("max_tokens")?)
        .unwrap_or(256.0);
    if !(1.0..=32768.0).contains(&max_tokens) || max_tokens.fract() != 0.0 {
        return Err(ApiError::invalid_param(
            "max_tokens",
            format!("max_tokens must be an integer from 1 to 32768, got {max_tokens}"),
        ));
    }
    let sampling = SamplingParams {
        temperature: num("temperature")?.unwrap_or(0.0) as f32,
        top_p: num("top_p")?.unwrap_or(1.0) as f32,
        seed: num("seed")?.map(|s| s as u64),
        ..Default::default()
    };
    sampling
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let stop = match v.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid_param(
                        "stop",
                        "`stop` must be a string or an array of strings",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    Ok(ChatRequest {
        messages,
        max_tokens: max_tokens as usize,
        sampling,
        stop,
    })
}

/// Runs the guard on a conversation, if one is configured and the stage is on.
async fn guard_stage(
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
    let result = match actix_web::rt::time::timeout(
        budget,
        web::block(move || guard.classify_blocking(&prompt)),
    )
    .await
    {
        Ok(joined) => joined
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| e.to_string()),
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
        Err(e) => match policy.on_error {
            safegate_policies::OnError::FailClosed => Err(ApiError {
                code: Some("guard_error".into()),
                ..ApiError::unavailable(format!(
                    "the safety check failed ({e}); the policy fails closed"
                ))
            }),
            safegate_policies::OnError::FailOpen => {
                tracing::warn!("guard error, policy fails open: {e}");
                Ok(None)
            }
        },
    }
}

fn filter_details(d: &Decision) -> Value {
    json!({"content_filter_result": {"action": action_name(d.action), "reasons": d.reasons}})
}

pub async fn completions(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = serde_json::Map::new();
    let result = completions_inner(&state, &body, &mut audit).await;
    let (status, outcome) = match &result {
        Ok(_) => (200, "ok".to_string()),
        Err(e) => (
            e.status.as_u16(),
            e.code.clone().unwrap_or_else(|| e.kind.to_string()),
        ),
    };
    audit.insert("status".into(), json!(status));
    audit.insert("outcome".into(), json!(outcome));
    let mut resp = finish(
        &state,
        "chat_completions",
        t0,
        result.map(|v| HttpResponse::Ok().json(v)),
    );
    if let Err(e) = super::write_audit(&state, "chat_completions", t0, audit) {
        // The response must not leave without its audit line.
        tracing::error!("audit log write failed: {e}");
        resp = ApiError::internal("the audit log cannot be written; the request was not completed")
            .into_response();
    }
    resp
}

async fn completions_inner(
    state: &AppState,
    body: &[u8],
    audit: &mut serde_json::Map<String, Value>,
) -> Result<Value, ApiError> {
    let v = parse_body(body)?;
    let req = parse_chat(&v)?;
    let engine = state
        .engine
        .clone()
        .ok_or_else(|| ApiError::unavailable("no chat model is loaded (start with --model DIR)"))?;
    let set = state.policies.current();
    let policy = set.for_group(None);
    audit.insert("policy".into(), json!(policy.name));
    audit.insert("policy_version".into(), json!(set.version));
    let prompt_text: String = req
        .messages
        .iter()
        .map(|m| format!("{}\n{}\n", m.role, m.content))
        .collect();
    audit.insert(
        "prompt_sha256".into(),
        json!(super::audit::sha256_hex(&prompt_text)),
    );

    // Input: the guard judges the prompt before anything is generated.
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

    let prompt_ids = engine.tokenizer().encode_chat(&req.messages, true)?;
    let t_gen = Instant::now();
    let mut stream = engine.generate(GenerateRequest {
        prompt_ids,
        max_tokens: req.max_tokens,
        sampling: req.sampling,
        stop: req.stop,
        ignore_eos: false,
    })?;
    let mut text = String::new();
    let completion = loop {
        match stream.next().await {
            Some(GenerationEvent::Token { text: t, .. }) => text.push_str(&t),
            Some(GenerationEvent::Done(c)) => {
                text.push_str(&c.tail_text);
                break c;
            }
            Some(GenerationEvent::Error(e)) => return Err(e.into()),
            None => return Err(ApiError::internal("generation stopped unexpectedly")),
        }
    };
    state
        .metrics
        .stage_duration
        .with_label_values(&["generation"])
        .observe(t_gen.elapsed().as_secs_f64());
    state
        .metrics
        .tokens
        .with_label_values(&["in"])
        .inc_by(completion.usage.prompt_tokens as u64);
    state
        .metrics
        .tokens
        .with_label_values(&["out"])
        .inc_by(completion.usage.completion_tokens as u64);

    // Output: the shield scans the code, the guard judges the response, the policy decides.
    let t_shield = Instant::now();
    let findings = if policy.shield.enabled {
        let (shield, scan_text, options) =
            (state.shield, text.clone(), shield_options(&policy, None));
        let budget = std::time::Duration::from_millis(policy.shield.timeout_ms);
        let scanned = actix_web::rt::time::timeout(
            budget,
            web::block(move || shield.scan(&scan_text, &options)),
        )
        .await;
        match scanned {
            Ok(Ok(Ok(report))) => report.findings,
            failed => {
                let why = match failed {
                    Err(_) => format!("no result within {} ms", budget.as_millis()),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(Err(e))) => e.to_string(),
                    Ok(Ok(Ok(_))) => unreachable!(),
                };
                match policy.on_error {
                    safegate_policies::OnError::FailClosed => {
                        return Err(ApiError {
                            code: Some("shield_error".into()),
                            ..ApiError::unavailable(format!(
                                "the code scan failed ({why}); the policy fails closed"
                            ))
                        })
                    }
                    safegate_policies::OnError::FailOpen => {
                        tracing::warn!("shield error, policy fails open: {why}");
                        Vec::new()
                    }
                }
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
    let verdict = guard_stage(state, &policy, Stage::Output, convo).await?;
    let output = decide(&policy, Stage::Output, verdict.as_ref(), &findings);
    record(state, &policy, &output, &findings);
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
        json!(super::audit::sha256_hex(&text)),
    );
    audit.insert("usage".into(), json!(completion.usage));

    let (content, finish_reason) = if output.blocked() {
        (
            output.message.clone().unwrap_or_default(),
            "content_filter".to_string(),
        )
    } else {
        let mut content = text;
        if let Some(note) = &output.note {
            content.push_str("\n\n");
            content.push_str(note);
        }
        let reason = match completion.finish_reason {
            safegate_engine::FinishReason::Stop => "stop",
            safegate_engine::FinishReason::Length => "length",
        };
        (content, reason.to_string())
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(json!({
        "id": format!("chatcmpl-{created:x}{:x}", t_gen.elapsed().as_nanos() & 0xffff_ffff),
        "object": "chat.completion",
        "created": created,
        "model": engine.info().name,
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
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filter_details(&input)["content_filter_result"]}],
    }))
}

/// `POST /v1/moderations`: OpenAI's schema, the taxonomy mapped onto its 13 categories,
/// the native S-codes and scores alongside under `safegate`.
pub async fn moderations(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = serde_json::Map::new();
    let result = moderations_inner(&state, &body, &mut audit).await;
    audit.insert(
        "status".into(),
        json!(result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200)),
    );
    let mut resp = finish(
        &state,
        "moderations",
        t0,
        result.map(|v| HttpResponse::Ok().json(v)),
    );
    if let Err(e) = super::write_audit(&state, "moderations", t0, audit) {
        tracing::error!("audit log write failed: {e}");
        resp = ApiError::internal("the audit log cannot be written; the request was not completed")
            .into_response();
    }
    resp
}

async fn moderations_inner(
    state: &AppState,
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
    let policy = set.for_group(None);
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
        .map(|g| g.engine().info().name.clone())
        .unwrap_or_default();
    Ok(json!({"id": format!("modr-{:x}", t0_nanos()), "model": model, "results": results}))
}

fn t0_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
