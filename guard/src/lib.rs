//! safegate's guard: Llama Guard 2 and 3 around every request and response.
//!
//! - [`taxonomy`]: category names and descriptions (data files);
//! - [`prompt`]: byte-exact Llama Guard prompts, injection-proof tokenization;
//! - [`classify`]: scores from a local model (P(unsafe), per-category scores).

pub mod classify;
pub mod prompt;
pub mod taxonomy;

pub use classify::{Classification, LocalGuard};
pub use prompt::{build_prompt, AgentType, CategorySelection, GuardPrompt};

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{0}")]
    Input(String),
    #[error("guard model: {0}")]
    Model(String),
    #[error(transparent)]
    Engine(#[from] safegate_engine::EngineError),
}
