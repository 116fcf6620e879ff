//! `safegate guard prompt | classify`.

use std::io::Write;

use anyhow::{anyhow, Result};
use safegate_guard::{build_prompt, AgentType, CategorySelection, GuardPrompt, LocalGuard};
use safegate_policies::Taxonomy;
use serde_json::json;

use crate::cli::{Cli, GuardCommand, GuardPromptArgs};

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
            let engine = crate::cmd_generate::load_engine(cli, model)?;
            let guard = LocalGuard::new(engine);
            let c = guard.classify_blocking(&p)?;
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
    }
    Ok(())
}
