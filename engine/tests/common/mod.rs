#![allow(dead_code)]

use std::path::PathBuf;

use safegate_engine::{ChatMessage, Engine, EngineOptions};
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
    init_runtime();
    let opts = EngineOptions {
        device: safegate_engine::Device::Cpu,
        intra_threads: 1,
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
