//! `safegate guard eval | bench`: the embedded guard measured on labelled rows (F1, FPR,
//! AUPRC per split and source) and under load. Training is `cmd_guard_train.rs`, built
//! with the `train` feature.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use safegate_engine::session::SessionOptions;
use safegate_guard::embedded::TextScore;
use safegate_guard::measure::{metrics, Metrics};
use safegate_guard::prompt::AgentType;
use safegate_guard::{EmbeddedGuard, EmbeddedOptions};
use serde_json::json;

use crate::cli::Cli;

/// The Llama Guard 2 codes the head scores, in order.
pub const CODES: [&str; 11] = [
    "S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11",
];

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Row {
    pub text: String,
    pub kind: String,
    pub label: u8,
    #[serde(default)]
    pub codes: Vec<String>,
    pub source: String,
    pub split: String,
}

impl Row {
    pub fn agent(&self) -> AgentType {
        if self.kind == "response" {
            AgentType::Agent
        } else {
            AgentType::User
        }
    }
}

pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!("{}:{}: column {}: {e}", path.display(), i + 1, e.column())
        })?;
        if !matches!(
            row.kind.as_str(),
            "prompt" | "response" | "attack" | "sentence"
        ) || row.label > 1
        {
            bail!(
                "{}:{}: field `kind` must be prompt, response, attack or sentence and `label` 0 or 1",
                path.display(),
                i + 1
            );
        }
        if let Some(c) = row.codes.iter().find(|c| !CODES.contains(&c.as_str())) {
            bail!(
                "{}:{}: field `codes`: `{c}` is not a Llama Guard 2 code",
                path.display(),
                i + 1
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// An embedded guard for `eval` and `bench`: a deep queue, so that many callers measure
/// the guard rather than its refusals.
fn open_for_measuring(cli: &Cli, dir: &Path, threads: usize) -> Result<EmbeddedGuard> {
    safegate_engine::runtime::init(cli.ort_lib.as_deref())?;
    Ok(EmbeddedGuard::open(
        dir,
        &EmbeddedOptions {
            session: SessionOptions {
                intra_threads: threads,
                ..Default::default()
            },
            queue: 1024,
            ..Default::default()
        },
    )?)
}

pub struct EvalArgs<'a> {
    pub data: &'a Path,
    pub guard: &'a Path,
    pub splits: &'a [String],
    pub out: Option<&'a Path>,
    pub clients: usize,
    pub threads: usize,
}

/// Sources written by hand for this project (scripts/guard/*.txt): reported apart as well,
/// since their author also wrote the dev set.
const HAND_WRITTEN: &[&str] = &[
    "hard-benign",
    "terse-harmful",
    "everyday-benign",
    "lookalike-benign",
    "conversational-harmful",
    "statements",
];

/// Scores every row of the chosen splits through the embedded guard exactly as the gateway
/// does (windows, batching) and prints metrics at the head's thresholds.
pub fn eval(cli: &Cli, a: &EvalArgs) -> Result<()> {
    let rows = read_rows(a.data)?;
    let guard = open_for_measuring(cli, a.guard, a.threads)?;
    // Sentence rows teach the sentence head; served, a sentence is read inside a longer
    // text (scripts/guard/buried_eval.py measures that), so they are not scored here.
    let chosen: Vec<&Row> = rows
        .iter()
        .filter(|r| a.splits.contains(&r.split) && r.kind != "sentence")
        .collect();
    if chosen.is_empty() {
        bail!("{}: no rows in splits {:?}", a.data.display(), a.splits);
    }
    eprintln!("scoring {} rows with {} clients", chosen.len(), a.clients);
    let t0 = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<(TextScore, f64)>>> =
        chosen.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let failure: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..a.clients.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(row) = chosen.get(i) else { break };
                let started = Instant::now();
                match guard.classify_text(&row.text, row.agent()) {
                    Ok(score) => {
                        *results[i].lock().expect("not poisoned") =
                            Some((score, started.elapsed().as_secs_f64() * 1e3));
                    }
                    Err(e) => {
                        *failure.lock().expect("not poisoned") = Some(e.to_string());
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().expect("not poisoned") {
        bail!("classification failed: {e}");
    }
    let scored: Vec<(TextScore, f64)> = results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("not poisoned")
                .expect("every row scored")
        })
        .collect();
    let seconds = t0.elapsed().as_secs_f64();
    let head = guard.head();
    let threshold = |r: &Row| match r.agent() {
        AgentType::User => head.prompt.threshold,
        AgentType::Agent => head.response.threshold,
    };

    let mut groups: BTreeMap<String, (Vec<f64>, Vec<bool>, f64)> = BTreeMap::new();
    let mut flagged_by_source: BTreeMap<String, (usize, usize, u8)> = BTreeMap::new();
    let mut per_code: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (r, (score, _)) in chosen.iter().zip(&scored) {
        let (p, cats) = (&score.p_unsafe, &score.given_unsafe);
        let t = threshold(r);
        for key in [
            format!("{} {}", r.split, r.kind),
            format!("{} {} (without hand-written)", r.split, r.kind),
        ] {
            if key.ends_with("written)") && HAND_WRITTEN.contains(&r.source.as_str()) {
                continue;
            }
            let g = groups.entry(key).or_insert((Vec::new(), Vec::new(), t));
            g.0.push(*p);
            g.1.push(r.label == 1);
        }
        let f = flagged_by_source
            .entry(format!("{} {} {} {}", r.split, r.kind, r.source, r.label))
            .or_insert((0, 0, r.label));
        f.0 += usize::from(*p >= t);
        f.1 += 1;
        if r.label == 1 {
            if let Some(code) = r.codes.first() {
                let top = cats
                    .iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|c| c.0.as_str());
                // Per code, and over all codes of the split ("all").
                for key in [format!("{} {code}", r.split), format!("{} all", r.split)] {
                    let e = per_code.entry(key).or_insert((0, 0, 0));
                    e.0 += 1;
                    e.1 += usize::from(*p >= t);
                    e.2 += usize::from(top == Some(code.as_str()));
                }
            }
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "| split / kind | rows | unsafe | precision | recall | F1 | FPR | AUPRC |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    let mut summary = serde_json::Map::new();
    for (key, (scores, labels, t)) in &groups {
        let m: Metrics = metrics(scores, labels, *t);
        writeln!(
            out,
            "| {key} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            m.n, m.positives, m.precision, m.recall, m.f1, m.fpr, m.auprc
        )?;
        summary.insert(key.clone(), json!(m));
    }
    writeln!(out, "\n| split / kind / source | label | rows | flagged |")?;
    writeln!(out, "|---|---|---|---|")?;
    for (key, (flagged, n, label)) in &flagged_by_source {
        let key = key.rsplit_once(' ').map_or(key.as_str(), |k| k.0);
        writeln!(
            out,
            "| {key} | {} | {n} | {:.1}% |",
            if *label == 1 { "unsafe" } else { "safe" },
            100.0 * *flagged as f64 / *n as f64
        )?;
    }
    writeln!(
        out,
        "\n| split / category | unsafe rows | recall | top category right |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for (key, (n, hit, top)) in &per_code {
        writeln!(
            out,
            "| {key} | {n} | {:.1}% | {:.1}% |",
            100.0 * *hit as f64 / *n as f64,
            100.0 * *top as f64 / *n as f64
        )?;
    }
    let mut lat: Vec<f64> = scored.iter().map(|s| s.1).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    writeln!(
        out,
        "\n{} rows in {seconds:.1} s ({:.1} rows/s, {} clients); latency p50 {:.1} ms, p99 {:.1} ms",
        scored.len(),
        scored.len() as f64 / seconds,
        a.clients,
        pct(0.5),
        pct(0.99)
    )?;
    if let Some(path) = a.out {
        let rows_out: Vec<serde_json::Value> = chosen
            .iter()
            .zip(&scored)
            .map(|(r, (score, ms))| {
                json!({"split": r.split, "kind": r.kind, "source": r.source, "label": r.label,
                       "p_unsafe": score.p_unsafe, "flagged": score.p_unsafe >= threshold(r),
                       "tokens": score.tokens, "ms": ms})
            })
            .collect();
        let doc = json!({"summary": summary, "rows": rows_out,
                         "thresholds": {"prompt": head.prompt.threshold, "response": head.response.threshold}});
        std::fs::write(path, serde_json::to_string(&doc)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// `safegate guard bench`: per-classification latency (p50/p99) and throughput for texts of
/// each length, one caller at a time and several at once (batched by the worker).
pub fn bench(
    cli: &Cli,
    dir: &Path,
    lengths: &[usize],
    clients: &[usize],
    runs: usize,
    threads: usize,
) -> Result<()> {
    let guard = open_for_measuring(cli, dir, threads)?;
    println!("| tokens | windows | clients | p50 ms | p99 ms | classifications/s |");
    println!("|---|---|---|---|---|---|");
    for &len in lengths {
        let ids = crate::cmd_bench::synthetic_prompt(len, 49_152);
        let windows = guard.windows_of_ids(&ids);
        for &c in clients {
            let c = c.max(1);
            // Warm-up: one round of every caller.
            for _ in 0..c {
                guard.score_windows(windows.clone(), AgentType::User)?;
            }
            let next = std::sync::atomic::AtomicUsize::new(0);
            let latencies = std::sync::Mutex::new(Vec::with_capacity(runs));
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..c {
                    s.spawn(|| {
                        while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < runs {
                            let started = Instant::now();
                            if guard
                                .score_windows(windows.clone(), AgentType::User)
                                .is_ok()
                            {
                                latencies
                                    .lock()
                                    .expect("not poisoned")
                                    .push(started.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                    });
                }
            });
            let seconds = t0.elapsed().as_secs_f64();
            let mut lat = latencies.into_inner().expect("not poisoned");
            anyhow::ensure!(lat.len() == runs, "some classifications failed");
            lat.sort_by(f64::total_cmp);
            let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
            println!(
                "| {len} | {} | {c} | {:.1} | {:.1} | {:.1} |",
                windows.len(),
                pct(0.5),
                pct(0.99),
                runs as f64 / seconds
            );
        }
    }
    Ok(())
}
