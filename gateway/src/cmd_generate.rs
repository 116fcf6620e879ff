use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use safegate_api::ResponseFormat;
use safegate_engine::{
    ChatMessage, Engine, EngineOptions, GenerateRequest, GenerationEvent, SamplingParams,
};
use safegate_structured::Grammar;
use serde_json::json;

use crate::cli::{Cli, GenerateArgs, ModelArgs};

pub fn load_engine(cli: &Cli, args: &ModelArgs) -> Result<Engine> {
    let runtime = safegate_engine::runtime::init(cli.ort_lib.as_deref())?;
    tracing::info!(library = %runtime.library.display(), "ONNX Runtime loaded");
    let opts = EngineOptions {
        device: args.device.parse()?,
        io_binding: args.io_binding.parse()?,
        growing_kv: args.growing_kv,
        intra_threads: args.threads,
        ..Default::default()
    };
    let engine = Engine::load(&args.model, &opts)?;
    tracing::info!(
        provider = engine.info().provider.as_str(),
        io_binding = engine.info().io_bound,
        "execution provider"
    );
    Ok(engine)
}

pub fn run(cli: &Cli, args: &GenerateArgs) -> Result<()> {
    let messages = match (&args.prompt, &args.messages) {
        (Some(p), _) => vec![ChatMessage::new("user", p.clone())],
        (None, Some(path)) => crate::messages::read_messages(path)?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let engine = load_engine(cli, &args.model)?;
    let prompt_ids = engine
        .tokenizer()
        .encode_chat(&messages, true)
        .with_context(|| format!("model {}", args.model.model.display()))?;
    let request = GenerateRequest {
        prompt_ids,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
            ..Default::default()
        },
        stop: args.stop.clone(),
        ignore_eos: false,
        format: output_format(args)?,
    };
    let started = Instant::now();
    let mut stream = engine.generate(request)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(event) = stream.blocking_next() {
        match event {
            GenerationEvent::Token { id, text } => {
                if args.json {
                    writeln!(out, "{}", json!({"id": id, "text": text}))?;
                } else {
                    write!(out, "{text}")?;
                }
                out.flush()?;
            }
            GenerationEvent::Done(c) => {
                let decode_s = c.decode_time.as_secs_f64();
                let tokens_per_second = if c.usage.completion_tokens > 1 && decode_s > 0.0 {
                    (c.usage.completion_tokens - 1) as f64 / decode_s
                } else {
                    0.0
                };
                if args.json {
                    let summary = json!({
                        "summary": {
                            "finish_reason": c.finish_reason,
                            "prompt_tokens": c.usage.prompt_tokens,
                            "completion_tokens": c.usage.completion_tokens,
                            "time_to_first_token_ms": c.time_to_first_token.as_secs_f64() * 1e3,
                            "tokens_per_second": tokens_per_second,
                            "total_ms": started.elapsed().as_secs_f64() * 1e3,
                            "tail_text": c.tail_text,
                            "provider": engine.info().provider.as_str(),
                        }
                    });
                    writeln!(out, "{summary}")?;
                } else {
                    writeln!(out, "{}", c.tail_text)?;
                    eprintln!(
                        "[{} tokens, finish {:?}, first token {:.1} ms, {:.1} tokens/s, {}]",
                        c.usage.completion_tokens,
                        c.finish_reason,
                        c.time_to_first_token.as_secs_f64() * 1e3,
                        tokens_per_second,
                        engine.info().provider.as_str()
                    );
                }
                return Ok(());
            }
            GenerationEvent::Error(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the engine stopped before finishing")
}

/// `--json-object` or `--json-schema FILE` as a grammar (errors name the file and the
/// place in the schema).
fn output_format(args: &GenerateArgs) -> Result<Option<std::sync::Arc<Grammar>>> {
    let format = match (&args.json_schema, args.json_object) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let schema = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            ResponseFormat::JsonSchema {
                name: path.display().to_string(),
                schema,
            }
        }
        (None, true) => ResponseFormat::JsonObject,
        (None, false) => ResponseFormat::Text,
    };
    crate::messages::grammar_for(&format).with_context(|| match &args.json_schema {
        Some(path) => format!("{}: schema not usable", path.display()),
        None => "--json-object".to_string(),
    })
}
