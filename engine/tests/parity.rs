//! The Rust engine against the plain Python onnxruntime loop (scripts/fixtures/reference.py),
//! whose prompt ids, greedy ids and first-step logits are recorded in expected.json.

mod common;

use common::*;
use safegate_engine::model::{ModelConfig, ModelFiles};
use safegate_engine::session::{DecoderSession, SessionOptions};
use safegate_engine::{GenerateRequest, GenerationEvent, SamplingParams};

const FIXTURES: &[&str] = &["tiny-llama3", "tiny-chatml-genai"];

/// Whether a fixture's session keeps each layer's KV cache in one shared past/present
/// buffer: bound sessions of the GroupQueryAttention graph (the genai fixture) do.
fn shares_kv(name: &str, mode: IoBindingMode) -> bool {
    mode == IoBindingMode::On && name == "tiny-chatml-genai"
}

fn greedy(
    engine: &safegate_engine::Engine,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> (Vec<u32>, String) {
    let (ids, text, _) = run(engine, request(prompt, max_tokens));
    (ids, text)
}

/// The largest absolute difference between two logit vectors.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// A fixture's decoder session on the CPU provider, one thread, plain or bound.
fn cpu_session(name: &str, io_binding: IoBindingMode) -> (DecoderSession, ModelConfig) {
    let dir = fixture(name);
    let files = ModelFiles::locate(&dir).unwrap();
    let config = ModelConfig::load(&dir).unwrap();
    let session = DecoderSession::open(
        &dir,
        &files.onnx,
        &config,
        &SessionOptions {
            device: safegate_engine::Device::Cpu,
            intra_threads: 1,
            io_binding,
            ..Default::default()
        },
    )
    .unwrap();
    (session, config)
}

#[test]
fn prompt_ids_match_the_python_template_and_tokenizer() {
    for name in FIXTURES {
        let engine = engine(name);
        for case in expected(name).cases {
            let ids = engine
                .tokenizer()
                .encode_chat(&case.messages, true)
                .unwrap();
            assert_eq!(ids, case.prompt_ids, "{name}: {:?}", case.messages);
            let text = engine
                .tokenizer()
                .render_chat(&case.messages, true)
                .unwrap();
            assert_eq!(text, case.prompt_text, "{name}");
        }
    }
}

#[test]
fn greedy_tokens_match_the_python_loop() {
    for (name, mode) in FIXTURES
        .iter()
        .flat_map(|n| IO_MODES.iter().map(move |m| (n, *m)))
    {
        let engine = engine_with(name, mode);
        assert_eq!(engine.info().io_bound, mode == IoBindingMode::On);
        assert_eq!(
            engine.info().kv_shared,
            shares_kv(name, mode),
            "{name} {mode:?}"
        );
        let exp = expected(name);
        for case in &exp.cases {
            let (ids, _) = greedy(&engine, case.prompt_ids.clone(), exp.max_new_tokens);
            // The reference records the EOS token it stopped on; the engine does not emit it.
            let want: Vec<u32> = case
                .greedy_ids
                .iter()
                .copied()
                .filter(|id| !engine.info().config.eos_token_ids.contains(id))
                .collect();
            assert_eq!(ids, want, "{name} {mode:?}");
        }
    }
}

#[test]
fn kv_cache_step_logits_match_within_1e_4() {
    init_runtime();
    for (name, mode) in FIXTURES
        .iter()
        .flat_map(|n| IO_MODES.iter().map(move |m| (n, *m)))
    {
        let (mut session, config) = cpu_session(name, mode);
        assert_eq!(session.io_bound(), mode == IoBindingMode::On);
        assert_eq!(
            session.shares_kv(),
            shares_kv(name, mode),
            "{name} {mode:?}"
        );
        for case in expected(name).cases {
            // Room for exactly the prompt and the steps: a shared buffer is filled to the end.
            let steps = case.logits.len();
            let mut cache = session
                .cache_for(case.prompt_ids.len() + steps - 1)
                .unwrap();
            assert_eq!(
                cache.capacity().is_some(),
                shares_kv(name, mode),
                "{name} {mode:?}"
            );
            let mut input = case.prompt_ids.clone();
            let mut logits = Vec::new();
            for (step, sample) in case.logits.iter().enumerate() {
                cache = session.forward(&input, cache, &mut logits).unwrap();
                assert_eq!(logits.len(), config.vocab_size);
                for (&i, &want) in sample.indices.iter().zip(&sample.values) {
                    let got = logits[i];
                    assert!(
                        (got - want).abs() <= 1e-4,
                        "{name} {mode:?} step {step} logit {i}: {got} vs {want}"
                    );
                }
                input = vec![case.greedy_ids[step]];
            }
        }
    }
}

#[test]
fn score_is_the_first_step_logits() {
    let engine = engine("tiny-chatml-genai");
    let case = &expected("tiny-chatml-genai").cases[0];
    let logits = engine.score_blocking(case.prompt_ids.clone()).unwrap();
    for (&i, &want) in case.logits[0].indices.iter().zip(&case.logits[0].values) {
        assert!((logits[i] - want).abs() <= 1e-4);
    }
}

#[test]
fn interleaved_requests_get_the_same_tokens_as_alone() {
    let engine = engine("tiny-llama3");
    let exp = expected("tiny-llama3");
    let streams: Vec<_> = exp
        .cases
        .iter()
        .map(|c| {
            engine
                .generate(GenerateRequest {
                    prompt_ids: c.prompt_ids.clone(),
                    max_tokens: exp.max_new_tokens,
                    sampling: SamplingParams::default(),
                    stop: vec![],
                    ignore_eos: false,
                    format: None,
                })
                .unwrap()
        })
        .collect();
    // Read them round-robin so all are in flight together on one worker.
    let mut streams: Vec<_> = streams
        .into_iter()
        .map(|s| (s, Vec::new(), false))
        .collect();
    while streams.iter().any(|(_, _, done)| !done) {
        for (stream, ids, done) in streams.iter_mut().filter(|s| !s.2) {
            match stream.blocking_next() {
                Some(GenerationEvent::Token { id, .. }) => ids.push(id),
                Some(GenerationEvent::Done(_)) | None => *done = true,
                Some(GenerationEvent::Error(e)) => panic!("{e}"),
            }
        }
    }
    for ((_, ids, _), case) in streams.iter().zip(&exp.cases) {
        let want: Vec<u32> = case
            .greedy_ids
            .iter()
            .copied()
            .filter(|id| *id != 128009 && *id != 128001)
            .collect();
        assert_eq!(ids, &want);
    }
}

#[test]
fn batched_scoring_matches_the_python_loop_within_1e_4() {
    for (name, mode) in FIXTURES
        .iter()
        .flat_map(|n| IO_MODES.iter().map(move |m| (n, *m)))
    {
        let engine = engine_with(name, mode);
        let exp = expected(name);
        // Every case's prompt followed by its greedy tokens, all in one padded batch of rows
        // of different lengths: the logits at each step are the reference's.
        let rows: Vec<(Vec<u32>, Vec<u32>)> = exp
            .cases
            .iter()
            .map(|c| {
                (
                    c.prompt_ids.clone(),
                    c.greedy_ids[..c.logits.len() - 1].to_vec(),
                )
            })
            .collect();
        let lengths: std::collections::BTreeSet<usize> = rows.iter().map(|r| r.0.len()).collect();
        assert!(lengths.len() > 1, "{name}: the batch needs padding");
        let before = engine.score_stats();
        let scored = engine.score_many_blocking(rows.clone()).unwrap();
        assert_eq!(scored.len(), rows.len());
        let after = engine.score_stats();
        assert_eq!(
            (after.prefills - before.prefills, after.rows - before.rows),
            (1, rows.len() as u64),
            "{name}: one prefill for all rows"
        );
        for (case, steps) in exp.cases.iter().zip(&scored) {
            assert_eq!(steps.len(), case.logits.len());
            for (step, sample) in case.logits.iter().enumerate() {
                for (&i, &want) in sample.indices.iter().zip(&sample.values) {
                    let got = steps[step][i];
                    assert!(
                        (got - want).abs() <= 1e-4,
                        "{name} step {step} logit {i}: {got} vs {want}"
                    );
                }
            }
        }
        // The same rows one at a time give the same logits.
        for (row, together) in rows.iter().zip(&scored) {
            let alone = engine
                .score_steps_blocking(row.0.clone(), row.1.clone())
                .unwrap();
            for (a, b) in alone.iter().zip(together) {
                let max_diff = max_abs_diff(a, b);
                assert!(max_diff < 1e-4, "{name}: {max_diff}");
            }
        }
    }
}

#[test]
fn score_steps_equal_separate_prefills() {
    let engine = engine("tiny-llama3");
    let case = &expected("tiny-llama3").cases[0];
    let cont = case.greedy_ids[..3].to_vec();
    let steps = engine
        .score_steps_blocking(case.prompt_ids.clone(), cont.clone())
        .unwrap();
    assert_eq!(steps.len(), 4);
    for k in 0..=3 {
        let mut ids = case.prompt_ids.clone();
        ids.extend(&cont[..k]);
        let full = engine.score_blocking(ids).unwrap();
        let max_diff = max_abs_diff(&full, &steps[k]);
        assert!(max_diff < 1e-4, "step {k}: {max_diff}");
    }
}

/// The bound path against the plain one, whole logit vectors (not the reference's samples):
/// a prompt, then ten greedy steps through the cache, and a padded batch of two rows.
#[test]
fn io_binding_gives_the_plain_paths_logits() {
    init_runtime();
    for name in FIXTURES {
        let (mut plain, _) = cpu_session(name, IoBindingMode::Off);
        let (mut bound, _) = cpu_session(name, IoBindingMode::On);
        let case = &expected(name).cases[0];
        // The bound session's cache is a shared buffer where the graph allows (genai).
        let (mut cache_p, mut cache_b) = (
            plain.empty_cache().unwrap(),
            bound.cache_for(case.prompt_ids.len() + 10).unwrap(),
        );
        let (mut lp, mut lb) = (Vec::new(), Vec::new());
        let mut input = case.prompt_ids.clone();
        for step in 0..10 {
            cache_p = plain.forward(&input, cache_p, &mut lp).unwrap();
            cache_b = bound.forward(&input, cache_b, &mut lb).unwrap();
            assert_eq!(cache_p.len(), cache_b.len());
            let diff = max_abs_diff(&lp, &lb);
            assert!(diff <= 1e-4, "{name} step {step}: {diff}");
            let next = lb
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap();
            input = vec![next];
        }
        let rows: Vec<&[u32]> = vec![
            &case.prompt_ids,
            &case.prompt_ids[..case.prompt_ids.len() / 2],
        ];
        let wanted = vec![0..rows[0].len(), 0..rows[1].len()];
        let a = plain.prefill_batch(&rows, &wanted).unwrap().unwrap();
        let b = bound.prefill_batch(&rows, &wanted).unwrap().unwrap();
        for (ra, rb) in a.iter().zip(&b) {
            for (pa, pb) in ra.iter().zip(rb) {
                let diff = max_abs_diff(pa, pb);
                assert!(diff <= 1e-4, "{name} batch: {diff}");
            }
        }
    }
}

/// A shared KV buffer holds what it was sized for and refuses more (the engine sizes it for
/// the prompt and max_tokens); the same session still runs growing caches.
#[test]
fn a_shared_kv_buffer_refuses_positions_past_its_size() {
    init_runtime();
    let (mut session, _) = cpu_session("tiny-chatml-genai", IoBindingMode::On);
    let ids = &expected("tiny-chatml-genai").cases[0].prompt_ids;
    let mut logits = Vec::new();
    let cache = session.cache_for(ids.len()).unwrap();
    let cache = session.forward(ids, cache, &mut logits).unwrap();
    assert_eq!(cache.len(), ids.len());
    let err = session.forward(&[1], cache, &mut logits).err().unwrap();
    assert!(
        matches!(err, safegate_engine::EngineError::InvalidRequest(_)),
        "{err}"
    );
    let mut again = Vec::new();
    let grown = session.empty_cache().unwrap();
    session.forward(ids, grown, &mut again).unwrap();
    assert!(max_abs_diff(&logits, &again) <= 1e-4);
}

/// `--io-binding auto` on the CPU binds where the KV buffers can be shared (the genai
/// fixture's GroupQueryAttention), and not otherwise (plain attention gains nothing there).
#[test]
fn auto_binding_on_the_cpu_follows_shared_kv_buffers() {
    for (name, shared) in [("tiny-chatml-genai", true), ("tiny-llama3", false)] {
        let engine = engine_with(name, IoBindingMode::Auto);
        assert_eq!(engine.info().io_bound, shared, "{name}");
        assert_eq!(engine.info().kv_shared, shared, "{name}");
    }
}
