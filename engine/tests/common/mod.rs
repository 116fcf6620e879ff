#![allow(dead_code)]

use std::path::PathBuf;

pub use safegate_engine::session::IoBindingMode;
use safegate_engine::{
    ChatMessage, Engine, EngineOptions, FinishReason, GenerateRequest, GenerationEvent,
    SamplingParams,
};
use serde::Deserialize;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub fn init_runtime() {
    safegate_engine::runtime::init(None).expect("ONNX Runtime (run scripts/setup.sh)");
}

pub fn engine(name: &str) -> Engine {
    engine_with(name, IoBindingMode::Off)
}

/// Both ways a decoder session can meet ONNX Runtime: plain runs, and I/O binding (the CUDA
/// default, run here on the CPU provider to prove it gives the same tokens and logits).
pub const IO_MODES: [IoBindingMode; 2] = [IoBindingMode::Off, IoBindingMode::On];

pub fn engine_with(name: &str, io_binding: IoBindingMode) -> Engine {
    init_runtime();
    let opts = EngineOptions {
        device: safegate_engine::Device::Cpu,
        io_binding,
        intra_threads: 1,
        // Batched scoring on, as on CUDA (the CPU default scores one row at a time).
        score_batch: 8,
        ..Default::default()
    };
    Engine::load(&fixture(name), &opts).expect("fixture loads")
}

#[derive(Deserialize)]
pub struct Expected {
    pub max_new_tokens: usize,
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    pub messages: Vec<ChatMessage>,
    pub prompt_text: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub logits: Vec<LogitSample>,
}

#[derive(Deserialize)]
pub struct LogitSample {
    pub indices: Vec<usize>,
    pub values: Vec<f32>,
}

pub fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs a request to its completion: (token ids, text, finish reason).
pub fn run(engine: &Engine, req: GenerateRequest) -> (Vec<u32>, String, FinishReason) {
    let mut stream = engine.generate(req).unwrap();
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(ev) = stream.blocking_next() {
        match ev {
            GenerationEvent::Token { id, text: t } => {
                ids.push(id);
                text.push_str(&t);
            }
            GenerationEvent::Done(c) => {
                text.push_str(&c.tail_text);
                return (ids, text, c.finish_reason);
            }
            GenerationEvent::Error(e) => panic!("{e}"),
        }
    }
    panic!("stream ended without Done");
}

/// A greedy request.
pub fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: false,
        format: None,
    }
}
