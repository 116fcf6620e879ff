//! The embedded default chat model, imported from the GGUF that scripts/setup.sh fetches,
//! against Hugging Face transformers on the same file (tests/fixtures/smollm2-reference.json,
//! recorded by scripts/gguf/reference_smollm2.py).

use std::path::PathBuf;

use safegate_engine::{ChatMessage, Engine, EngineOptions, GenerateRequest, GenerationEvent};
use safegate_gguf::{import, ImportOptions};

#[derive(serde::Deserialize)]
struct Reference {
    gguf: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    messages: Vec<ChatMessage>,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    text: String,
    logits: Logits,
}

#[derive(serde::Deserialize)]
struct Logits {
    indices: Vec<usize>,
    values: Vec<f32>,
}

#[test]
fn smollm2_imports_and_matches_transformers_token_for_token() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/smollm2-reference.json")).unwrap(),
    )
    .unwrap();
    let gguf = root.join(".cache/smollm2").join(&reference.gguf);
    assert!(
        gguf.exists(),
        "run scripts/setup.sh (it fetches {})",
        gguf.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2");
    import(&gguf, &out, &ImportOptions::default(), |_, _| {}).unwrap();

    safegate_engine::runtime::init(None).expect("ONNX Runtime (run scripts/setup.sh)");
    let opts = EngineOptions {
        device: safegate_engine::Device::Cpu,
        ..Default::default()
    };
    let engine = Engine::load(&out, &opts).unwrap();
    for case in &reference.cases {
        let ids = engine
            .tokenizer()
            .encode_chat(&case.messages, true)
            .unwrap();
        assert_eq!(ids, case.prompt_ids, "prompt of {:?}", case.messages);
        let logits = engine.score_blocking(ids.clone()).unwrap();
        for (i, v) in case.logits.indices.iter().zip(&case.logits.values) {
            assert!(
                (logits[*i] - v).abs() < 2e-3,
                "logit {i}: {} vs {v}",
                logits[*i]
            );
        }
        let mut stream = engine
            .generate(GenerateRequest {
                prompt_ids: ids,
                max_tokens: case.greedy_ids.len(),
                sampling: Default::default(),
                stop: Vec::new(),
                ignore_eos: false,
            })
            .unwrap();
        let (mut got, mut text) = (Vec::new(), String::new());
        while let Some(ev) = stream.blocking_next() {
            match ev {
                GenerationEvent::Token { id, text: t } => {
                    got.push(id);
                    text.push_str(&t);
                }
                GenerationEvent::Done(c) => {
                    text.push_str(&c.tail_text);
                    break;
                }
                GenerationEvent::Error(e) => panic!("{e}"),
            }
        }
        // transformers' ids include the end-of-turn token where it stopped; ours stop before it.
        let want: Vec<u32> = case
            .greedy_ids
            .iter()
            .copied()
            .filter(|&t| t != 2)
            .collect();
        assert_eq!(got, want, "greedy ids for {:?}", case.messages);
        assert_eq!(text.trim_end(), case.text.trim_end());
    }
    assert!(reference.cases[0].text.contains("Paris"));
}
