//! Scan throughput on large inputs:
//!
//!     cargo run --release -p safegate-shield --example throughput -- FILE[:LANGUAGE]...
//!
//! Each file is scanned 3 times after a warm-up (as LANGUAGE when given, else as text with
//! code blocks found and detected); prints MB/s of the best run.

use std::time::Instant;

use safegate_shield::{Language, ScanOptions, Shield};

fn main() {
    let shield = Shield::embedded();
    println!(
        "| input | MB | language | findings | best of 3 (ms) | MB/s |\n|---|---|---|---|---|---|"
    );
    for arg in std::env::args().skip(1) {
        let (path, lang) = match arg.rsplit_once(':') {
            Some((p, l)) if l.parse::<Language>().is_ok() => {
                (p.to_string(), l.parse::<Language>().ok())
            }
            _ => (arg.clone(), None),
        };
        let text = String::from_utf8_lossy(&std::fs::read(&path).expect("read input")).into_owned();
        let options = ScanOptions {
            language: lang,
            max_bytes: usize::MAX,
            ..Default::default()
        };
        let findings = shield.scan(&text, &options).expect("scan").findings.len();
        let best = (0..3)
            .map(|_| {
                let t0 = Instant::now();
                shield.scan(&text, &options).expect("scan");
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let mb = text.len() as f64 / 1e6;
        let name = std::path::Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(path.clone());
        println!(
            "| {name} | {mb:.2} | {} | {findings} | {:.1} | {:.2} |",
            lang.map_or("detected", Language::name),
            best * 1e3,
            mb / best
        );
    }
}
