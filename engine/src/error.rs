use std::path::PathBuf;

/// Everything the engine can fail with. The gateway maps these onto HTTP errors in one place.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    RuntimeNotFound(String),
    #[error("could not load ONNX Runtime from {path}: {message}")]
    RuntimeLoad { path: PathBuf, message: String },
    #[error("model folder {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("model folder {path}: unsupported ONNX layout: {message}")]
    UnsupportedLayout { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("prompt is {prompt_tokens} tokens; with max_tokens {max_tokens} it exceeds the model's context of {context} tokens")]
    ContextOverflow {
        prompt_tokens: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("execution provider: {0}")]
    ExecutionProvider(String),
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("the engine's queue is full")]
    QueueFull,
    #[error("the engine has stopped")]
    Stopped,
}

impl From<ort::Error> for EngineError {
    fn from(e: ort::Error) -> Self {
        EngineError::Ort(e.to_string())
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
