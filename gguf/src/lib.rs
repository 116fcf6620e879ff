//! GGUF model files (llama.cpp, Ollama) to model folders the engine loads: an ONNX Llama
//! decoder in the Optimum layout, `tokenizer.json` rebuilt from the GGUF vocabulary,
//! `tokenizer_config.json` with the chat template, and `config.json`.
//!
//! Pure Rust: no torch, no Python, no network.

pub mod import;
pub mod llama;
pub mod onnx;
pub mod quant;
pub mod reader;
pub mod tokenizer;

use std::path::PathBuf;

pub use import::{
    import, DecoderGraph, DecoderLayout, GraphKind, ImportOptions, ImportSummary, WeightFormat,
    GRAPH_VERSION,
};
pub use quant::GgmlType;
pub use reader::{GgufFile, TensorInfo, Value};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, std::io::Error),
    #[error("the GGUF file is truncated: {0}")]
    Truncated(String),
    #[error("invalid GGUF: {0}")]
    Invalid(String),
    #[error("tensor `{tensor}` has ggml type id {type_id}, which is unknown")]
    UnsupportedType { tensor: String, type_id: u32 },
    #[error("metadata `{key}`: {message}")]
    Metadata { key: String, message: String },
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{tensor}`: shape {found:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("{0}")]
    Unsupported(String),
}
