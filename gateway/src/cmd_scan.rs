//! `safegate scan`: the shield on a file or standard input. Exit code 0 whether or not
//! something is found; non-zero only on errors.

use std::io::Read;

use anyhow::{anyhow, Context, Result};
use safegate_shield::{Language, ScanOptions, Shield};
use serde_json::json;

use crate::cli::ScanArgs;

pub fn run(args: &ScanArgs) -> Result<()> {
    let options = ScanOptions {
        language: args
            .language
            .as_deref()
            .map(str::parse::<Language>)
            .transpose()
            .map_err(|e| anyhow!(e))?,
        ..Default::default()
    };
    let mut bytes = Vec::new();
    let origin = if args.file == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
        "standard input".to_string()
    } else {
        bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file))?;
        args.file.clone()
    };
    if bytes.len() > options.max_bytes {
        return Err(anyhow!(
            "{origin}: {} bytes is over the {} byte limit",
            bytes.len(),
            options.max_bytes
        ));
    }
    if bytes.contains(&0) {
        return Err(anyhow!("{origin}: binary data (NUL bytes), not text"));
    }
    // Source files in other encodings (Latin-1 test files, old Windows code pages) are
    // still source: read lossily, as compilers' scanners do, and say so.
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "{origin}: not UTF-8 text (first invalid byte at offset {}); read lossily, \
                 undecodable bytes replaced by U+FFFD",
                e.utf8_error().valid_up_to()
            );
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    };
    let report = Shield::embedded()
        .scan(&text, &options)
        .with_context(|| origin.clone())?;
    if args.json {
        println!(
            "{}",
            json!({"findings": report.findings, "blocks": report.blocks})
        );
    } else {
        for f in &report.findings {
            println!(
                "{origin}:{}:{}: {} [{}] {} ({})",
                f.line,
                f.column,
                f.severity.as_str(),
                f.cwe,
                f.message,
                f.rule
            );
        }
        eprintln!(
            "{} finding(s) in {} code block(s)",
            report.findings.len(),
            report.blocks.len()
        );
    }
    Ok(())
}
