//! False positives on clean, widely used code (build the corpus with
//! scripts/shield/clean_corpus.sh):
//!
//!     cargo run --release -p safegate-shield --example fp -- .cache/corpus [--samples N]
//!
//! Every file of `<corpus>/<language>/` is scanned as that language. Prints findings per
//! 1,000 lines per language and per rule, and up to N sample findings per rule to read.

use std::collections::BTreeMap;
use std::path::Path;

use safegate_shield::{Language, ScanOptions, Severity, Shield};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = Path::new(args.get(1).map(String::as_str).unwrap_or(".cache/corpus"));
    let samples: usize = args
        .iter()
        .position(|a| a == "--samples")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let shield = Shield::embedded();
    let mut per_lang: BTreeMap<String, (usize, usize, usize, usize)> = BTreeMap::new();
    let mut per_rule: BTreeMap<String, (Severity, usize, Vec<String>)> = BTreeMap::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .expect("corpus folder")
        .flatten()
        .collect();
    dirs.sort_by_key(|d| d.file_name());
    for dir in dirs {
        let lang_name = dir.file_name().to_string_lossy().into_owned();
        let Ok(language) = lang_name.parse::<Language>() else {
            continue;
        };
        // Whole source files can be large (SQLite's amalgamation is 9.5 MB): no size cap.
        let options = ScanOptions {
            language: Some(language),
            max_bytes: usize::MAX,
            parse_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        };
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .expect("language folder")
            .flatten()
            .collect();
        files.sort_by_key(|f| f.file_name());
        for file in files {
            let Ok(bytes) = std::fs::read(file.path()) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let Ok(report) = shield.scan(&text, &options) else {
                continue;
            };
            let e = per_lang.entry(lang_name.clone()).or_default();
            e.0 += 1;
            e.1 += text.lines().count();
            e.2 += report.findings.len();
            e.3 += report
                .findings
                .iter()
                .filter(|f| f.severity > Severity::Advice)
                .count();
            let lines: Vec<&str> = text.lines().collect();
            for f in report.findings {
                let r = per_rule
                    .entry(f.rule.clone())
                    .or_insert((f.severity, 0, Vec::new()));
                r.1 += 1;
                if r.2.len() < samples {
                    let src = lines.get(f.line - 1).map(|l| l.trim()).unwrap_or("");
                    let src: String = src.chars().take(140).collect();
                    r.2.push(format!(
                        "{}:{}: {src}",
                        file.file_name().to_string_lossy(),
                        f.line
                    ));
                }
            }
        }
    }
    println!(
        "| language | files | lines | findings | per 1,000 lines | warning+error per 1,000 lines |"
    );
    println!("|---|---|---|---|---|---|");
    let (mut lines, mut found, mut serious) = (0, 0, 0);
    for (lang, (files, l, f, s)) in &per_lang {
        println!(
            "| {lang} | {files} | {l} | {f} | {:.3} | {:.3} |",
            1000.0 * *f as f64 / *l as f64,
            1000.0 * *s as f64 / *l as f64
        );
        lines += l;
        found += f;
        serious += s;
    }
    println!(
        "| **all** | | {lines} | {found} | {:.3} | {:.3} |",
        1000.0 * found as f64 / lines as f64,
        1000.0 * serious as f64 / lines as f64
    );
    println!(
        "\n| rule | severity | findings | per 1,000 lines (all languages) |\n|---|---|---|---|"
    );
    for (rule, (sev, n, _)) in &per_rule {
        println!(
            "| {rule} | {} | {n} | {:.3} |",
            sev.as_str(),
            1000.0 * *n as f64 / lines as f64
        );
    }
    println!();
    for (rule, (_, _, ex)) in &per_rule {
        for e in ex {
            println!("SAMPLE {rule}: {e}");
        }
    }
}
