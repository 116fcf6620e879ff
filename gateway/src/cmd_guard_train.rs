//! `safegate guard train` (built with the `train` feature): the embedded guard's head, trained on the
//! data set `scripts/guard/build_data.py` writes (JSON lines with text, kind, label, codes,
//! source and split).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use safegate_engine::session::SessionOptions;
use safegate_engine::{Encoder, Pooling};
use safegate_guard::embedded::{wrapped, Head, Wrap, HEAD_FORMAT};
use safegate_guard::measure::{choose_threshold, macro_fpr, metrics};
use safegate_guard::train::{
    category_head, fit_logistic, fit_softmax, fit_standardizer, linear_head,
};
use safegate_policies::Taxonomy;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::Cli;

use crate::cmd_guard_eval::{read_rows, Row, CODES};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pooled features of the last `window` tokens of each row's text, cached on disk by
/// (encoder, window, text): extraction is the slow part, training and selection are not.
struct FeatureCache {
    path: PathBuf,
    dim: usize,
    map: HashMap<[u8; 32], Vec<f32>>,
}

impl FeatureCache {
    fn open(
        dir: &Path,
        encoder_dir: &Path,
        layers: &[String],
        extraction: &Extraction,
    ) -> Result<Self> {
        let graph = std::fs::read(encoder_dir.join("model.onnx"))
            .with_context(|| format!("{}", encoder_dir.display()))?;
        let mut parts = vec![
            graph,
            layers.join(",").into_bytes(),
            extraction.window.to_le_bytes().to_vec(),
        ];
        // Mean pooling without a wrapper keeps the key it always had (existing caches stay).
        if extraction.pooling != Pooling::Mean
            || !extraction.sides.0.is_empty()
            || !extraction.sides.1.is_empty()
        {
            parts.push(format!("{:?}{:?}", extraction.pooling, extraction.sides).into_bytes());
        }
        let key = sha256_hex(&parts.concat());
        let path = dir.join(format!("features-{}.bin", &key[..16]));
        let mut cache = Self {
            path,
            dim: 0,
            map: HashMap::new(),
        };
        if let Ok(bytes) = std::fs::read(&cache.path) {
            if bytes.len() >= 4 {
                let dim = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
                let rec = 32 + 4 * dim;
                if dim > 0 && (bytes.len() - 4) % rec == 0 {
                    cache.dim = dim;
                    for r in bytes[4..].chunks_exact(rec) {
                        let key: [u8; 32] = r[..32].try_into().expect("32 bytes");
                        let v = r[32..]
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                            .collect();
                        cache.map.insert(key, v);
                    }
                }
            }
        }
        Ok(cache)
    }

    fn save(&self) -> Result<()> {
        let mut out = Vec::with_capacity(4 + self.map.len() * (32 + 4 * self.dim));
        out.extend((self.dim as u32).to_le_bytes());
        let mut keys: Vec<&[u8; 32]> = self.map.keys().collect();
        keys.sort();
        for k in keys {
            out.extend(k);
            for v in &self.map[k] {
                out.extend(v.to_le_bytes());
            }
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, out).with_context(|| format!("{}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("{}", self.path.display()))?;
        Ok(())
    }
}

fn row_key(row: &Row) -> [u8; 32] {
    // An attack row is read as a prompt (the user's turn): the same features.
    let kind = if row.kind == "attack" {
        "prompt"
    } else {
        &row.kind
    };
    // Keyed by the text as the classifier reads it (whitespace folded, as at serving time):
    // features cached before the fold stay valid for every text it leaves alone.
    let text = safegate_guard::normalize::fold_whitespace(&row.text);
    Sha256::digest(format!("{kind}\u{0}{text}").as_bytes()).into()
}

/// How features are read off the encoder: the window, the pooling and the wrapper's ids.
struct Extraction {
    window: usize,
    pooling: Pooling,
    sides: (Vec<u32>, Vec<u32>),
}

/// Extracts the features of `rows` that the cache lacks (batched by length).
fn extract_missing(
    encoder: &mut Encoder,
    cache: &mut FeatureCache,
    rows: &[&Row],
    extraction: &Extraction,
) -> Result<()> {
    let mut missing: Vec<(usize, Vec<u32>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if !cache.map.contains_key(&row_key(r)) {
            let text = safegate_guard::normalize::fold_whitespace(&r.text);
            let mut ids = encoder.tokenizer().encode_plain(&text)?;
            if ids.is_empty() {
                ids = encoder.tokenizer().encode_plain(" ")?;
            }
            let start = ids.len().saturating_sub(extraction.window);
            missing.push((i, wrapped(&ids[start..], &extraction.sides)));
        }
    }
    if !missing.is_empty() {
        missing.sort_by_key(|(_, ids)| ids.len());
        let tokens: usize = missing.iter().map(|(_, ids)| ids.len()).sum();
        eprintln!(
            "extracting features: {} texts, {tokens} tokens",
            missing.len()
        );
        let t0 = Instant::now();
        let mut done = 0;
        for chunk in missing.chunks(16) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|(_, ids)| ids.clone()).collect();
            let vectors = encoder.pooled_by(&batch, extraction.pooling)?;
            for ((i, _), v) in chunk.iter().zip(vectors) {
                cache.dim = v.len();
                cache.map.insert(row_key(rows[*i]), v);
            }
            done += chunk.len();
            if done % 320 < 16 {
                let so_far: usize = missing[..done].iter().map(|(_, ids)| ids.len()).sum();
                eprintln!(
                    "  {done}/{} ({:.0} tokens/s)",
                    missing.len(),
                    so_far as f64 / t0.elapsed().as_secs_f64()
                );
                cache.save()?;
            }
        }
        cache.save()?;
    }
    Ok(())
}

pub struct TrainArgs<'a> {
    pub data: &'a Path,
    pub encoder: &'a Path,
    pub out: &'a Path,
    pub seed: u64,
    pub window: usize,
    pub stride: usize,
    pub max_fpr: f64,
    pub max_fpr_response: f64,
    pub max_fpr_attack: f64,
    pub pooling: Pooling,
    pub wrap: Option<Wrap>,
    pub sentence_windows: Option<usize>,
    pub threads: usize,
}

pub fn train(cli: &Cli, a: &TrainArgs) -> Result<()> {
    let t0 = Instant::now();
    safegate_engine::runtime::init(cli.ort_lib.as_deref())?;
    let data_bytes = std::fs::read(a.data).with_context(|| format!("{}", a.data.display()))?;
    let rows = read_rows(a.data)?;
    let mut encoder = Encoder::open(
        a.encoder,
        &SessionOptions {
            intra_threads: a.threads,
            ..Default::default()
        },
    )?;
    let layers = encoder.layers().to_vec();
    let extraction = Extraction {
        window: a.window,
        pooling: a.pooling,
        sides: match &a.wrap {
            Some(w) => w.ids(encoder.tokenizer())?,
            None => (Vec::new(), Vec::new()),
        },
    };
    let cache_dir = a.data.parent().unwrap_or(Path::new("."));
    let mut cache = FeatureCache::open(cache_dir, a.encoder, &layers, &extraction)?;
    // Features of every row are cached (test, dev and reserved rows too: short, and then
    // heads can be compared offline on any split, scripts/guard/compare_heads.py); only
    // train and val are read here.
    let all: Vec<&Row> = rows.iter().collect();
    extract_missing(&mut encoder, &mut cache, &all, &extraction)?;
    let by_id: Vec<(&Row, &Vec<f32>)> = rows
        .iter()
        .filter(|r| r.split == "train" || r.split == "val")
        .map(|r| (r, &cache.map[&row_key(r)]))
        .collect();
    // Each row's source as a number, for the per-source false positive budget.
    let sources: Vec<&str> = {
        let mut s: Vec<&str> = by_id.iter().map(|(r, _)| r.source.as_str()).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    // Features, labels and source numbers of one split and the kinds of rows a head reads.
    let select = |split: &str, kinds: &[&str]| -> (Vec<&[f32]>, Vec<bool>, Vec<usize>) {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (r, f) in by_id
            .iter()
            .filter(|(r, _)| r.split == split && kinds.contains(&r.kind.as_str()))
        {
            out.0.push(f.as_slice());
            out.1.push(r.label == 1);
            out.2
                .push(sources.binary_search(&r.source.as_str()).unwrap_or(0));
        }
        out
    };

    let mut report = serde_json::Map::new();
    let mut heads = Vec::new();
    let has_attack = rows.iter().any(|r| r.kind == "attack");
    // The sentence head, when sentences are read and there are sentence rows: the prompt
    // rows and the sentences of benign documents.
    let has_sentence = a.sentence_windows.is_some() && rows.iter().any(|r| r.kind == "sentence");
    let mut kinds = vec!["prompt", "response"];
    if has_attack {
        kinds.push("attack");
    }
    if has_sentence {
        kinds.push("sentence");
    }
    for kind in &kinds {
        let kind: &str = kind;
        let read: &[&str] = match kind {
            "sentence" => &["prompt", "sentence"],
            _ => std::slice::from_ref(&kind),
        };
        let (train_x, train_y, _) = select("train", read);
        let (val_x, val_y, val_sources) = select("val", read);
        if train_x.is_empty() || val_x.is_empty() {
            bail!(
                "{}: no {kind} rows in the train or val split",
                a.data.display()
            );
        }
        let standardizer = fit_standardizer(&train_x);
        let std_train: Vec<Vec<f32>> = train_x.iter().map(|x| standardizer.apply(x)).collect();
        let mut best: Option<(f64, f64, (Vec<f32>, f32))> = None;
        for l2 in [1e-3, 1e-2, 3e-2, 1e-1, 3e-1] {
            let fitted = fit_logistic(&std_train, &train_y, l2, 300, a.seed);
            let head = linear_head(standardizer.clone(), fitted.clone(), 0.5);
            let scores: Vec<f64> = val_x.iter().map(|x| head.p_unsafe(x)).collect();
            let m = metrics(&scores, &val_y, 0.5);
            eprintln!(
                "{kind}: l2 {l2}: val AUPRC {:.4} F1@0.5 {:.4} FPR@0.5 {:.4}",
                m.auprc, m.f1, m.fpr
            );
            if best.as_ref().is_none_or(|b| m.auprc > b.0) {
                best = Some((m.auprc, l2, fitted));
            }
        }
        let (_, l2, fitted) = best.expect("at least one fit");
        let head = linear_head(standardizer, fitted, 0.5);
        let scores: Vec<f64> = val_x.iter().map(|x| head.p_unsafe(x)).collect();
        let cap = match kind {
            "prompt" | "sentence" => a.max_fpr,
            "attack" => a.max_fpr_attack,
            _ => a.max_fpr_response,
        };
        let threshold = choose_threshold(&scores, &val_y, &val_sources, cap);
        let m = metrics(&scores, &val_y, threshold);
        eprintln!(
            "{kind}: chose l2 {l2}, threshold {threshold:.4}: val precision {:.4} recall {:.4} F1 {:.4} FPR {:.4} (per-source mean {:.4}) AUPRC {:.4}",
            m.precision, m.recall, m.f1, m.fpr, macro_fpr(&scores, &val_y, &val_sources, threshold), m.auprc
        );
        report.insert(
            kind.into(),
            json!({"l2": l2, "threshold": threshold, "val": m, "train_rows": train_x.len(), "val_rows": val_x.len()}),
        );
        // Shift the bias so that the chosen operating point is P(unsafe) = 0.5: the policies'
        // usual threshold then means what validation chose, and stricter policies (0.3)
        // still move it the expected way.
        let t = threshold.clamp(1e-6, 1.0 - 1e-6);
        let bias = head.bias - (t / (1.0 - t)).ln() as f32;
        let head = linear_head(head.standardizer, (head.weights, bias), 0.5);
        if kind == "attack" {
            // Held-out splits at the chosen point (features are cached for every row):
            // test, PyRIT's templates never trained on (external), everyday dev traffic.
            let mut held = serde_json::Map::new();
            for split in ["test", "external", "dev"] {
                let (x, y): (Vec<f64>, Vec<bool>) = rows
                    .iter()
                    .filter(|r| r.kind == "attack" && r.split == split)
                    .map(|r| (head.p_unsafe(&cache.map[&row_key(r)]), r.label == 1))
                    .unzip();
                let positives = y.iter().filter(|l| **l).count();
                let flagged_pos = x.iter().zip(&y).filter(|(s, l)| **l && **s >= 0.5).count();
                let negatives = y.len() - positives;
                let flagged_neg = x.iter().zip(&y).filter(|(s, l)| !**l && **s >= 0.5).count();
                let recall = flagged_pos as f64 / positives.max(1) as f64;
                let fpr = flagged_neg as f64 / negatives.max(1) as f64;
                eprintln!(
                    "attack: {split}: recall {recall:.4} ({flagged_pos}/{positives}), benign flagged {fpr:.4} ({flagged_neg}/{negatives})"
                );
                held.insert(split.into(), json!({"recall": recall, "positives": positives, "benign_flagged": fpr, "benign": negatives}));
            }
            if let Some(entry) = report.get_mut("attack").and_then(|v| v.as_object_mut()) {
                entry.insert("held_out".into(), serde_json::Value::Object(held));
            }
        }
        heads.push(head);
    }

    // The category given unsafe: every unsafe training row, its first code.
    let (cat_x, cat_y): (Vec<&[f32]>, Vec<usize>) = by_id
        .iter()
        .filter(|(r, _)| r.split == "train" && r.label == 1 && !r.codes.is_empty())
        .map(|(r, f)| {
            let c = CODES
                .iter()
                .position(|c| *c == r.codes[0])
                .expect("codes checked on read");
            (f.as_slice(), c)
        })
        .unzip();
    let cat_std = fit_standardizer(&cat_x);
    let cat_train: Vec<Vec<f32>> = cat_x.iter().map(|x| cat_std.apply(x)).collect();
    let (val_cx, val_cy): (Vec<&[f32]>, Vec<&str>) = by_id
        .iter()
        .filter(|(r, _)| r.split == "val" && r.label == 1 && !r.codes.is_empty())
        .map(|(r, f)| (f.as_slice(), r.codes[0].as_str()))
        .unzip();
    let mut best_categories = None;
    for l2 in [1e-3, 1e-2, 3e-2, 1e-1] {
        let fitted = fit_softmax(&cat_train, &cat_y, CODES.len(), l2, 300, a.seed);
        let head = category_head(
            cat_std.clone(),
            CODES.iter().map(|c| c.to_string()).collect(),
            fitted,
        );
        let correct = val_cx
            .iter()
            .zip(&val_cy)
            .filter(|(x, code)| {
                head.given_unsafe(x)
                    .into_iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .is_some_and(|(c, _)| c == **code)
            })
            .count();
        let accuracy = correct as f64 / val_cx.len().max(1) as f64;
        eprintln!(
            "categories: l2 {l2}: val top-1 accuracy {accuracy:.4} on {} unsafe rows",
            val_cx.len()
        );
        if best_categories
            .as_ref()
            .is_none_or(|(acc, _, _)| accuracy > *acc)
        {
            best_categories = Some((accuracy, l2, head));
        }
    }
    let (accuracy, cat_l2, categories) = best_categories.expect("at least one fit");
    eprintln!("categories: chose l2 {cat_l2}");
    report.insert(
        "categories".into(),
        json!({"l2": cat_l2, "val_top1_accuracy": accuracy, "train_rows": cat_x.len()}),
    );

    let sentence = if has_sentence { heads.pop() } else { None };
    let attack = if has_attack { heads.pop() } else { None };
    let response = heads.pop().expect("two heads");
    let prompt = heads.pop().expect("two heads");
    let head = Head {
        format: HEAD_FORMAT.into(),
        taxonomy: Taxonomy::LlamaGuard2,
        layers,
        window_tokens: a.window,
        window_stride: a.stride,
        pooling: a.pooling,
        wrap: a.wrap.clone(),
        sentence_windows: a.sentence_windows,
        prompt,
        response,
        categories,
        attack,
        sentence,
        training: json!({
            "command": format!("safegate guard train --data {} --encoder {} --out {} --seed {} --window {} --stride {} --max-fpr {} --max-fpr-response {} --max-fpr-attack {} --pooling {}{}{}",
                a.data.display(), a.encoder.display(), a.out.display(), a.seed, a.window, a.stride, a.max_fpr, a.max_fpr_response, a.max_fpr_attack,
                a.pooling.as_str(),
                a.wrap.as_ref().map(|w| format!(" --wrap {:?}", format!("{}{{text}}{}", w.prefix, w.suffix))).unwrap_or_default(),
                a.sentence_windows.map(|n| format!(" --sentence-windows {n}")).unwrap_or_default()),
            "seed": a.seed,
            "data_sha256": sha256_hex(&data_bytes),
            "report": report,
        }),
    };
    let text = serde_json::to_string(&head)?;
    let tmp = a.out.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, a.out).with_context(|| format!("{}", a.out.display()))?;
    eprintln!(
        "wrote {} in {:.1} s",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
