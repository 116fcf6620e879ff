//! The decision: (policy, stage, verdict, findings) -> decision. A pure function: no I/O, no
//! clock, no randomness, so a decision can be replayed from an audit record.

use std::collections::BTreeMap;

use safegate_shield::{Finding, Severity};
use serde::{Deserialize, Serialize};

use crate::schema::{Action, Policy, Stage};
pub use safegate_verdict::Verdict;

/// Why the decision is what it is; one entry per thing that fired or was set aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// An enabled category at or above its threshold.
    Category {
        code: String,
        name: Option<String>,
        score: f64,
        threshold: f64,
        action: Action,
    },
    /// P(unsafe) at or above the stage threshold with no category over its own threshold:
    /// the score that crossed is P(unsafe); the likeliest category (enabled, so its action
    /// applies) is named with its own score, which may be far below any threshold.
    Unsafe {
        p_unsafe: f64,
        threshold: f64,
        action: Action,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_category: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_category_score: Option<f64>,
    },
    /// A category the model reported but the policy disabled: not acted on.
    DisabledCategory { code: String, score: f64 },
    /// A code that is not in this policy's taxonomy: not acted on.
    UnknownCategory { code: String },
    /// A prompt attack: the classifier's P(attack) of the worst judged turn reached the
    /// `prompt_attack` stage's threshold.
    PromptAttack {
        score: f64,
        threshold: f64,
        action: Action,
    },
    /// A call of a tool the policy does not allow (`tools.allow` / `tools.deny`).
    ToolNotAllowed { name: String, action: Action },
    /// A shield finding that reached the block or warn severity.
    Finding {
        rule: String,
        cwe: String,
        severity: Severity,
        line: usize,
        action: Action,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub stage: Stage,
    pub action: Action,
    pub reasons: Vec<Reason>,
    /// What a blocked user is told (when `action` is Block).
    pub message: Option<String>,
    /// The security note to append to the response (shield warnings).
    pub note: Option<String>,
}

impl Decision {
    pub fn blocked(&self) -> bool {
        self.action == Action::Block
    }

    /// Adds a reason whose action may be stronger than the decision's: the stronger one
    /// wins (`Action`'s order: allow < log < flag < block), and a block says `message`.
    pub fn escalate(&mut self, reason: Reason, action: Action, message: &str) {
        self.reasons.push(reason);
        if action > self.action {
            self.action = action;
            if action == Action::Block {
                self.message = Some(message.to_string());
            }
        }
    }

    /// The input stage's prompt-attack check: `score` (the worst judged turn's P(attack);
    /// None: not judged) against the policy's `prompt_attack` stage.
    pub fn apply_prompt_attack(&mut self, policy: &crate::Policy, score: Option<f64>) {
        let pa = &policy.prompt_attack;
        if let Some(score) = score.filter(|s| pa.enabled && *s >= pa.threshold) {
            self.escalate(
                Reason::PromptAttack {
                    score,
                    threshold: pa.threshold,
                    action: pa.action,
                },
                pa.action,
                &pa.message,
            );
        }
    }
}

/// Decides what to do with one stage of a request.
///
/// Guard: an enabled category fires when its score is at or above its threshold (its own,
/// else the stage's); scores exactly at a threshold count. When P(unsafe) is at or above
/// the stage threshold and no category fired, the likeliest category decides: enabled, its
/// action applies; disabled, the content is allowed (the policy allows that category). With
/// no category information at all, the stage action applies. Codes outside the policy's
/// taxonomy are reported, never acted on. A NaN score counts as unsafe (fail closed).
///
/// Shield (output stage, and the input stage when the caller scans prompts): findings at or
/// above `block_severity` block; at or above `warn_severity` flag and add the note.
pub fn decide(
    policy: &Policy,
    stage: Stage,
    verdict: Option<&Verdict>,
    findings: &[Finding],
) -> Decision {
    let sp = policy.stage(stage);
    let mut reasons = Vec::new();
    let mut action = Action::Allow;
    if let Some(v) = verdict.filter(|_| sp.enabled) {
        let threshold_for = |code: &str| {
            sp.category_thresholds
                .get(code)
                .copied()
                .unwrap_or(sp.threshold)
        };
        let action_for = |code: &str| sp.category_actions.get(code).copied().unwrap_or(sp.action);
        // Categories with a score, plus decoded codes without one (scored as P(unsafe)).
        let mut named: BTreeMap<&str, f64> = v
            .category_scores
            .iter()
            .map(|(c, s)| (c.as_str(), *s))
            .collect();
        for code in &v.codes {
            named.entry(code.as_str()).or_insert(v.p_unsafe);
        }
        let mut known: Vec<(&str, f64)> = Vec::new();
        for (code, score) in named {
            if policy.knows_code(code) {
                known.push((code, if score.is_nan() { 1.0 } else { score }));
            } else {
                reasons.push(Reason::UnknownCategory {
                    code: code.to_string(),
                });
            }
        }
        let mut category_reason = |code: &str, score: f64, threshold: f64, action: &mut Action| {
            let a = action_for(code);
            *action = (*action).max(a);
            reasons.push(Reason::Category {
                code: code.to_string(),
                name: policy.taxonomy.category_name(code).map(str::to_string),
                score,
                threshold,
                action: a,
            });
        };
        // Enabled categories at or above their own threshold fire, whatever P(unsafe) is
        // (a strict per-category threshold can be below the stage's).
        let mut fired = false;
        for &(code, score) in &known {
            if policy.category_enabled(code) && score >= threshold_for(code) {
                category_reason(code, score, threshold_for(code), &mut action);
                fired = true;
            }
        }
        let unsafe_overall = v.p_unsafe.is_nan() || v.p_unsafe >= sp.threshold;
        if unsafe_overall && !fired {
            // Unsafe overall, no category over its threshold: the likeliest category decides;
            // with no category information at all, the stage action applies.
            let top = known.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
            match top {
                None => {
                    action = action.max(sp.action);
                    reasons.push(Reason::Unsafe {
                        p_unsafe: v.p_unsafe,
                        threshold: sp.threshold,
                        action: sp.action,
                        top_category: None,
                        name: None,
                        top_category_score: None,
                    });
                }
                Some((code, score)) if policy.category_enabled(code) => {
                    let a = action_for(code);
                    action = action.max(a);
                    reasons.push(Reason::Unsafe {
                        p_unsafe: v.p_unsafe,
                        threshold: sp.threshold,
                        action: a,
                        top_category: Some(code.to_string()),
                        name: policy.taxonomy.category_name(code).map(str::to_string),
                        top_category_score: Some(score),
                    });
                }
                Some(_) => {}
            }
        }
        for &(code, score) in &known {
            if !policy.category_enabled(code) && (score >= threshold_for(code) || unsafe_overall) {
                reasons.push(Reason::DisabledCategory {
                    code: code.to_string(),
                    score,
                });
            }
        }
    }
    let shield = &policy.shield;
    let mut warned = false;
    if shield.enabled {
        for f in findings {
            if shield.disabled_rules.iter().any(|r| r == &f.rule) {
                continue;
            }
            if !shield.languages.is_empty()
                && !f.language.is_some_and(|l| shield.languages.contains(&l))
            {
                continue;
            }
            let a = if shield.block_severity.reached_by(f.severity) {
                Action::Block
            } else if shield.warn_severity.reached_by(f.severity) {
                warned = true;
                Action::Flag
            } else {
                continue;
            };
            action = action.max(a);
            reasons.push(Reason::Finding {
                rule: f.rule.clone(),
                cwe: f.cwe.clone(),
                severity: f.severity,
                line: f.line,
                action: a,
            });
        }
    }
    Decision {
        stage,
        action,
        message: (action == Action::Block).then(|| sp.message.clone()),
        note: (warned && action != Action::Block).then(|| shield.warn_note.clone()),
        reasons,
    }
}
