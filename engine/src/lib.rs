//! safegate's inference engine: Llama-family chat models in ONNX (Optimum or
//! onnxruntime-genai layout) through ONNX Runtime, on CPU or CUDA.
//!
//! - [`runtime`]: finding and loading `libonnxruntime` at run time;
//! - [`model`]: model folders, configs and ONNX layouts;
//! - [`chat`]: tokenizer and chat template (user text never becomes special tokens);
//! - [`session`]: one ONNX Runtime session and its KV-cache step;
//! - [`sampling`], [`text`]: pure next-token choice, detokenization and stop strings;
//! - [`encoder`]: pooled hidden states of an encoder graph (guard features);
//! - [`classifier`]: sequence classifiers (Prompt Guard) over windows of long texts;
//! - [`engine`]: worker threads that own sessions, fed by a bounded queue.

pub mod chat;
pub mod classifier;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod model;
pub mod runtime;
pub mod sampling;
pub mod session;
pub mod text;

pub use chat::{ChatMessage, ChatTokenizer};
pub use classifier::SequenceClassifier;
pub use encoder::{Encoder, Pooling};
pub use engine::{
    BatchCounter, Completion, Engine, EngineOptions, FinishReason, GenerateRequest,
    GenerationEvent, ScoreStats, TokenStream, Usage,
};
pub use error::{EngineError, Result};
pub use model::{Layout, ModelConfig};
pub use sampling::SamplingParams;
pub use session::{Device, Provider};
