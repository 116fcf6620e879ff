//! The checks as the server runs them: the guard and the shield off the async runtime,
//! within the policy's time budgets, their failures settled by the policy's `on_error`, and
//! their results fed to the reply's `OutputChecks` (the pure machine that decides what is
//! released; see `crate::output`).

use std::time::{Duration, Instant};

use actix_web::web;
use safegate_engine::ChatMessage;
use safegate_guard::prompt_guard::Source;
use safegate_guard::{build_prompt, AgentType, CategorySelection};
use safegate_policies::{OnError, Policy, Stage, Verdict};
use safegate_shield::{Language, ScanOptions, StreamScanner};

use super::{ApiError, AppState};
use crate::output::OutputChecks;
use crate::tools::ToolCalls;

pub(super) fn shield_options(policy: &Policy, language: Option<Language>) -> ScanOptions {
    ScanOptions {
        language,
        languages: policy.shield.languages.clone(),
        disabled_rules: policy.shield.disabled_rules.clone(),
        ..Default::default()
    }
}

/// A check (`guard` or `shield`) could not run: fails the request (code `{check}_error`)
/// or lets it through, as the policy says; counted either way. The one place `on_error`
/// is applied.
pub(super) fn on_check_error(
    state: &AppState,
    policy: &Policy,
    check: &str,
    what: &str,
    why: String,
) -> Result<(), ApiError> {
    state
        .metrics
        .check_errors
        .with_label_values(&[check, policy.on_error.as_str()])
        .inc();
    match policy.on_error {
        OnError::FailClosed => Err(ApiError {
            code: Some(format!("{check}_error")),
            ..ApiError::unavailable(format!("{what} failed ({why}); the policy fails closed"))
        }),
        OnError::FailOpen => {
            tracing::warn!("{what} failed, policy fails open: {why}");
            Ok(())
        }
    }
}

fn observe_stage(state: &AppState, stage: &str, t: Instant) {
    super::trace::stage(stage, t);
    state
        .metrics
        .stage_duration
        .with_label_values(&[stage])
        .observe(t.elapsed().as_secs_f64());
}

/// A flag raised when the future holding it is dropped, finished or not.
#[derive(Default)]
struct CancelOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs the guard on a conversation, if one is configured and the stage is on. Past the
/// stage's time budget the guard counts as failed (`on_error` decides) and its queued work
/// is dropped by the guard's deadline.
pub(super) async fn guard_stage(
    state: &AppState,
    policy: &Policy,
    stage: Stage,
    messages: Vec<ChatMessage>,
) -> Result<Option<Verdict>, ApiError> {
    let agent = if stage == Stage::Input {
        AgentType::User
    } else {
        AgentType::Agent
    };
    guard_stage_as(state, policy, stage, agent, messages).await
}

/// Runs guard work on the blocking pool within `budget`: its result, or why it failed
/// (for the policy's `on_error`). The guard drops the work when the budget runs out or when
/// this future is dropped (the client went away, or the request ended otherwise): nobody
/// waits for it. A full guard queue is overload, not a failing guard: 429 + Retry-After,
/// for the client to retry, instead of `on_error` deciding.
async fn on_guard<T: Send + 'static>(
    budget: Duration,
    job: impl FnOnce(&safegate_guard::Until) -> Result<T, safegate_guard::GuardError> + Send + 'static,
) -> Result<Result<T, String>, ApiError> {
    let cancelled = CancelOnDrop::default();
    let until = safegate_guard::Until {
        deadline: Some(Instant::now() + budget),
        cancelled: Some(cancelled.0.clone()),
    };
    match actix_web::rt::time::timeout(budget, web::block(move || job(&until))).await {
        Ok(joined) => match joined.map_err(|e| ApiError::internal(e.to_string()))? {
            Err(safegate_guard::GuardError::Engine(safegate_engine::EngineError::QueueFull)) => {
                Err(ApiError::overloaded())
            }
            other => Ok(other.map_err(|e| e.to_string())),
        },
        Err(_) => Ok(Err(format!("no verdict within {} ms", budget.as_millis()))),
    }
}

/// `guard_stage` judging the turns of `agent` (the stage's settings apply).
async fn guard_stage_as(
    state: &AppState,
    policy: &Policy,
    stage: Stage,
    agent: AgentType,
    messages: Vec<ChatMessage>,
) -> Result<Option<Verdict>, ApiError> {
    let Some(guard) = state.guard.clone() else {
        return Ok(None);
    };
    if !policy.stage(stage).enabled {
        return Ok(None);
    }
    let selection = CategorySelection {
        codes: None,
        custom: &policy.custom_categories,
        with_descriptions: false,
    };
    // The guard reads the text undisguised (no zero-width characters, full-width or
    // look-alike letters); the model gets the original.
    let messages: Vec<ChatMessage> = messages
        .into_iter()
        .map(|m| match safegate_guard::normalize::for_guard(&m.content) {
            std::borrow::Cow::Borrowed(_) => m,
            std::borrow::Cow::Owned(text) => ChatMessage::new(m.role, text),
        })
        .collect();
    let prompt = build_prompt(policy.taxonomy, agent, &messages, &selection)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let t0 = Instant::now();
    let budget = Duration::from_millis(policy.stage(stage).timeout_ms);
    let result = on_guard(budget, move |until| guard.classify_for(&prompt, until)).await?;
    let name = match stage {
        Stage::Input => "input_guard",
        Stage::Output => "output_guard",
    };
    observe_stage(state, name, t0);
    match result {
        Ok(c) => Ok(Some(c.verdict)),
        Err(e) => on_check_error(state, policy, "guard", "the safety check", e).map(|()| None),
    }
}

/// Refuses input the guard would take too long to judge (`limits.max_guard_bytes`): one
/// caller's 100 KB must not hold the guard while everyone else's short requests time out,
/// and text is never judged in part.
pub(super) fn check_guard_size(
    state: &AppState,
    param: &str,
    texts: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<(), ApiError> {
    if state.guard.is_none() {
        return Ok(());
    }
    let bytes: usize = texts.into_iter().map(|t| t.as_ref().len()).sum();
    let max = state.limits.max_guard_bytes;
    if bytes > max {
        return Err(ApiError {
            code: Some("guard_input_too_large".into()),
            ..ApiError::invalid_param(
                param,
                format!(
                    "{bytes} bytes of text to judge; the safety check takes at most {max} per request \
                     (limits.max_guard_bytes)"
                ),
            )
        });
    }
    Ok(())
}

/// The input stage of a chat: everything the model will read is judged. The user's (and
/// system and tool) turns as the user's; assistant turns the client wrote itself (the
/// model continues them as its own words) as an assistant's, all of them together, in a
/// second guard call run alongside. The verdict that scores worse is the stage's verdict.
pub(super) async fn input_guard(
    state: &AppState,
    policy: &Policy,
    messages: &[ChatMessage],
) -> Result<Option<Verdict>, ApiError> {
    if policy.input.enabled {
        check_guard_size(state, "messages", messages.iter().map(|m| &m.content))?;
    }
    let Some(last) = messages.iter().rposition(|m| m.role == "assistant") else {
        return guard_stage(state, policy, Stage::Input, messages.to_vec()).await;
    };
    let written: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == "assistant")
        .map(|m| m.content.as_str())
        .collect();
    let mut as_reply = messages[..last].to_vec();
    as_reply.push(ChatMessage::new("assistant", written.join("\n\n")));
    let (user, assistant) = tokio::join!(
        guard_stage(state, policy, Stage::Input, messages.to_vec()),
        guard_stage_as(state, policy, Stage::Input, AgentType::Agent, as_reply),
    );
    Ok(match (user?, assistant?) {
        (Some(u), Some(a)) if a.p_unsafe > u.p_unsafe => Some(a),
        (Some(u), _) => Some(u),
        (None, a) => a,
    })
}

/// P(prompt attack) of the turns the policy's `prompt_attack` stage judges (their roles),
/// the worst of them; None when the stage is off, no turn is judged, or there is no
/// prompt-attack classifier (Prompt Guard, or the embedded guard's attack head). Within the
/// input stage's time budget; a failure is the policy's `on_error` to settle, as for the
/// guard.
pub(super) async fn prompt_attack(
    state: &AppState,
    policy: &Policy,
    messages: &[ChatMessage],
) -> Result<Option<f64>, ApiError> {
    let pa = &policy.prompt_attack;
    let texts: Vec<(Source, String)> = messages
        .iter()
        .filter(|m| pa.judge.contains(&m.role))
        .map(|m| {
            let text = safegate_guard::normalize::for_guard(&m.content).into_owned();
            (Source::of_role(&m.role), text)
        })
        .filter(|(_, t)| !t.trim().is_empty())
        .collect();
    if !pa.enabled || texts.is_empty() {
        return Ok(None);
    }
    let t0 = Instant::now();
    let budget = Duration::from_millis(policy.input.timeout_ms);
    let result = match (state.prompt_guard.clone(), state.guard.clone()) {
        (Some(prompt_guard), _) => {
            on_guard(budget, move |until| {
                prompt_guard.scores(&texts, until).map(Some)
            })
            .await?
        }
        (None, Some(guard)) if guard.detects_prompt_attacks() => {
            let texts: Vec<String> = texts.into_iter().map(|(_, t)| t).collect();
            on_guard(budget, move |until| {
                guard.prompt_attack_scores(&texts, until)
            })
            .await?
        }
        // No prompt-attack classifier: nothing to run.
        (None, _) => return Ok(None),
    };
    observe_stage(state, "prompt_attack", t0);
    match result {
        Ok(scores) => Ok(scores.and_then(|s| s.into_iter().reduce(f64::max))),
        Err(e) => {
            on_check_error(state, policy, "guard", "the prompt-attack check", e).map(|()| None)
        }
    }
}

/// The shield's side of a streamed reply: the scanner, fed off the async runtime.
pub(super) struct StreamShield {
    scanner: Option<StreamScanner<'static>>,
}

impl StreamShield {
    pub fn new(state: &AppState, checks: &OutputChecks) -> Self {
        let scanner = checks
            .shield_on()
            .then(|| StreamScanner::new(state.shield, shield_options(checks.policy(), None)));
        Self { scanner }
    }

    /// A reply given whole: scanned in one go when it is complete.
    pub fn whole() -> Self {
        Self { scanner: None }
    }

    /// Scans a new chunk of the reply (already pushed to `checks`) and reports what the
    /// shield judged. Whole lines make the shield work; a chunk without a line break only
    /// appends. A scan past the reply's shield budget is a shield failure.
    pub async fn scan(
        &mut self,
        state: &AppState,
        checks: &mut OutputChecks,
        chunk: &str,
    ) -> Result<(), ApiError> {
        let Some(mut scanner) = self.scanner.take() else {
            return Ok(());
        };
        let t = Instant::now();
        let scanned = if chunk.contains('\n') {
            let chunk = chunk.to_string();
            off_runtime(state, checks.shield_time_left(), move || {
                let findings = scanner.push(&chunk).map_err(|e| e.to_string())?;
                Ok((scanner, findings))
            })
            .await
        } else {
            match scanner.push(chunk) {
                Ok(findings) => Ok((scanner, findings)),
                Err(e) => Err(e.to_string()),
            }
        };
        match scanned {
            Ok((scanner, findings)) => {
                checks.shield_progress(scanner.unscanned_from(), findings, t.elapsed());
                self.scanner = Some(scanner);
                Ok(())
            }
            Err(why) => shield_failed(state, checks, why),
        }
    }

    /// Ends the shield's stream (an unclosed block, a whole-code reply); a reply given
    /// whole is scanned in one go.
    async fn finish(self, state: &AppState, checks: &mut OutputChecks) -> Result<(), ApiError> {
        let t = Instant::now();
        let budget = checks.shield_time_left();
        let scanned = match self.scanner {
            Some(scanner) => {
                off_runtime(state, budget, move || {
                    scanner.finish().map_err(|e| e.to_string())
                })
                .await
            }
            None if checks.shield_on() => {
                let (shield, text, options) = (
                    state.shield,
                    checks.text().to_string(),
                    shield_options(checks.policy(), None),
                );
                off_runtime(state, budget, move || {
                    shield.scan(&text, &options).map_err(|e| e.to_string())
                })
                .await
            }
            None => return Ok(()),
        };
        match scanned {
            Ok(report) => {
                checks.shield_finished(report.findings, t.elapsed());
                Ok(())
            }
            Err(why) => shield_failed(state, checks, why),
        }
    }
}

/// A reply's tool calls: tools the policy does not allow, and the shield on the arguments
/// that are code (all string arguments of `tools.code` tools; others that look like
/// code), under the reply's shield budget.
async fn check_tool_calls(
    state: &AppState,
    checks: &mut OutputChecks,
    tools: &ToolCalls,
) -> Result<(), ApiError> {
    let policy = checks.policy().clone();
    let calls = tools.calls();
    let refused: Vec<String> = calls
        .iter()
        .filter(|c| !policy.tools.allows(&c.name))
        .map(|c| c.name.clone())
        .collect();
    let mut findings = Vec::new();
    if checks.shield_on() {
        let code: Vec<String> = calls
            .iter()
            .flat_map(|c| c.code_arguments(&policy.tools.code))
            .collect();
        if !code.is_empty() {
            let (shield, options) = (state.shield, shield_options(&policy, None));
            let scanned = off_runtime(state, checks.shield_time_left(), move || {
                let mut all = Vec::new();
                for text in &code {
                    all.extend(
                        shield
                            .scan(text, &options)
                            .map_err(|e| e.to_string())?
                            .findings,
                    );
                }
                Ok(all)
            })
            .await;
            match scanned {
                Ok(found) => findings = found,
                Err(why) => shield_failed(state, checks, why)?,
            }
        }
    }
    checks.tools_checked(findings, refused);
    Ok(())
}

/// Runs shield work on the blocking pool within `budget`; why it failed otherwise.
async fn off_runtime<T: Send + 'static>(
    state: &AppState,
    budget: Duration,
    job: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let t = Instant::now();
    let result = actix_web::rt::time::timeout(budget, web::block(job)).await;
    observe_stage(state, "shield", t);
    match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no result within {} ms", budget.as_millis())),
    }
}

fn shield_failed(state: &AppState, checks: &mut OutputChecks, why: String) -> Result<(), ApiError> {
    on_check_error(state, checks.policy(), "shield", "the code scan", why)?;
    checks.shield_failed_open();
    Ok(())
}

/// The conversation the output guard judges: the request's turns and the reply so far.
fn with_reply(messages: &[ChatMessage], reply: &str) -> Vec<ChatMessage> {
    let mut convo = messages.to_vec();
    convo.push(ChatMessage::new("assistant", reply));
    convo
}

/// Scores the reply so far with the guard when the machine asks for it.
pub(super) async fn rescore_if_due(
    state: &AppState,
    checks: &mut OutputChecks,
    messages: &[ChatMessage],
) -> Result<(), ApiError> {
    if !checks.rescore_due() {
        return Ok(());
    }
    let pieces = checks.pieces();
    let convo = with_reply(messages, checks.text());
    let verdict = guard_stage(state, checks.policy(), Stage::Output, convo).await?;
    checks.prefix_scored(pieces, verdict.as_ref());
    Ok(())
}

/// The reply is complete: the shield finishes, then (unless it blocked) the guard judges
/// the whole reply. Afterwards the machine is settled.
pub(super) async fn settle(
    state: &AppState,
    checks: &mut OutputChecks,
    shield: StreamShield,
    messages: &[ChatMessage],
    tools: &ToolCalls,
) -> Result<(), ApiError> {
    checks.complete();
    shield.finish(state, checks).await?;
    if !tools.is_empty() && checks.blocked().is_none() {
        check_tool_calls(state, checks, tools).await?;
    }
    if checks.final_score_due() {
        // The guard judges the calls as the agent's words, beside its text.
        let mut reply = checks.text().to_string();
        if !tools.is_empty() {
            if !reply.is_empty() {
                reply.push('\n');
            }
            reply.push_str(&tools.checked_text());
        }
        let convo = with_reply(messages, &reply);
        let verdict = guard_stage(state, checks.policy(), Stage::Output, convo).await?;
        checks.final_scored(verdict);
    }
    Ok(())
}
