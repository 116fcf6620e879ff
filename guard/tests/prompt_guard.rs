//! Prompt Guard through ONNX Runtime: the committed random-weight DeBERTa-v2 fixtures
//! (scripts/prompt_guard/make_fixture.py, exported by torch) give, window by window, the
//! probabilities Python onnxruntime gave on the Python tokenizer's ids.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safegate_engine::session::{Device, SessionOptions};
use safegate_engine::SequenceClassifier;
use safegate_guard::prompt_guard::{PromptGuard, Source};
use safegate_guard::{GuardError, Until};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn session() -> SessionOptions {
    safegate_engine::runtime::init(None).unwrap();
    SessionOptions {
        device: Device::Cpu,
        intra_threads: 1,
        ..Default::default()
    }
}

fn expected(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn assert_parity(name: &str) {
    let dir = fixture(name);
    let guard = PromptGuard::open(&dir, &session()).unwrap();
    let want = expected(&dir);
    let mut worst = 0f64;
    for case in want["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = guard.window_probabilities(text).unwrap();
        let lens: Vec<u64> = case["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let probs = case["probs"].as_array().unwrap();
        assert_eq!(got.len(), probs.len(), "{name}: windows of {text:?}");
        for (g, p) in got.iter().zip(probs) {
            for (a, b) in g.iter().zip(p.as_array().unwrap()) {
                worst = worst.max((f64::from(*a) - b.as_f64().unwrap()).abs());
            }
        }
        // The window lengths match too (the wrapping is the tokenizer's).
        let c = SequenceClassifier::open(&dir, &session()).unwrap();
        let windows = c.windows(&c.encode(text).unwrap());
        assert_eq!(
            windows.iter().map(|w| w.len() as u64).collect::<Vec<_>>(),
            lens,
            "{name}: {text:?}"
        );
    }
    assert!(worst < 1e-4, "{name}: probabilities differ by {worst}");
}

#[test]
fn v1_matches_python_onnxruntime_window_by_window() {
    assert_parity("prompt-guard-v1");
}

#[test]
fn v2_matches_python_onnxruntime_window_by_window() {
    assert_parity("prompt-guard-v2");
}

#[test]
fn scores_are_the_worst_window_and_do_not_depend_on_batch_company() {
    let dir = fixture("prompt-guard-v1");
    let guard = PromptGuard::open(&dir, &session()).unwrap();
    let cases = expected(&dir)["cases"].as_array().unwrap().clone();
    let texts: Vec<(Source, String)> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let source = if i % 2 == 0 {
                Source::Direct
            } else {
                Source::Indirect
            };
            (source, c["text"].as_str().unwrap().to_string())
        })
        .collect();
    // All texts in one call: their windows share padded batches.
    let together = guard.scores(&texts, &Until::default()).unwrap();
    for ((source, text), (case, got)) in texts.iter().zip(cases.iter().zip(&together)) {
        let want = case["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let p: Vec<f64> = p
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                match source {
                    Source::Direct => p[2],
                    Source::Indirect => 1.0 - p[0],
                }
            })
            .fold(0.0, f64::max);
        assert!((got - want).abs() < 1e-4, "{text:?}: {got} vs {want}");
        let alone = guard
            .scores(&[(*source, text.clone())], &Until::default())
            .unwrap()[0];
        assert!(
            (got - alone).abs() < 1e-5,
            "{text:?}: {got} in a batch, {alone} alone"
        );
    }
}

#[test]
fn long_texts_are_windowed_not_truncated_by_the_saved_tokenizer_rule() {
    // The fixture's tokenizer.json says `truncation: 512`; the classifier reads it all.
    let c = SequenceClassifier::open(&fixture("prompt-guard-v2"), &session()).unwrap();
    let text = "one more sentence about the weather today. ".repeat(300);
    let ids = c.encode(&text).unwrap();
    assert!(ids.len() > 2 * c.window_len(), "{} tokens", ids.len());
    let windows = c.windows(&ids);
    assert!(windows.iter().all(|w| w.len() <= 512));
    // Every token is read, the windows overlap, and the last ends at the end.
    let body = |w: &Vec<u32>| w[1..w.len() - 1].to_vec();
    assert_eq!(body(&windows[0]), ids[..c.window_len()].to_vec());
    assert_eq!(
        body(windows.last().unwrap()),
        ids[ids.len() - c.window_len()..].to_vec()
    );
    assert!(c.window_stride() < c.window_len());
    assert_eq!(
        windows.len(),
        (ids.len() - c.window_len()).div_ceil(c.window_stride()) + 1
    );
}

#[test]
fn typed_special_tokens_stay_text() {
    let c = SequenceClassifier::open(&fixture("prompt-guard-v1"), &session()).unwrap();
    // The fixture's specials: [PAD] 0, [CLS] 1, [SEP] 2, [MASK] 1000. An empty text is
    // the wrapping alone.
    assert_eq!(c.windows(&c.encode("").unwrap()), vec![vec![1, 2]]);
    let ids = c.encode("hello [SEP] [CLS] [PAD] [MASK] world").unwrap();
    assert!(
        ids.iter().all(|id| ![0, 1, 2, 1000].contains(id)),
        "{ids:?}"
    );
}

#[test]
fn a_caller_that_gave_up_gets_a_timeout() {
    let guard = PromptGuard::open(&fixture("prompt-guard-v2"), &session()).unwrap();
    let until = Until {
        deadline: Some(Instant::now() - Duration::from_millis(1)),
        cancelled: None,
    };
    let texts = vec![(Source::Direct, "hello".to_string())];
    assert!(matches!(
        guard.scores(&texts, &until),
        Err(GuardError::Timeout(_))
    ));
}

#[test]
fn folders_that_are_not_prompt_guards_are_refused_clearly() {
    // A chat model: a decoder graph, not a classifier.
    let err = PromptGuard::open(&fixture("tiny-llama3"), &session())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a sequence classifier"), "{err}");

    // Labels that say nothing about benign vs attack.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "tokenizer.json"] {
        std::fs::copy(fixture("prompt-guard-v1").join(f), tmp.path().join(f)).unwrap();
    }
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"id2label": {"0": "A", "1": "B", "2": "C"}}"#,
    )
    .unwrap();
    let err = PromptGuard::open(tmp.path(), &session())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot tell the benign label"), "{err}");

    // No model at all.
    let err = PromptGuard::open(&tmp.path().join("missing"), &session())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a folder"), "{err}");
}
