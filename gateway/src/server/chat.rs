//! `POST /v1/chat/completions`: the input stage, then the reply through the output checks
//! (`crate::output::OutputChecks`), whole here or streamed (`stream.rs`).

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use safegate_api::response::{
    AssistantMessage, ChatCompletion, Choice, PromptFilterResult, UsageBody,
};
use safegate_engine::{ChatMessage, SamplingParams};
use safegate_policies::{decide, Stage};

use super::audit::{conversation_sha256, AuditRecord, StageRecord};
use super::backend::{self, Backend, ChatRequest, Event};
use super::checks::{self, StreamShield};
use super::reply::{
    finish_reason_name, finish_reason_with_calls, observe_generation, record_output, response_id,
    unix_now, Prepared,
};
use super::respond::{self, filter_results, record_decision, Body, Reply};
use super::{trace, ApiError, AppState};
use crate::local_tools;
use crate::tools::ToolCalls;
use safegate_api::ToolChoice;
use serde_json::Value;

/// What the local model would read: its turns, and the calls it may make.
struct LocalPrompt {
    messages: Vec<ChatMessage>,
    calls: Option<backend::LocalCalls>,
}

/// A model's tool calls over `limits.max_tool_call_bytes`.
pub(super) fn tool_calls_too_long(why: String) -> ApiError {
    ApiError {
        status: actix_web::http::StatusCode::BAD_GATEWAY,
        code: Some("upstream_error".into()),
        ..ApiError::internal(format!("the model's reply is not usable: {why}"))
    }
}

pub async fn completions(state: web::Data<AppState>, req: HttpRequest, body: Body) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = AuditRecord::default();
    let result = match prepare(&state, &req, body, &mut audit).await {
        Ok(p) if p.stream => {
            // The stream's task writes the audit line and the metrics when it ends.
            match super::stream::start(state.clone(), p, t0, &mut audit) {
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
    respond::respond(&state, "chat_completions", t0, audit, result).await
}

/// The backend for the requested model: an upstream by name, else the local engine.
fn choose_backend(
    state: &AppState,
    requested: Option<&str>,
    max_tokens: usize,
    local: impl FnOnce() -> LocalPrompt,
) -> Result<Box<dyn Backend>, ApiError> {
    let upstream = |name: &str| state.upstreams.iter().find(|t| t.name() == name);
    if let Some(target) = requested.and_then(upstream) {
        let chain = std::iter::once(target.clone())
            .chain(
                target
                    .config
                    .fallbacks
                    .iter()
                    .filter_map(|f| upstream(f).cloned()),
            )
            .collect();
        return Ok(Box::new(backend::Upstream {
            chain,
            metrics: state.metrics.upstream.clone(),
        }));
    }
    // A model this server does not serve is an error, not the local model in disguise
    // (omitting `model` picks the local one).
    if let (Some(name), Some(engine)) = (requested, &state.engine) {
        if name != engine.info().name {
            return Err(super::model_not_found(
                state,
                name,
                "; omit `model` for the default",
            ));
        }
    }
    match &state.engine {
        Some(engine) => {
            let local = local();
            let prompt_ids = engine.tokenizer().encode_chat(&local.messages, true)?;
            check_prompt_length(state, prompt_ids.len())?;
            // A request the model cannot hold is refused here, as the engine would refuse
            // it, before the checks spend seconds on it (and a slow guard's timeout turns
            // the client's error into the server's).
            engine
                .check_fits(prompt_ids.len(), max_tokens)
                .map_err(|overflow| ApiError {
                    param: Some("messages".into()),
                    ..overflow.into()
                })?;
            Ok(Box::new(backend::Local {
                engine: engine.clone(),
                prompt_ids,
                calls: local.calls,
            }))
        }
        None if !state.upstreams.is_empty() => {
            Err(super::model_not_found(state, requested.unwrap_or(""), ""))
        }
        None => Err(ApiError::unavailable(
            "no chat model is loaded (start with --model DIR)",
        )),
    }
}

async fn prepare(
    state: &AppState,
    http: &HttpRequest,
    body: Body,
    audit: &mut AuditRecord,
) -> Result<Prepared, ApiError> {
    let caller = respond::authorize(state, http, "chat", audit).await?;
    let body = body.0?;
    let limits = safegate_api::ChatLimits {
        max_messages: state.limits.max_messages,
        max_tokens: state.limits.max_tokens,
    };
    let params = respond::parse_request(&body, |v| safegate_api::parse_chat(v, &limits))?;
    let sampling = SamplingParams {
        temperature: params.temperature as f32,
        top_p: params.top_p as f32,
        seed: params.seed,
        frequency_penalty: params.frequency_penalty as f32,
        presence_penalty: params.presence_penalty as f32,
        logit_bias: params
            .logit_bias
            .iter()
            .map(|&(id, b)| (id, b as f32))
            .collect(),
        ..Default::default()
    };
    sampling
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let offers_tools = params.offers_tools();
    let parallel_calls = params.relayed.get("parallel_tool_calls") != Some(&Value::Bool(false));
    let mut req = ChatRequest {
        upstream_messages: params.messages.iter().map(|m| m.to_json()).collect(),
        messages: crate::messages::to_chat_messages(params.messages.clone()),
        relayed: params.relayed,
        max_tokens: params.max_tokens,
        sampling,
        stop: params.stop,
        format: None,
    };
    // The local model reads the offered tools, earlier calls and their results in the
    // form it is asked to call in; the checks read the turns as sent.
    let local = || LocalPrompt {
        messages: local_tools::prompt_messages(
            &params.messages,
            &params.tools,
            &params.tool_choice,
        ),
        calls: offers_tools.then(|| backend::LocalCalls {
            names: params.tools.iter().map(|t| t.name.clone()).collect(),
            forced: matches!(
                params.tool_choice,
                ToolChoice::Required | ToolChoice::Function(_)
            ),
            parallel: parallel_calls,
        }),
    };
    let backend = choose_backend(state, params.model.as_deref(), req.max_tokens, local)?;
    if backend.kind() == "local" {
        // An upstream gets `response_format` and `tool_choice` as sent; the local engine
        // holds its reply to the grammar token by token: a call the request demands, else
        // the format asked for.
        req.format = match local_tools::call_grammar(&params.tools, &params.tool_choice) {
            Ok(Some(grammar)) => Some(std::sync::Arc::new(grammar)),
            Ok(None) => local_format(&params.response_format)?,
            Err((tool, e)) => {
                return Err(unsupported_schema(
                    "tools",
                    format!("the parameters of function `{tool}`: {e}"),
                ))
            }
        };
    }
    let model = backend.model_name();
    trace::name(format!("chat {model}"));
    trace::attr("gen_ai.operation.name", "chat");
    trace::attr("gen_ai.request.model", model.clone());
    trace::attr("gen_ai.response.model", model);
    trace::attr("gen_ai.request.max_tokens", req.max_tokens);
    trace::attr("gen_ai.request.temperature", params.temperature);
    trace::attr("gen_ai.request.top_p", params.top_p);
    trace::attr("safegate.stream", params.stream);
    trace::attr("safegate.backend", backend.kind());
    trace::text_attr("safegate.debug.prompt", || {
        req.messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default()
    });
    let set = state.policies.current();
    let policy = set.for_group(caller.group.as_deref());
    audit.policy = Some(policy.name.clone());
    audit.policy_version = Some(set.version);
    audit.stream = Some(params.stream);
    audit.prompt_sha256 = Some(conversation_sha256(&req.messages));
    audit.backend = Some(backend.kind());
    // With `overlap_generation`, generation starts now; nothing it produces is looked at
    // before the verdict, and dropping it cancels it.
    let early = if policy.input.overlap_generation && state.guard.is_some() {
        Some(backend.start(&req)?)
    } else {
        None
    };

    // Input: the guard judges the prompt before anything generated is used.
    // Then the prompt-attack check: the embedded guard reuses the features it has just
    // computed for the same turns, so it costs the head's arithmetic, not a second pass.
    let verdict = checks::input_guard(state, &policy, &req.messages).await?;
    let attack = checks::prompt_attack(state, &policy, &req.messages).await?;
    let mut input = decide(&policy, Stage::Input, verdict.as_ref(), &[]);
    input.apply_prompt_attack(&policy, attack);
    if let Some(score) = attack {
        trace::attr("safegate.prompt_attack", score);
    }
    record_decision(state, &policy, &input, &[]);
    let blocked = input.blocked().then(|| {
        ApiError::content_filter(
            input.message.clone().unwrap_or_default(),
            serde_json::json!({"content_filter_result": filter_results(&input)}),
        )
    });
    audit.input = Some(StageRecord {
        verdict,
        decision: input.clone(),
    });
    if let Some(e) = blocked {
        return Err(e);
    }
    Ok(Prepared {
        req,
        backend,
        policy,
        input,
        stream: params.stream,
        include_usage: params.include_usage,
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

/// A reply given whole: the same output checks as a stream, released once at the end.
async fn complete_whole(
    state: &AppState,
    mut p: Prepared,
    audit: &mut AuditRecord,
) -> Result<Reply, ApiError> {
    let mut source = p.start()?;
    let mut checks = p.output_checks(state);
    let mut tools = ToolCalls::new(state.limits.max_tool_call_bytes);
    let completion = loop {
        match source.next().await {
            Event::Text(t) => checks.push(&t),
            Event::ToolCall(call) => tools.push(&call).map_err(tool_calls_too_long)?,
            Event::Done(c) => {
                checks.push(&c.tail_text);
                break c;
            }
            Event::Failed(e) => return Err(e),
        }
    };
    drop(source);
    observe_generation(state, &completion);
    checks::settle(
        state,
        &mut checks,
        StreamShield::whole(),
        &p.req.messages,
        &tools,
    )
    .await?;
    let output = record_output(state, &checks, audit);
    audit.usage = Some(completion.usage);
    if !tools.is_empty() {
        audit.tool_calls = Some(tools.calls().into_iter().map(|c| c.name).collect());
    }

    let released = checks.release().to_string();
    let (content, tool_calls, finish_reason) = match checks.blocked() {
        Some(block) => (
            Some(block.message.clone().unwrap_or_default()),
            None,
            "content_filter",
        ),
        None => {
            let mut content = released;
            if let Some(note) = &output.note {
                content.push_str("\n\n");
                content.push_str(note);
            }
            if tools.is_empty() {
                (
                    Some(content),
                    None,
                    finish_reason_name(completion.finish_reason),
                )
            } else {
                // Cleared with the rest of the reply: the calls go out whole.
                let content = (!content.is_empty()).then_some(content);
                (
                    content,
                    Some(tools.to_json(false)),
                    finish_reason_with_calls(completion.finish_reason),
                )
            }
        }
    };
    let body = ChatCompletion {
        id: response_id("chatcmpl"),
        object: "chat.completion",
        created: unix_now(),
        model: p.backend.model_name(),
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content,
                tool_calls,
            },
            finish_reason,
            content_filter_results: filter_results(&output),
        }],
        usage: UsageBody::new(
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens,
        ),
        prompt_filter_results: vec![PromptFilterResult {
            prompt_index: 0,
            content_filter_results: filter_results(&p.input),
        }],
    };
    Ok(Reply {
        body: serde_json::to_value(body).map_err(|e| ApiError::internal(e.to_string()))?,
        outcome: checks.outcome(),
        released_bytes: Some(checks.released()),
    })
}

/// The grammar a local reply is held to, or a 400 naming what in the schema cannot be held to.
fn local_format(
    format: &safegate_api::ResponseFormat,
) -> Result<Option<std::sync::Arc<safegate_structured::Grammar>>, ApiError> {
    crate::messages::grammar_for(format).map_err(|e| {
        let name = match format {
            safegate_api::ResponseFormat::JsonSchema { name, .. } => name.as_str(),
            _ => "",
        };
        unsupported_schema(
            "response_format",
            format!("response_format.json_schema `{name}`: {e}"),
        )
    })
}

/// A schema the local engine cannot hold a reply to (`response_format`, or a function's
/// parameters in `tools`).
fn unsupported_schema(param: &str, message: String) -> ApiError {
    ApiError {
        code: Some("unsupported_schema".into()),
        ..ApiError::invalid_param(param, message)
    }
}
