//! `safegate guard prompt | classify` (`eval` and `bench`: cmd_guard_eval.rs; `train`:
//! cmd_guard_train.rs, built with the `train` feature).

use std::io::Write;

use anyhow::{anyhow, Result};
use safegate_engine::session::SessionOptions;
use safegate_guard::{
    build_prompt, is_embedded_guard, AgentType, CategorySelection, EmbeddedGuard, EmbeddedOptions,
    GuardPrompt, LocalGuard,
};
use safegate_policies::Taxonomy;
use serde_json::json;

use crate::cli::{Cli, GuardCommand, GuardPromptArgs};
use crate::cmd_guard_eval::EvalArgs;

fn prompt(args: &GuardPromptArgs) -> Result<GuardPrompt> {
    let taxonomy: Taxonomy = args.taxonomy.parse().map_err(|e: String| anyhow!(e))?;
    let agent: AgentType = args.agent_type.parse().map_err(|e: String| anyhow!(e))?;
    let messages = crate::messages::read_messages(&args.messages)?;
    let selection = CategorySelection {
        codes: args.categories.as_deref(),
        custom: &[],
        with_descriptions: args.with_descriptions,
    };
    Ok(build_prompt(taxonomy, agent, &messages, &selection)?)
}

pub fn run(cli: &Cli, cmd: &GuardCommand) -> Result<()> {
    match cmd {
        GuardCommand::Prompt(args) => {
            let text = prompt(args)?.text();
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        GuardCommand::Classify {
            model,
            prompt: args,
        } => {
            let p = prompt(args)?;
            let c = if is_embedded_guard(&model.model) {
                safegate_engine::runtime::init(cli.ort_lib.as_deref())?;
                let options = EmbeddedOptions {
                    session: SessionOptions {
                        device: model.device.parse()?,
                        intra_threads: model.threads,
                        ..Default::default()
                    },
                    ..Default::default()
                };
                EmbeddedGuard::open(&model.model, &options)?.classify_blocking(&p)?
            } else {
                let engine = crate::cmd_generate::load_engine(cli, model)?;
                LocalGuard::new(engine).classify_blocking(&p)?
            };
            let mut categories: Vec<(&String, &f64)> = c.verdict.category_scores.iter().collect();
            categories.sort_by(|a, b| b.1.total_cmp(a.1));
            let categories: Vec<serde_json::Value> = categories
                .into_iter()
                .map(|(code, score)| {
                    json!({"code": code, "name": p.taxonomy.category_name(code), "score": score})
                })
                .collect();
            println!(
                "{}",
                json!({
                    "taxonomy": p.taxonomy.name(),
                    "agent_type": args.agent_type,
                    "p_unsafe": c.verdict.p_unsafe,
                    "unsafe": c.verdict.p_unsafe >= 0.5,
                    "top_category": c.top_category,
                    "categories": categories,
                    "prompt_tokens": c.prompt_tokens,
                    "latency_ms": c.latency_ms,
                })
            );
        }
        #[cfg(not(feature = "train"))]
        GuardCommand::Train { .. } => anyhow::bail!(
            "this safegate was built without training; build it with \
             `cargo build --release -p safegate-gateway --features train`"
        ),
        #[cfg(feature = "train")]
        GuardCommand::Train {
            data,
            encoder,
            out,
            seed,
            window,
            stride,
            max_fpr,
            max_fpr_response,
            max_fpr_attack,
            pooling,
            wrap,
            sentence_windows,
            threads,
        } => crate::cmd_guard_train::train(
            cli,
            &crate::cmd_guard_train::TrainArgs {
                data,
                encoder,
                out,
                seed: *seed,
                window: *window,
                stride: *stride,
                max_fpr: *max_fpr,
                max_fpr_response: *max_fpr_response,
                max_fpr_attack: *max_fpr_attack,
                pooling: *pooling,
                wrap: wrap
                    .as_deref()
                    .map(safegate_guard::embedded::Wrap::parse)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--wrap: {e}"))?,
                sentence_windows: *sentence_windows,
                threads: *threads,
            },
        )?,
        GuardCommand::Bench {
            guard,
            tokens,
            clients,
            runs,
            threads,
        } => crate::cmd_guard_eval::bench(cli, guard, tokens, clients, *runs, *threads)?,
        GuardCommand::Eval {
            data,
            guard,
            splits,
            out,
            clients,
            threads,
        } => crate::cmd_guard_eval::eval(
            cli,
            &EvalArgs {
                data,
                guard,
                splits,
                out: out.as_deref(),
                clients: *clients,
                threads: *threads,
            },
        )?,
    }
    Ok(())
}
