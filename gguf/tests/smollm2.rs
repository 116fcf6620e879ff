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

/// The transformers reference, and the GGUF it was recorded on.
fn reference() -> (Reference, PathBuf) {
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
    (reference, gguf)
}

/// The GGUF imported with `options` into a temporary folder, loaded on the CPU.
fn import_and_load(gguf: &std::path::Path, options: &ImportOptions) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2");
    import(gguf, &out, options, |_, _| {}).unwrap();
    safegate_engine::runtime::init(None).expect("ONNX Runtime (run scripts/setup.sh)");
    let opts = EngineOptions {
        device: safegate_engine::Device::Cpu,
        ..Default::default()
    };
    let engine = Engine::load(&out, &opts).unwrap();
    (dir, engine)
}

#[test]
fn smollm2_imports_and_matches_transformers_token_for_token() {
    let (reference, gguf) = reference();
    let (_dir, engine) = import_and_load(&gguf, &ImportOptions::default());
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
                format: None,
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

/// The 4-bit import (`--weights int4`) against transformers on the same GGUF, not against
/// this project's own quantizer: how far its logits are from the reference, and whether
/// its first token is the reference's. Measured 2026-11-30: worst difference 3.5 over the
/// three cases, first token equal in 2 of 3 (a second rounding of Q4_1 and a 4-bit head;
/// docs/benchmarks.md); this guards it from getting worse.
#[test]
fn smollm2_int4_stays_close_to_transformers() {
    use safegate_gguf::WeightFormat;
    let (reference, gguf) = reference();
    let options = ImportOptions {
        format: WeightFormat::Int4 { accuracy_level: 4 },
        ..Default::default()
    };
    let (_dir, engine) = import_and_load(&gguf, &options);
    let mut worst = 0f32;
    let mut first_tokens_equal = 0;
    for case in &reference.cases {
        let logits = engine.score_blocking(case.prompt_ids.clone()).unwrap();
        for (i, v) in case.logits.indices.iter().zip(&case.logits.values) {
            worst = worst.max((logits[*i] - v).abs());
        }
        let top = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        first_tokens_equal += usize::from(top == case.greedy_ids[0]);
    }
    eprintln!(
        "int4: worst logit difference {worst}, first token equal in {first_tokens_equal} of {}",
        reference.cases.len()
    );
    assert!(
        worst < 4.0,
        "int4 logits drifted from transformers: {worst}"
    );
    assert!(
        first_tokens_equal >= 2,
        "int4 agrees on the first token in only {first_tokens_equal} of {} cases",
        reference.cases.len()
    );
}
