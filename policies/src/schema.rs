//! The policy file, as security people write it (YAML). Every field has a default, so a
//! policy states only what differs; unknown fields are errors (a typo must not silently
//! weaken a policy).

use std::collections::BTreeMap;

use safegate_shield::{Language, Severity};
use serde::{Deserialize, Serialize};

use crate::taxonomy::Taxonomy;
pub use safegate_verdict::CustomCategory;

/// What happens when a check fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let it through; nothing recorded beyond the usual audit line.
    Allow,
    /// Let it through and record the reason in the audit log.
    Log,
    /// Let it through, marked in the response and the audit log.
    Flag,
    /// Refuse it.
    Block,
}

impl Action {
    /// The name used in policy files, metric labels and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Log => "log",
            Action::Flag => "flag",
            Action::Block => "block",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// A guard or shield error or timeout blocks the request (the default).
    FailClosed,
    /// ... lets it through, counted and audited.
    FailOpen,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::FailClosed => "fail_closed",
            OnError::FailOpen => "fail_open",
        }
    }
}

/// A severity threshold for the shield, or `none` to never trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeverityLevel {
    None,
    Advice,
    Warning,
    Error,
}

impl SeverityLevel {
    /// Whether a finding of `severity` reaches this level.
    pub fn reached_by(self, severity: Severity) -> bool {
        let level = match self {
            SeverityLevel::None => return false,
            SeverityLevel::Advice => Severity::Advice,
            SeverityLevel::Warning => Severity::Warning,
            SeverityLevel::Error => Severity::Error,
        };
        severity >= level
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategorySetting {
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Settings of one stage (the prompt going in, or the response going out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagePolicy {
    /// Run the guard at this stage.
    pub enabled: bool,
    /// P(unsafe) at or above which the stage counts as unsafe.
    pub threshold: f64,
    /// Per-category thresholds (category code -> threshold); others use `threshold`.
    pub category_thresholds: BTreeMap<String, f64>,
    /// Action when unsafe.
    pub action: Action,
    /// Per-category actions (category code -> action); others use `action`.
    pub category_actions: BTreeMap<String, Action>,
    /// What a blocked user is told.
    pub message: String,
    /// Guard time budget for this stage.
    pub timeout_ms: u64,
    /// Input stage only: start generating while the guard judges the prompt (lower
    /// latency); the generation is cancelled, unseen, if the guard blocks.
    pub overlap_generation: bool,
}

impl Default for StagePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.5,
            category_thresholds: BTreeMap::new(),
            action: Action::Block,
            category_actions: BTreeMap::new(),
            message: "This content was blocked by the safety policy.".into(),
            timeout_ms: 5_000,
            overlap_generation: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingPolicy {
    /// The output guard re-scores the accumulated response every this many tokens. Only
    /// text the guard has scored is sent to the client.
    pub rescore_every_tokens: u32,
    /// Of the scored text, the last this many tokens are still held until the next score,
    /// so that a phrase which turns unsafe a few tokens later is caught before any of it
    /// leaves.
    pub hold_back_tokens: u32,
    /// Scored text is released only while the guard's P(unsafe) for the reply so far is
    /// below this (stricter than the output stage's block threshold: a reply whose score
    /// is climbing toward a block is held, not streamed until it crosses). Unset: half of
    /// `output.threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_threshold: Option<f64>,
}

impl Default for StreamingPolicy {
    fn default() -> Self {
        Self {
            rescore_every_tokens: 16,
            hold_back_tokens: 16,
            release_threshold: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShieldPolicy {
    pub enabled: bool,
    /// Languages scanned (empty: all).
    pub languages: Vec<Language>,
    /// Findings at or above this severity block the response.
    pub block_severity: SeverityLevel,
    /// Findings at or above this severity (and below `block_severity`) add a security note.
    pub warn_severity: SeverityLevel,
    /// Rule ids not to run.
    pub disabled_rules: Vec<String>,
    pub timeout_ms: u64,
    /// The note appended to a response with warnings.
    pub warn_note: String,
}

impl Default for ShieldPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            languages: Vec::new(),
            block_severity: SeverityLevel::Error,
            warn_severity: SeverityLevel::Warning,
            disabled_rules: Vec::new(),
            timeout_ms: 2_000,
            warn_note: "Security note: the code above contains patterns that are often insecure; review it before use."
                .into(),
        }
    }
}

/// One policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    #[serde(default = "default_taxonomy")]
    pub taxonomy: Taxonomy,
    /// Per-category settings (code -> setting); categories not listed are enabled.
    #[serde(default)]
    pub categories: BTreeMap<String, CategorySetting>,
    /// Categories of your own, rendered into the guard prompt after the built-in ones.
    #[serde(default)]
    pub custom_categories: Vec<CustomCategory>,
    #[serde(default)]
    pub input: StagePolicy,
    #[serde(default)]
    pub output: StagePolicy,
    #[serde(default)]
    pub streaming: StreamingPolicy,
    #[serde(default)]
    pub shield: ShieldPolicy,
    /// Tool calls a model makes (upstream models with `tools`).
    #[serde(default)]
    pub tools: ToolsPolicy,
    /// Jailbreaks and injected instructions in what the model will read.
    #[serde(default)]
    pub prompt_attack: PromptAttackPolicy,
    #[serde(default = "fail_closed")]
    pub on_error: OnError,
}

/// The prompt-attack stage: a classifier's P(attack) of the turns it judges (Prompt Guard
/// with `serve --prompt-guard`, else the embedded guard's attack head; without either the
/// stage is skipped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptAttackPolicy {
    pub enabled: bool,
    /// P(attack) at or above which the action applies.
    pub threshold: f64,
    pub action: Action,
    /// The roles whose turns are judged: `user` (direct jailbreaks), `tool` (indirect
    /// injections in tool results), `system`, `developer`.
    pub judge: Vec<String>,
    /// What a blocked user is told.
    pub message: String,
}

impl Default for PromptAttackPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.5,
            action: Action::Block,
            judge: vec!["user".into(), "tool".into()],
            message: "This request looks like an attempt to override the assistant's instructions (a jailbreak or an injected instruction), so it was not sent to the model.".into(),
        }
    }
}

/// Which tools a model may call, and which take code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsPolicy {
    /// Tools that may be called (empty: every tool not denied).
    pub allow: Vec<String>,
    /// Tools that may never be called.
    pub deny: Vec<String>,
    /// Tools whose string arguments are code to run (e.g. `run_python`, `bash`): every
    /// string argument is scanned by the shield as code. Other tools' string arguments are
    /// scanned when they look like code (several lines, or shell syntax).
    pub code: Vec<String>,
    /// A call of a tool that is not allowed: `block` (the reply is refused with
    /// `content_filter`) or `flag` (it goes through, marked and audited).
    pub action: Action,
}

impl Default for ToolsPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            code: Vec::new(),
            action: Action::Block,
        }
    }
}

impl ToolsPolicy {
    /// Whether `name` may be called.
    pub fn allows(&self, name: &str) -> bool {
        !self.deny.iter().any(|d| d == name)
            && (self.allow.is_empty() || self.allow.iter().any(|a| a == name))
    }
}

fn default_taxonomy() -> Taxonomy {
    Taxonomy::LlamaGuard2
}

fn fail_closed() -> OnError {
    OnError::FailClosed
}

impl Policy {
    pub fn stage(&self, stage: Stage) -> &StagePolicy {
        match stage {
            Stage::Input => &self.input,
            Stage::Output => &self.output,
        }
    }

    /// P(unsafe) below which a stream's scored text may be released (see
    /// [`StreamingPolicy::release_threshold`]).
    pub fn release_threshold(&self) -> f64 {
        self.streaming
            .release_threshold
            .unwrap_or(self.output.threshold / 2.0)
    }

    /// Whether a category (built-in code, or `C<n>` for the n-th custom category) is enabled.
    pub fn category_enabled(&self, code: &str) -> bool {
        self.categories.get(code).is_none_or(|c| c.enabled)
    }

    /// Codes of custom categories as the guard numbers them: after the built-in ones.
    pub fn custom_codes(&self) -> Vec<String> {
        let first = self.taxonomy.categories().len() + 1;
        (0..self.custom_categories.len())
            .map(|i| format!("S{}", first + i))
            .collect()
    }

    /// Whether `code` names a category of this policy (built-in or custom).
    pub fn knows_code(&self, code: &str) -> bool {
        self.taxonomy.has_code(code) || self.custom_codes().iter().any(|c| c == code)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Input,
    Output,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Input => "input",
            Stage::Output => "output",
        }
    }
}

/// Which policy applies to which API key group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bindings {
    /// The policy for keys without a binding.
    pub default: String,
    /// Key group -> policy name.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
}
