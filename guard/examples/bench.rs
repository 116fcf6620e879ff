//! Classification latency and throughput with a local model, one at a time and batched:
//!
//!     cargo run --release -p safegate-guard --example bench -- MODEL_DIR [RUNS] [CLIENTS] [DEVICE] [BATCHES]
//!
//! Llama Guard 2 prompts (all 11 categories) around a user message of about 50 and about
//! 500 words (prompt tokens include the template's ~190). For each engine setting (score
//! batches of 1, then of up to 8) and each number of concurrent callers (CLIENTS, comma
//! separated, default 1,4,8): p50/p99 per classification, classifications per second, and
//! rows per prefill (above 1: callers shared prefills). BATCHES (comma separated, default
//! 1,8) picks the engine settings: each is one model load, which a large model makes long.

use std::time::Instant;

use safegate_engine::{ChatMessage, Device, Engine, EngineOptions};
use safegate_guard::{build_prompt, AgentType, CategorySelection, GuardPrompt, LocalGuard};
use safegate_verdict::Taxonomy;

fn prompt_of(words: usize) -> GuardPrompt {
    let text: String = (0..words)
        .map(|i| {
            [
                "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog.",
            ][i % 9]
        })
        .collect::<Vec<_>>()
        .join(" ");
    build_prompt(
        Taxonomy::LlamaGuard2,
        AgentType::User,
        &[ChatMessage::new("user", text)],
        &CategorySelection::default(),
    )
    .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .expect("usage: bench MODEL_DIR [RUNS] [CLIENTS] [DEVICE] [BATCHES]"),
    );
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(10);
    let list = |i: usize, default: &[usize]| -> Vec<usize> {
        args.get(i).map_or_else(
            || default.to_vec(),
            |c| c.split(',').filter_map(|n| n.parse().ok()).collect(),
        )
    };
    let clients = list(3, &[1, 4, 8]);
    let device: Device = args
        .get(4)
        .map_or("cpu", String::as_str)
        .parse()
        .expect("DEVICE: cpu or cuda[:N]");
    let batches = list(5, &[1, 8]);
    safegate_engine::runtime::init(None).expect("ONNX Runtime");
    println!(
        "| score batch | message | prompt tokens | callers | p50 ms | p99 ms | classifications/s | rows per prefill |\n|---|---|---|---|---|---|---|---|"
    );
    for batch in batches {
        let engine = Engine::load(
            &dir,
            &EngineOptions {
                device,
                score_batch: batch,
                ..Default::default()
            },
        )
        .expect("model");
        let guard = LocalGuard::new(engine.clone());
        for words in [50usize, 500] {
            let prompt = prompt_of(words);
            let tokens = match guard.classify_blocking(&prompt) {
                Ok(c) => c.prompt_tokens,
                Err(e) => {
                    println!("| {batch} | ~{words} words | - | - | {e} | | | |");
                    continue;
                }
            };
            for &callers in &clients {
                let before = engine.score_stats();
                let t0 = Instant::now();
                let mut times: Vec<f64> = std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..callers)
                        .map(|_| {
                            scope.spawn(|| {
                                (0..runs)
                                    .map(|_| {
                                        let t = Instant::now();
                                        guard.classify_blocking(&prompt).expect("classify");
                                        t.elapsed().as_secs_f64() * 1e3
                                    })
                                    .collect::<Vec<f64>>()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().unwrap())
                        .collect()
                });
                let wall = t0.elapsed().as_secs_f64();
                let after = engine.score_stats();
                times.sort_by(f64::total_cmp);
                let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
                println!(
                    "| {batch} | ~{words} words | {tokens} | {callers} | {:.1} | {:.1} | {:.2} | {:.2} |",
                    pct(0.5),
                    pct(0.99),
                    times.len() as f64 / wall,
                    (after.rows - before.rows) as f64
                        / (after.prefills - before.prefills).max(1) as f64
                );
            }
        }
    }
}
