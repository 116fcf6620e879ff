//! `safegate`: the gateway binary and its command-line tools.

mod budget;
mod cli;
mod cmd_bench;
mod cmd_generate;
mod cmd_guard;
mod cmd_guard_eval;
#[cfg(feature = "train")]
mod cmd_guard_train;
mod cmd_keys;
mod cmd_models;
mod cmd_policy;
mod cmd_scan;
mod config;
mod local_tools;
mod messages;
mod output;
mod server;
mod tools;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SAFEGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        cli::Command::Serve(args) => server::run(&cli, args),
        cli::Command::Generate(args) => cmd_generate::run(&cli, args),
        cli::Command::Bench(args) => cmd_bench::run(&cli, args),
        cli::Command::Scan(args) => cmd_scan::run(args),
        cli::Command::Policy(cmd) => cmd_policy::run(cmd),
        cli::Command::Guard(cmd) => cmd_guard::run(&cli, cmd),
        cli::Command::Models(cmd) => cmd_models::run(cmd),
        cli::Command::Keys(cmd) => cmd_keys::run(cmd),
        cli::Command::Probe { url } => probe(url),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `safegate probe URL`: the container image has no curl.
fn probe(url: &str) -> anyhow::Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(3))
        .build();
    match agent.get(url).call() {
        Ok(r) if (200..300).contains(&r.status()) => Ok(()),
        Ok(r) => anyhow::bail!("{url}: HTTP {}", r.status()),
        Err(e) => anyhow::bail!("{url}: {e}"),
    }
}
