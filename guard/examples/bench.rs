//! Classification latency with a local model:
//!
//!     cargo run --release -p safegate-guard --example bench -- MODEL_DIR [RUNS]
//!
//! Llama Guard 2 prompts (all 11 categories) around a user message of about 50 and about
//! 500 words; prints p50/p99 per classification (prompt tokens include the template's ~190).

use std::time::Instant;

use safegate_engine::{ChatMessage, Device, Engine, EngineOptions};
use safegate_guard::{build_prompt, AgentType, CategorySelection, LocalGuard};
use safegate_policies::Taxonomy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: bench MODEL_DIR [RUNS]"));
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(10);
    safegate_engine::runtime::init(None).expect("ONNX Runtime");
    let engine = Engine::load(
        &dir,
        &EngineOptions {
            device: Device::Cpu,
            ..Default::default()
        },
    )
    .expect("model");
    let guard = LocalGuard::new(engine);
    println!("| message | prompt tokens | p50 ms | p99 ms |\n|---|---|---|---|");
    for words in [50usize, 500] {
        let text: String = (0..words)
            .map(|i| {
                [
                    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog.",
                ][i % 9]
            })
            .collect::<Vec<_>>()
            .join(" ");
        let prompt = build_prompt(
            Taxonomy::LlamaGuard2,
            AgentType::User,
            &[ChatMessage::new("user", text)],
            &CategorySelection::default(),
        )
        .unwrap();
        let mut times = Vec::new();
        let mut tokens = 0;
        for i in 0..=runs {
            let t0 = Instant::now();
            let c = match guard.classify_blocking(&prompt) {
                Ok(c) => c,
                Err(e) => {
                    println!("| ~{words} words | - | {e} | |");
                    break;
                }
            };
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            tokens = c.prompt_tokens;
        }
        if times.is_empty() {
            continue;
        }
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        println!(
            "| ~{words} words | {tokens} | {:.1} | {:.1} |",
            pct(0.5),
            pct(0.99)
        );
    }
}
