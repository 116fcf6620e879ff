//! safegate's guard: Llama Guard 2 and 3 around every request and response.
//!
//! - [`taxonomy`]: category names and descriptions (data files);
//! - [`prompt`]: byte-exact Llama Guard prompts, injection-proof tokenization;
//! - [`classify`]: scores from a local model (P(unsafe), per-category scores);
//! - [`remote`]: the same scores from an OpenAI-compatible server (vLLM);
//! - [`prompt_guard`]: Prompt Guard (v1, v2) as the prompt-attack stage's backend;
//! - [`embedded`], [`train`]: the small classifier that ships with safegate, and how it is
//!   trained and measured.

pub mod classify;
pub mod embedded;
pub mod measure;
pub mod moderation;
pub mod normalize;
pub mod prompt;
pub mod prompt_guard;
pub mod remote;
pub mod taxonomy;
#[cfg(feature = "train")]
pub mod train;

pub use classify::{Classification, LocalGuard};
pub use embedded::{is_embedded_guard, EmbeddedGuard, EmbeddedOptions};
pub use prompt::{build_prompt, AgentType, CategorySelection, GuardPrompt};
pub use prompt_guard::PromptGuard;
pub use remote::{RemoteConfig, RemoteGuard};

/// A safety classifier: the local engine or a remote server, same verdict shape.
/// When a caller stops waiting for a verdict: at its deadline, or as soon as it says so
/// (its client went away). A backend that queues work drops what such a caller would get.
#[derive(Debug, Clone, Default)]
pub struct Until {
    pub deadline: Option<std::time::Instant>,
    pub cancelled: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Until {
    /// Whether the caller has stopped waiting by `now`.
    pub fn given_up(&self, now: std::time::Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
            || self
                .cancelled
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

pub trait SafetyClassifier: Send + Sync {
    /// Scores a prompt (blocking: call it from a worker thread, not an async task).
    fn classify(&self, prompt: &GuardPrompt) -> Result<Classification, GuardError>;
    /// [`Self::classify`] for a caller that stops waiting at `deadline`: a backend that can
    /// drop queued work does (so one caller's long input does not keep the guard busy for
    /// nobody), and answers `Timeout`. The default waits as `classify` does.
    fn classify_until(
        &self,
        prompt: &GuardPrompt,
        deadline: std::time::Instant,
    ) -> Result<Classification, GuardError> {
        let _ = deadline;
        self.classify(prompt)
    }
    /// [`Self::classify_until`] for a caller that may also go away before its deadline
    /// (`until.cancelled`). The default honours the deadline only.
    fn classify_for(
        &self,
        prompt: &GuardPrompt,
        until: &Until,
    ) -> Result<Classification, GuardError> {
        match until.deadline {
            Some(d) => self.classify_until(prompt, d),
            None => self.classify(prompt),
        }
    }
    /// `local`, `remote` or `embedded`, for logs and `/readyz`.
    fn backend(&self) -> &'static str;
    /// The guard model's name.
    fn model_name(&self) -> String;
    /// Classifications waiting (local backend; 0 when unknown).
    fn queue_depth(&self) -> usize {
        0
    }
    /// Model runs so far and the sequences they carried (local and embedded backends):
    /// more sequences than runs means concurrent classifications were batched.
    fn batch_stats(&self) -> Option<safegate_engine::ScoreStats> {
        None
    }
    /// Whether [`Self::prompt_attack_scores`] can give scores (known without running
    /// anything, so that a guard without such a classifier costs the stage nothing, not
    /// even a trip to a blocking thread that a tight time budget could count as a failure).
    fn detects_prompt_attacks(&self) -> bool {
        false
    }
    /// P(prompt attack: a jailbreak or an injected instruction) of each text, for a
    /// backend that has a prompt-attack classifier (the embedded guard with an attack
    /// head); `None` otherwise.
    fn prompt_attack_scores(
        &self,
        texts: &[String],
        until: &Until,
    ) -> Result<Option<Vec<f64>>, GuardError> {
        let _ = (texts, until);
        Ok(None)
    }
}

impl SafetyClassifier for LocalGuard {
    fn classify(&self, prompt: &GuardPrompt) -> Result<Classification, GuardError> {
        self.classify_blocking(prompt)
    }
    fn backend(&self) -> &'static str {
        "local"
    }
    fn model_name(&self) -> String {
        self.engine().info().name.clone()
    }
    fn queue_depth(&self) -> usize {
        self.engine().queue_depth()
    }
    fn batch_stats(&self) -> Option<safegate_engine::ScoreStats> {
        Some(self.engine().score_stats())
    }
}

impl SafetyClassifier for EmbeddedGuard {
    fn classify(&self, prompt: &GuardPrompt) -> Result<Classification, GuardError> {
        self.classify_blocking(prompt)
    }
    fn classify_until(
        &self,
        prompt: &GuardPrompt,
        deadline: std::time::Instant,
    ) -> Result<Classification, GuardError> {
        EmbeddedGuard::classify_until(self, prompt, Some(deadline))
    }
    fn classify_for(
        &self,
        prompt: &GuardPrompt,
        until: &Until,
    ) -> Result<Classification, GuardError> {
        EmbeddedGuard::classify_for(self, prompt, until)
    }
    fn backend(&self) -> &'static str {
        "embedded"
    }
    fn model_name(&self) -> String {
        self.name().to_string()
    }
    fn queue_depth(&self) -> usize {
        EmbeddedGuard::queue_depth(self)
    }
    fn batch_stats(&self) -> Option<safegate_engine::ScoreStats> {
        Some(EmbeddedGuard::batch_stats(self))
    }
    fn detects_prompt_attacks(&self) -> bool {
        self.head().attack.is_some()
    }
    fn prompt_attack_scores(
        &self,
        texts: &[String],
        until: &Until,
    ) -> Result<Option<Vec<f64>>, GuardError> {
        self.attack_scores(texts, until)
    }
}

impl SafetyClassifier for RemoteGuard {
    fn classify(&self, prompt: &GuardPrompt) -> Result<Classification, GuardError> {
        self.classify_blocking(prompt)
    }
    fn backend(&self) -> &'static str {
        "remote"
    }
    fn model_name(&self) -> String {
        self.model().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{0}")]
    Input(String),
    #[error("guard model: {0}")]
    Model(String),
    /// The remote guard answered with an error or something unreadable.
    #[error("remote guard: {0}")]
    Remote(String),
    /// The guard did not answer in time (a remote server, or the caller's deadline).
    #[error("guard timed out: {0}")]
    Timeout(String),
    /// The remote guard could not be reached.
    #[error("remote guard unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Engine(#[from] safegate_engine::EngineError),
}
