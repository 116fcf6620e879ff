//! `safegate bench`: time to first token and decode speed through the whole engine (queue,
//! worker, KV cache, sampling, detokenization), on a synthetic prompt.

use anyhow::Result;
use safegate_engine::{GenerateRequest, GenerationEvent, SamplingParams};
use serde_json::json;

use crate::cli::{BenchArgs, Cli};

/// The synthetic prompt shared with scripts/bench/engine_bench.py: deterministic ids spread
/// over the vocabulary, avoiding the lowest and highest ids (often special tokens).
pub fn synthetic_prompt(len: usize, vocab: usize) -> Vec<u32> {
    let span = (vocab.min(100_000) - 1000) as u64;
    (0..len as u64)
        .map(|i| (1000 + (i * 7919 + 13) % span) as u32)
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Generates `max_tokens` after `prompt` `runs` times after one warm-up run; returns the
/// times to first token and the decode times per token, in milliseconds.
fn time_runs(
    engine: &safegate_engine::Engine,
    prompt: &[u32],
    max_tokens: usize,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut ttft, mut per_token) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let mut stream = engine.generate(GenerateRequest {
            prompt_ids: prompt.to_vec(),
            max_tokens,
            sampling: SamplingParams::default(),
            stop: vec![],
            ignore_eos: true,
            format: None,
        })?;
        while let Some(ev) = stream.blocking_next() {
            match ev {
                GenerationEvent::Token { .. } => {}
                GenerationEvent::Done(c) => {
                    if run > 0 {
                        ttft.push(c.time_to_first_token.as_secs_f64() * 1e3);
                        per_token.push(
                            c.decode_time.as_secs_f64() * 1e3
                                / (c.usage.completion_tokens.max(2) - 1) as f64,
                        );
                    }
                    break;
                }
                GenerationEvent::Error(e) => return Err(e.into()),
            }
        }
    }
    Ok((ttft, per_token))
}

pub fn run(cli: &Cli, args: &BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.runs >= 1 && args.new_tokens >= 2,
        "--runs must be >= 1 and --new-tokens >= 2"
    );
    anyhow::ensure!(
        args.prefill_tokens != Some(0),
        "--prefill-tokens must be >= 1"
    );
    let engine = crate::cmd_generate::load_engine(cli, &args.model)?;
    let vocab = engine.info().config.vocab_size;
    let prompt = synthetic_prompt(args.prompt_tokens, vocab);
    let (mut ttft, mut per_token) = time_runs(&engine, &prompt, args.new_tokens, args.runs)?;
    let prefill_ms = match args.prefill_tokens {
        Some(n) => {
            let (mut t, _) = time_runs(&engine, &synthetic_prompt(n, vocab), 1, args.runs)?;
            Some(median(&mut t))
        }
        None => None,
    };
    let ttft_ms = median(&mut ttft);
    let per_token_ms = median(&mut per_token);
    let info = engine.info();
    if args.json {
        println!(
            "{}",
            json!({
                "model": info.name, "layout": info.layout, "provider": info.provider.as_str(),
                "io_binding": info.io_bound, "kv_shared": info.kv_shared, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": args.runs,
                "time_to_first_token_ms": ttft_ms, "per_token_ms": per_token_ms,
                "tokens_per_second": 1e3 / per_token_ms,
                "prefill_tokens": args.prefill_tokens, "prefill_ms": prefill_ms,
            })
        );
    } else {
        println!(
            "model {} ({:?} layout, {}{})",
            info.name,
            info.layout,
            info.provider.as_str(),
            match (info.io_bound, info.kv_shared) {
                (true, true) => ", I/O binding, shared KV buffers",
                (true, false) => ", I/O binding",
                _ => "",
            }
        );
        println!(
            "prompt {} tokens, {} new tokens, median of {} runs",
            args.prompt_tokens, args.new_tokens, args.runs
        );
        println!("time to first token  {ttft_ms:9.2} ms");
        println!(
            "decode per token     {per_token_ms:9.3} ms  ({:.1} tokens/s)",
            1e3 / per_token_ms
        );
        if let (Some(n), Some(ms)) = (args.prefill_tokens, prefill_ms) {
            println!("prefill {n:5} tokens  {ms:9.2} ms  (time to first token)");
        }
    }
    Ok(())
}
