//! The moderation-only endpoints: `POST /v1/moderations` (OpenAI's schema) and
//! `POST /v1/guard/classify` (the guard's verdict and the policy's decision).

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use safegate_api::AgentType;
use safegate_engine::ChatMessage;
use safegate_policies::{decide, Action, Stage};
use serde_json::{json, Value};

use super::audit::{conversation_sha256, sha256_hex, AuditRecord};
use super::checks::{check_guard_size, guard_stage, prompt_attack};
use super::reply::response_id;
use super::respond::{authorize, parse_request, record_decision, respond, Body, Reply};
use super::{ApiError, AppState};

fn require_guard(state: &AppState) -> Result<(), ApiError> {
    if state.guard.is_none() {
        return Err(ApiError::unavailable(
            "no guard model is loaded (start with --guard-model DIR)",
        ));
    }
    Ok(())
}

/// `POST /v1/moderations`: OpenAI's schema, the taxonomy mapped onto its 13 categories,
/// the native S-codes and scores alongside under `safegate`. Each input's decision is
/// counted like a chat's input stage.
pub async fn moderations(state: web::Data<AppState>, req: HttpRequest, body: Body) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = AuditRecord::default();
    let result = async {
        let caller = authorize(&state, &req, "moderations", &mut audit).await?;
        let body = body.0?;
        let inputs = parse_request(&body, safegate_api::parse_moderation)?;
        require_guard(&state)?;
        check_guard_size(&state, "input", &inputs)?;
        let policy = state.policies.current().for_group(caller.group.as_deref());
        audit.policy = Some(policy.name.clone());
        audit.input_sha256 = Some(inputs.iter().map(|t| sha256_hex(t)).collect());
        let mut results = Vec::with_capacity(inputs.len());
        for text in inputs {
            let convo = vec![ChatMessage::new("user", text)];
            // Reported beside the categories; `flagged` stays about harmful content. After
            // the guard, whose features of the same text it reuses.
            let verdict = guard_stage(&state, &policy, Stage::Input, convo.clone()).await?;
            let attack = prompt_attack(&state, &policy, &convo).await?;
            let verdict = verdict
                .ok_or_else(|| {
                    ApiError::unavailable(
                        "the guard gave no verdict (input stage disabled or failed open)",
                    )
                })?;
            let decision = decide(&policy, Stage::Input, Some(&verdict), &[]);
            record_decision(&state, &policy, &decision, &[]);
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
                "safegate": {"taxonomy": policy.taxonomy.name(), "p_unsafe": verdict.p_unsafe, "categories": verdict.category_scores, "decision": decision, "prompt_attack": attack},
            }));
        }
        let model = state
            .guard
            .as_ref()
            .map(|g| g.model_name())
            .unwrap_or_default();
        Ok(Reply::from(
            json!({"id": response_id("modr"), "model": model, "results": results}),
        ))
    }
    .await;
    respond(&state, "moderations", t0, audit, result).await
}

/// `POST /v1/guard/classify`: a conversation in, the guard's verdict and the policy's
/// decision out. `policy` names a loaded policy (default: the caller's); `agent_type` is
/// `user` (judge the last user turn) or `agent` (judge the last assistant turn; the default
/// when the conversation ends with one).
pub async fn guard_classify(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Body,
) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = AuditRecord::default();
    let result = async {
        let caller = authorize(&state, &req, "guard", &mut audit).await?;
        let body = body.0?;
        let request = parse_request(&body, safegate_api::parse_classify)?;
        let stage = match request.agent_type {
            AgentType::User => Stage::Input,
            AgentType::Agent => Stage::Output,
        };
        let set = state.policies.current();
        let policy = match &request.policy {
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
        // A user turn can be judged by Prompt Guard alone (the prompt-attack check).
        if !(stage == Stage::Input && state.prompt_guard.is_some()) {
            require_guard(&state)?;
        }
        let messages = crate::messages::to_chat_messages(request.messages);
        check_guard_size(&state, "messages", messages.iter().map(|m| &m.content))?;
        audit.policy = Some(policy.name.clone());
        audit.conversation_sha256 = Some(conversation_sha256(&messages));
        // The input stage's decision is a chat's: the prompt-attack check included.
        let judged = messages.clone();
        let verdict = guard_stage(&state, &policy, stage, messages).await?;
        let attack = if stage == Stage::Input {
            prompt_attack(&state, &policy, &judged).await?
        } else {
            None
        };
        let mut decision = decide(&policy, stage, verdict.as_ref(), &[]);
        decision.apply_prompt_attack(&policy, attack);
        record_decision(&state, &policy, &decision, &[]);
        let body = json!({
            "policy": policy.name,
            "taxonomy": policy.taxonomy.name(),
            "agent_type": if stage == Stage::Input { "user" } else { "agent" },
            "verdict": verdict,
            "prompt_attack": attack,
            "decision": decision,
        });
        audit.verdict = verdict;
        audit.decision = Some(decision);
        Ok(Reply::from(body))
    }
    .await;
    respond(&state, "guard_classify", t0, audit, result).await
}
