//! GGUF import against references made by llama.cpp's own gguf-py
//! (scripts/gguf/make_fixtures.py).

use std::path::{Path, PathBuf};

use safegate_engine::session::IoBindingMode;
use safegate_engine::{ChatMessage, Engine, EngineOptions, GenerateRequest, GenerationEvent};
use safegate_gguf::tokenizer::Vocab;
use safegate_gguf::{
    import, DecoderGraph, DecoderLayout, GgufError, GgufFile, GraphKind, ImportOptions,
    WeightFormat,
};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(path)
}

#[test]
fn every_quantization_type_dequantizes_as_gguf_py_does() {
    let g = GgufFile::open(&fixture("gguf/quant-types.gguf")).unwrap();
    let mut checked = Vec::new();
    for t in g.tensors.iter().filter(|t| t.name.starts_with("q.")) {
        let ty = &t.name[2..];
        let expected = g.dequantize(g.tensor(&format!("x.{ty}")).unwrap()).unwrap();
        let got = g.dequantize(t).unwrap();
        assert_eq!(t.ggml_type.name(), ty);
        assert_eq!(got.len(), 512);
        for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{ty}[{i}]: {a} vs gguf-py {b}"
            );
        }
        checked.push(ty.to_string());
    }
    for ty in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K",
    ] {
        assert!(checked.iter().any(|c| c == ty), "{ty} not in the fixture");
    }
}

#[test]
fn broken_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("gguf/tiny-chatml.gguf")).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let e = GgufFile::open(&truncated).err().unwrap().to_string();
    assert!(
        e.contains("truncated") && e.contains("tensor `blk.1.") && e.contains("ends at byte"),
        "{e}"
    );
    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..200]).unwrap();
    let e = GgufFile::open(&header_only).err().unwrap().to_string();
    assert!(e.contains("truncated"), "{e}");
    let not_gguf = dir.path().join("model.onnx");
    std::fs::write(&not_gguf, b"\x08\x09not a gguf").unwrap();
    let e = GgufFile::open(&not_gguf).err().unwrap().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");

    // A failed import leaves neither the target nor a partial folder behind.
    let out = dir.path().join("models/out");
    let e = import(&truncated, &out, &ImportOptions::default(), |_, _| {}).unwrap_err();
    assert!(matches!(e, GgufError::Truncated(_)), "{e}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("models"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[derive(serde::Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    messages: Vec<ChatMessage>,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    logits: Vec<Logits>,
}

#[derive(serde::Deserialize)]
struct Logits {
    indices: Vec<usize>,
    values: Vec<f32>,
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn load(dir: &Path) -> Engine {
    load_batched(dir, 0)
}

/// The model on the CPU, concurrent scoring requests sharing padded prefills of up to
/// `score_batch` rows (0: the CPU default).
fn load_batched(dir: &Path, score_batch: usize) -> Engine {
    safegate_engine::runtime::init(None).expect("ONNX Runtime (run scripts/setup.sh)");
    let opts = EngineOptions {
        device: safegate_engine::Device::Cpu,
        intra_threads: 1,
        score_batch,
        ..Default::default()
    };
    Engine::load(dir, &opts).unwrap()
}

fn greedy(engine: &Engine, prompt: Vec<u32>, n: usize) -> Vec<u32> {
    let mut stream = engine
        .generate(GenerateRequest {
            prompt_ids: prompt,
            max_tokens: n,
            sampling: Default::default(),
            stop: Vec::new(),
            ignore_eos: false,
            format: None,
        })
        .unwrap();
    let mut ids = Vec::new();
    while let Some(ev) = stream.blocking_next() {
        match ev {
            GenerationEvent::Token { id, .. } => ids.push(id),
            GenerationEvent::Done(_) => break,
            GenerationEvent::Error(e) => panic!("{e}"),
        }
    }
    ids
}

/// A float16 end-to-end graph (the CUDA graph), run here on the CPU provider: float16 KV
/// cache and logits, the reference's logits within f16 rounding, its greedy tokens, and the
/// I/O-bound path (the CUDA default) giving the same as the plain one.
fn assert_half_graph_matches(dir: &Path, expected: &Expected) {
    for io_binding in [IoBindingMode::Off, IoBindingMode::On] {
        safegate_engine::runtime::init(None).unwrap();
        let engine_half = Engine::load(
            dir,
            &EngineOptions {
                device: safegate_engine::Device::Cpu,
                intra_threads: 1,
                io_binding,
                ..Default::default()
            },
        )
        .unwrap();
        for case in &expected.cases {
            let logits = engine_half.score_blocking(case.prompt_ids.clone()).unwrap();
            // Half-precision activations keep about three significant digits, and each
            // layer's error carries into the next: within 1% of the logits' spread (0.4%
            // measured here).
            let spread = case.logits[0]
                .values
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = case.logits[0]
                .indices
                .iter()
                .zip(&case.logits[0].values)
                .map(|(i, v)| (logits[*i] - v).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 0.01 * spread,
                "f16 graph: logit error {worst} of {spread} ({io_binding:?})"
            );
            // The random tiny model's top logits lie close together: after enough steps an
            // f16 rounding can flip a near tie, so the first half of the reference's tokens.
            let n = case.greedy_ids.len() / 2;
            assert_eq!(
                greedy(&engine_half, case.prompt_ids.clone(), n),
                case.greedy_ids[..n],
                "{io_binding:?}"
            );
        }
    }
}

/// The GGUF holds tiny-chatml-genai's weights as llama.cpp's converter lays them out
/// (permuted Q/K rows, [out, in] matrices): the import must behave exactly like that model.
#[test]
fn an_imported_gguf_reproduces_the_reference_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let mut calls = 0;
    let summary = import(
        &fixture("gguf/tiny-chatml.gguf"),
        &out,
        &ImportOptions::default(),
        |done, total| {
            calls += 1;
            assert!(done <= total);
        },
    )
    .unwrap();
    assert!(calls >= 3, "progress is reported per layer");
    assert_eq!(summary.params.num_layers, 2);
    assert!(summary.params.tied_embeddings);
    let engine = load(&out);
    let expected: Expected = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-chatml-genai/expected.json")).unwrap(),
    )
    .unwrap();
    for case in &expected.cases {
        let ids = engine
            .tokenizer()
            .encode_chat(&case.messages, true)
            .unwrap();
        assert_eq!(
            ids, case.prompt_ids,
            "chat template and tokenizer from GGUF metadata"
        );
        let logits = engine.score_blocking(ids.clone()).unwrap();
        for (i, v) in case.logits[0].indices.iter().zip(&case.logits[0].values) {
            assert!(
                (logits[*i] - v).abs() < 1e-4,
                "logit {i}: {} vs {v}",
                logits[*i]
            );
        }
        assert_eq!(greedy(&engine, ids, case.greedy_ids.len()), case.greedy_ids);
    }

    // The fixture imported again in another format, into `dir/name`.
    let import_as = |format, max_context, name: &str| {
        let out = dir.path().join(name);
        let options = ImportOptions {
            format,
            max_context,
            ..Default::default()
        };
        import(&fixture("gguf/tiny-chatml.gguf"), &out, &options, |_, _| {}).unwrap();
        out
    };

    // Half-precision weights: same model within f16 rounding.
    let out16 = import_as(WeightFormat::F16, Some(256), "tiny16");
    let f32_size = std::fs::metadata(out.join("model.onnx.data"))
        .unwrap()
        .len();
    let f16_size = std::fs::metadata(out16.join("model.onnx.data"))
        .unwrap()
        .len();
    assert!(f16_size < f32_size * 6 / 10, "{f16_size} vs {f32_size}");
    let engine16 = load(&out16);
    assert_eq!(engine16.info().config.context_length, 256);
    let case = &expected.cases[0];
    let logits = engine16.score_blocking(case.prompt_ids.clone()).unwrap();
    for (i, v) in case.logits[0].indices.iter().zip(&case.logits[0].values) {
        assert!(
            (logits[*i] - v).abs() < 0.05,
            "f16 logit {i}: {} vs {v}",
            logits[*i]
        );
    }

    // Float16 end to end (the CUDA graph).
    let outh = import_as(WeightFormat::F16Compute, Some(256), "tiny-half");
    let half_size = std::fs::metadata(outh.join("model.onnx.data"))
        .unwrap()
        .len();
    assert!(half_size < f32_size * 6 / 10, "{half_size} vs {f32_size}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(outh.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float16");
    assert_eq!(
        config["safegate_import"]["graph_version"],
        safegate_gguf::GRAPH_VERSION
    );
    assert_half_graph_matches(&outh, &expected);
    // An encoder is not written in float16.
    let refused = import(
        &fixture("gguf/tiny-chatml.gguf"),
        &dir.path().join("enc-half"),
        &ImportOptions {
            format: WeightFormat::F16Compute,
            max_context: None,
            kind: GraphKind::Encoder { layers: vec![1] },
        },
        |_, _| {},
    );
    assert!(refused.is_err());

    // 4-bit linear layers (MatMulNBits) compute exactly what their dequantized values
    // stored as f32 compute: the packing, scales and zero points are laid out as ONNX
    // Runtime reads them.
    let packed = import_as(WeightFormat::Int4 { accuracy_level: 0 }, None, "int4");
    let onnx = std::fs::read(packed.join("model.onnx")).unwrap();
    assert!(onnx.windows(11).any(|w| w == b"MatMulNBits"));
    let unpacked = import_as(WeightFormat::Int4Dequantized, None, "int4-as-f32");
    let a = load(&packed)
        .score_blocking(case.prompt_ids.clone())
        .unwrap();
    let b = load(&unpacked)
        .score_blocking(case.prompt_ids.clone())
        .unwrap();
    let worst = max_abs_diff(&a, &b);
    assert!(worst < 1e-3, "int4 vs its f32 equivalent: {worst}");

    let e = import(
        &fixture("gguf/tiny-chatml.gguf"),
        &out,
        &ImportOptions::default(),
        |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

/// `GraphKind::GenaiDecoder`: the same weights with one fused GroupQueryAttention per layer
/// (no `position_ids`): the reference's logits and greedy tokens, padded batches scoring as
/// rows alone, and the float16 graph within f16 rounding.
#[test]
fn a_genai_layout_import_reproduces_the_reference_model() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Expected = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-chatml-genai/expected.json")).unwrap(),
    )
    .unwrap();
    let import_as = |format, packed_qkv: bool, name: &str| {
        let out = dir.path().join(format!("{name}-{packed_qkv}"));
        let options = ImportOptions {
            format,
            max_context: Some(256),
            kind: GraphKind::Decoder(DecoderGraph {
                layout: DecoderLayout::Genai { packed_qkv },
                all_logits: false,
            }),
        };
        import(&fixture("gguf/tiny-chatml.gguf"), &out, &options, |_, _| {}).unwrap();
        let onnx = std::fs::read(out.join("model.onnx")).unwrap();
        assert!(onnx.windows(19).any(|w| w == b"GroupQueryAttention"));
        out
    };
    // Q, K and V as three products and packed into one.
    for packed_qkv in [false, true] {
        let out = import_as(WeightFormat::F32, packed_qkv, "genai");
        let engine = load_batched(&out, 4);
        assert_eq!(engine.info().layout, safegate_engine::Layout::Genai);
        let mut alone = Vec::new();
        for case in &expected.cases {
            let logits = engine.score_blocking(case.prompt_ids.clone()).unwrap();
            for (i, v) in case.logits[0].indices.iter().zip(&case.logits[0].values) {
                assert!(
                    (logits[*i] - v).abs() < 1e-4,
                    "logit {i}: {} vs {v}",
                    logits[*i]
                );
            }
            assert_eq!(
                greedy(&engine, case.prompt_ids.clone(), case.greedy_ids.len()),
                case.greedy_ids
            );
            alone.push(logits);
        }
        // Rows of different lengths in one right-padded prefill score as they do alone.
        let rows: Vec<(Vec<u32>, Vec<u32>)> = expected
            .cases
            .iter()
            .map(|c| (c.prompt_ids.clone(), Vec::new()))
            .collect();
        assert!(rows.iter().any(|r| r.0.len() != rows[0].0.len()));
        let batched = engine.score_many_blocking(rows).unwrap();
        for (row, single) in batched.iter().zip(&alone) {
            let worst = max_abs_diff(&row[0], single);
            assert!(worst < 1e-4, "batched vs alone: {worst}");
        }
        assert_half_graph_matches(
            &import_as(WeightFormat::F16Compute, packed_qkv, "genai-half"),
            &expected,
        );
    }
}

/// A float16 GGUF (`convert_hf_to_gguf.py --outtype f16`) imported with float16 weights is
/// copied and transposed as float16 bits, never widened: it must compute exactly what the
/// same file widened to f32 computes (f16 to f32 is exact), Q/K rows unpermuted alike.
#[test]
fn a_float16_gguf_keeps_its_values_through_the_float16_path() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("gguf/tiny-chatml-f16.gguf");
    let import_as = |format, kind: &GraphKind, name: &str| {
        let out = dir.path().join(name);
        let options = ImportOptions {
            format,
            kind: kind.clone(),
            ..Default::default()
        };
        import(&source, &out, &options, |_, _| {}).unwrap();
        load(&out)
    };
    // The reference's prompts (its logits are the f32 model's: this file's are rounded).
    let expected: Expected = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-chatml-genai/expected.json")).unwrap(),
    )
    .unwrap();
    // Both layouts: the genai one packs Q, K and V into one matrix.
    for (i, kind) in [
        DecoderLayout::Optimum,
        DecoderLayout::Genai { packed_qkv: false },
        DecoderLayout::Genai { packed_qkv: true },
    ]
    .map(|layout| {
        GraphKind::Decoder(DecoderGraph {
            layout,
            all_logits: false,
        })
    })
    .iter()
    .enumerate()
    {
        let bits = import_as(WeightFormat::F16, kind, &format!("f16-{i}"));
        let widened = import_as(WeightFormat::F32, kind, &format!("f32-{i}"));
        for case in &expected.cases {
            let a = bits.score_blocking(case.prompt_ids.clone()).unwrap();
            let b = widened.score_blocking(case.prompt_ids.clone()).unwrap();
            let worst = max_abs_diff(&a, &b);
            assert!(worst < 1e-5, "{kind:?}: float16 path vs widened: {worst}");
        }
    }
}

/// By default a decoder takes `logits_positions` and runs only those positions through the
/// output head. Whatever the engine asks for (the next token after a prompt, a teacher-forced
/// continuation's steps, padded rows of different lengths together) must come out as the
/// graph with logits at every position (`all_logits`) gives it, in both layouts.
#[test]
fn selected_logits_are_the_logits_of_every_position() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Expected = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-chatml-genai/expected.json")).unwrap(),
    )
    .unwrap();
    let p = |i: usize| expected.cases[i % expected.cases.len()].prompt_ids.clone();
    // A continuation of 3 tokens, none, and 1: ranges of 4, 1 and 2 positions.
    let rows = vec![(p(0), vec![5, 9, 2]), (p(1), vec![]), (p(2), vec![7])];
    for (i, layout) in [
        DecoderLayout::Optimum,
        DecoderLayout::Genai { packed_qkv: false },
    ]
    .into_iter()
    .enumerate()
    {
        let scores = |all_logits: bool| {
            let out = dir.path().join(format!("{i}-{all_logits}"));
            let options = ImportOptions {
                kind: GraphKind::Decoder(DecoderGraph { layout, all_logits }),
                ..Default::default()
            };
            import(&fixture("gguf/tiny-chatml.gguf"), &out, &options, |_, _| {}).unwrap();
            let onnx = std::fs::read(out.join("model.onnx")).unwrap();
            assert_eq!(
                onnx.windows(16).any(|w| w == b"logits_positions"),
                !all_logits
            );
            let engine = load_batched(&out, 4);
            let mut got = engine.score_many_blocking(rows.clone()).unwrap();
            got.push(vec![engine.score_blocking(p(1)).unwrap()]);
            got.push(vec![{
                let mut ids = p(0);
                ids.truncate(ids.len() - 2);
                engine.score_blocking(ids).unwrap()
            }]);
            (got, greedy(&engine, p(0), 6))
        };
        let (selected, selected_tokens) = scores(false);
        let (every, every_tokens) = scores(true);
        assert_eq!(selected_tokens, every_tokens, "{layout:?}");
        for (a, b) in selected.iter().zip(&every) {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                let worst = max_abs_diff(x, y);
                assert!(worst < 1e-5, "{layout:?}: {worst}");
            }
        }
    }
}

/// The Llama 3 pre-tokenizer rebuilt from a GGUF-style vocabulary encodes exactly as Meta's
/// tokenizer.json (which scripts/setup.sh installs beside the tiny-llama3 fixture).
#[test]
fn a_llama3_vocabulary_rebuilds_into_the_same_tokenizer() {
    let path = fixture("tiny-llama3/tokenizer.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("run scripts/setup.sh"))
            .unwrap();
    let vocab_map = original["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab_map.len()];
    for (t, id) in vocab_map {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let mut token_types = vec![1i64; tokens.len()];
    for a in original["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap() as usize;
        if id >= tokens.len() {
            tokens.resize(id + 1, String::new());
            token_types.resize(id + 1, 1);
        }
        tokens[id] = a["content"].as_str().unwrap().to_string();
        token_types[id] = 3;
    }
    let merges = original["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            pair => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
        })
        .collect();
    let vocab = Vocab {
        model: "gpt2".into(),
        pre: "llama-bpe".into(),
        tokens,
        token_types,
        merges,
    };
    let rebuilt = vocab.to_tokenizer_json().unwrap().to_string();
    let rebuilt = tokenizers::Tokenizer::from_bytes(rebuilt.as_bytes()).unwrap();
    let reference = tokenizers::Tokenizer::from_file(&path).unwrap();
    for text in [
        "What is the capital of France?",
        "Numbers 1234567 and 3.14159, ünïcödé 🙂 text\n\n\tindented   spaces",
        "def f(x):\n    return x ** 2  # don't\r\n<|eot_id|> isn't special here",
        "I'm SHOUTING'S and 'quotes' ... !!!",
    ] {
        let a = reference.encode(text, false).unwrap();
        let b = rebuilt.encode(text, false).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
        assert_eq!(rebuilt.decode(b.get_ids(), false).unwrap(), text);
    }
    let unsupported = Vocab {
        pre: "qwen2".into(),
        ..vocab
    };
    let e = unsupported.to_tokenizer_json().unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.pre `qwen2`"), "{e}");
}

#[test]
fn encoders_stop_early_exactly_and_pool_padded_batches_like_single_sequences() {
    safegate_engine::runtime::init(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let encoder = |layers: Vec<usize>, name: &str| {
        let out = dir.path().join(name);
        let options = ImportOptions {
            kind: GraphKind::Encoder { layers },
            ..Default::default()
        };
        import(&fixture("gguf/tiny-chatml.gguf"), &out, &options, |_, _| {}).unwrap();
        safegate_engine::Encoder::open(&out, &Default::default()).unwrap()
    };
    let mut both = encoder(vec![1, 2], "both");
    let mut first = encoder(vec![1], "first");
    assert_eq!(both.layers(), ["hidden_states.1", "hidden_states.2"]);
    assert_eq!(both.dim(), 2 * first.dim());
    let seqs = vec![vec![5, 9, 13, 2, 7, 30], vec![4, 8], vec![11]];
    let batched = both.pooled(&seqs).unwrap();
    let h = first.dim();
    for (seq, pooled) in seqs.iter().zip(&batched) {
        let alone = both.pooled(std::slice::from_ref(seq)).unwrap().remove(0);
        for (a, b) in alone.iter().zip(pooled) {
            assert!((a - b).abs() < 1e-4, "padding changed a vector: {a} vs {b}");
        }
        // The graph that stops after layer 1 computes layer 1 as the full one does.
        let early = first.pooled(std::slice::from_ref(seq)).unwrap().remove(0);
        for (a, b) in early.iter().zip(&pooled[..h]) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Layers differ (the second output is not a copy of the first).
        assert!(pooled[..h]
            .iter()
            .zip(&pooled[h..])
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }

    // Layer numbers outside the model are refused with a clear error.
    let options = ImportOptions {
        kind: GraphKind::Encoder { layers: vec![3] },
        ..Default::default()
    };
    let e = import(
        &fixture("gguf/tiny-chatml.gguf"),
        &dir.path().join("bad"),
        &options,
        |_, _| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("expected layer numbers from 1 to 2"),
        "{e}"
    );
    assert!(!dir.path().join("bad").exists());
}
