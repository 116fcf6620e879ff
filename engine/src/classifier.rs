//! Sequence classification: a text-classifier graph (`input_ids`, `attention_mask`, and
//! `token_type_ids` when it takes them, in; `logits` of shape `[batch, labels]` out) with its
//! tokenizer, such as Prompt Guard's DeBERTa exported by Optimum or `torch.onnx`.
//!
//! A text longer than the model's positions is read as overlapping windows, each wrapped the
//! way the tokenizer's post-processor wraps one sequence (`[CLS] ... [SEP]` for DeBERTa), so
//! nothing is cut off; the caller decides how window scores combine (the worst, for a
//! detector). Text is always encoded as plain text: a `[SEP]` a user typed stays text.

use std::path::Path;
use std::str::FromStr;

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use serde_json::Value;
use tokenizers::{Encoding, Token, Tokenizer};

use crate::error::{EngineError, Result};
use crate::model::{read_json, ModelFiles};
use crate::session::{open_session, Provider, SessionOptions};

/// Positions a classifier reads when its config.json does not say (BERT-family models).
const DEFAULT_POSITIONS: usize = 512;

/// Rows per ONNX Runtime run, and tokens (rows times the padded length): on a CPU, batching
/// gains on short rows only (8 rows of 32 tokens: a fifth faster per row on Prompt Guard's
/// shape) and loses a little on long ones (5 windows of 512: 5% slower per row than one
/// by one), and one run of all of a long document's windows would hold a lot of memory.
pub const MAX_BATCH: usize = 8;
pub const MAX_BATCH_TOKENS: usize = 512;

/// Consecutive rows grouped into runs of at most [`MAX_BATCH`] rows and
/// [`MAX_BATCH_TOKENS`] padded tokens (a longer row runs alone). Sorted rows pad least.
pub fn batches(rows: &[Vec<u32>]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut width = 0;
    for (i, row) in rows.iter().enumerate() {
        let w = width.max(row.len());
        let n = i - start + 1;
        if n > 1 && (n > MAX_BATCH || n * w > MAX_BATCH_TOKENS) {
            out.push(start..i);
            start = i;
            width = row.len();
        } else {
            width = w;
        }
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    out
}

/// One ONNX Runtime session of a sequence classifier and its tokenizer.
pub struct SequenceClassifier {
    session: Session,
    tokenizer: Tokenizer,
    labels: Vec<String>,
    /// What the post-processor puts before and after one sequence's tokens.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    pad_id: u32,
    positions: usize,
    token_types: bool,
    logits_output: String,
    pub provider: Provider,
}

fn layout_err(dir: &Path, message: impl Into<String>) -> EngineError {
    EngineError::UnsupportedLayout {
        path: dir.to_path_buf(),
        message: message.into(),
    }
}

/// Label names by index from config.json's `id2label` (`{"0": "BENIGN", ...}`); `LABEL_i`
/// where it has none.
fn labels_from_config(config: &Value, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            config
                .pointer(&format!("/id2label/{i}"))
                .and_then(Value::as_str)
                .map_or_else(|| format!("LABEL_{i}"), str::to_string)
        })
        .collect()
}

/// The ids the tokenizer's post-processor wraps a single sequence in: it is asked to process
/// a one-token sequence, and whatever lands before and after that token is the wrapping.
fn wrapping(tokenizer: &Tokenizer) -> Result<(Vec<u32>, Vec<u32>)> {
    let marker = Encoding::from_tokens(vec![Token::new(u32::MAX, String::new(), (0, 0))], 0);
    let wrapped = tokenizer
        .post_process(marker, None, true)
        .map_err(|e| EngineError::Tokenizer(format!("post-processor: {e}")))?;
    let ids = wrapped.get_ids();
    let at = ids.iter().position(|&id| id == u32::MAX).ok_or_else(|| {
        EngineError::Tokenizer("the post-processor dropped the sequence it wraps".into())
    })?;
    Ok((ids[..at].to_vec(), ids[at + 1..].to_vec()))
}

/// Loads tokenizer.json so that no text can produce a special token's id. Special-token
/// strings are kept whole by `encode_special_tokens`, but a SentencePiece Unigram model
/// converted to tokenizer.json (DeBERTa-v3's) also lists `[CLS]`, `[SEP]`, `[PAD]`, `[UNK]`
/// as ordinary pieces, and would match them in typed text; those pieces are renamed to a
/// string no one can type (their ids, and the post-processor's use of them, stay).
fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let cannot = |e: &dyn std::fmt::Display| {
        EngineError::Tokenizer(format!("cannot load {}: {e}", path.display()))
    };
    let text = std::fs::read_to_string(path).map_err(|e| cannot(&e))?;
    let mut json: Value = serde_json::from_str(&text).map_err(|e| cannot(&e))?;
    let specials: Vec<String> = json
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("special").and_then(Value::as_bool) == Some(true))
        .filter_map(|t| t.get("content").and_then(Value::as_str).map(str::to_string))
        .collect();
    let nonce: u64 = rand::random::<u64>() | 1;
    if json.pointer("/model/type").and_then(Value::as_str) == Some("Unigram") {
        if let Some(vocab) = json
            .pointer_mut("/model/vocab")
            .and_then(Value::as_array_mut)
        {
            for (id, entry) in vocab.iter_mut().enumerate() {
                let piece = entry
                    .get_mut(0)
                    .filter(|p| p.as_str().is_some_and(|p| specials.iter().any(|s| s == p)));
                if let Some(piece) = piece {
                    *piece = Value::String(format!("\u{E000}{nonce:x}:{id}\u{E001}"));
                }
            }
        }
    }
    Tokenizer::from_str(&json.to_string()).map_err(|e| cannot(&e))
}

impl SequenceClassifier {
    pub fn open(dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let files = ModelFiles::locate(dir)?;
        let config = match dir.join("config.json") {
            p if p.is_file() => read_json(dir, &p)?,
            _ => Value::Null,
        };
        let mut tokenizer = load_tokenizer(&files.tokenizer)?;
        // Windows replace truncation (a saved `truncation` would silently cut a long text),
        // rows are padded here, and special-token strings in a text stay text.
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer.set_encode_special_tokens(true);
        let (prefix, suffix) = wrapping(&tokenizer)?;

        let (session, provider) = open_session(&files.onnx, opts)?;
        let mut token_types = false;
        for input in session.inputs() {
            match input.name() {
                "input_ids" | "attention_mask" => {}
                "token_type_ids" => token_types = true,
                other => {
                    return Err(layout_err(
                        dir,
                        format!(
                            "not a sequence classifier: unexpected input `{other}` (expected \
                             input_ids, attention_mask and optionally token_type_ids)"
                        ),
                    ))
                }
            }
            if !matches!(
                input.dtype(),
                ValueType::Tensor {
                    ty: TensorElementType::Int64,
                    ..
                }
            ) {
                return Err(layout_err(
                    dir,
                    format!("input `{}` is not int64", input.name()),
                ));
            }
        }
        if !session.inputs().iter().any(|i| i.name() == "input_ids") {
            return Err(layout_err(
                dir,
                "not a sequence classifier: no `input_ids` input",
            ));
        }
        let output = session
            .outputs()
            .iter()
            .find(|o| o.name() == "logits")
            .or_else(|| (session.outputs().len() == 1).then(|| &session.outputs()[0]))
            .ok_or_else(|| layout_err(dir, "not a sequence classifier: no `logits` output"))?;
        let count = match output.dtype() {
            ValueType::Tensor { shape, ty, .. } if shape.len() == 2 => {
                if *ty != TensorElementType::Float32 {
                    return Err(layout_err(dir, "the logits are not float32"));
                }
                shape[1]
            }
            _ => {
                return Err(layout_err(
                    dir,
                    "not a sequence classifier: the logits are not [batch, labels]",
                ))
            }
        };
        // A dynamic label axis: config.json's labels say how many.
        let count = if count > 0 {
            count as usize
        } else {
            config
                .get("id2label")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
        };
        if count < 2 {
            return Err(layout_err(
                dir,
                "cannot tell how many labels the classifier has (no fixed logits width and \
                 no id2label in config.json)",
            ));
        }
        let positions = config
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_POSITIONS, |n| n as usize);
        if positions <= prefix.len() + suffix.len() {
            return Err(layout_err(
                dir,
                format!("max_position_embeddings {positions} leaves no room for text"),
            ));
        }
        let pad_id = config
            .get("pad_token_id")
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .unwrap_or(0);
        Ok(Self {
            logits_output: output.name().to_string(),
            session,
            tokenizer,
            labels: labels_from_config(&config, count),
            prefix,
            suffix,
            pad_id,
            positions,
            token_types,
            provider,
        })
    }

    /// Label names, by logit index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Text tokens per window: the model's positions less the wrapping.
    pub fn window_len(&self) -> usize {
        self.positions - self.prefix.len() - self.suffix.len()
    }

    /// How far apart windows start: they overlap by an eighth, so a sentence cut at one
    /// window's edge is whole in the next.
    pub fn window_stride(&self) -> usize {
        let len = self.window_len();
        (len - len / 8).max(1)
    }

    /// A text's tokens as plain text (no wrapping, nothing cut).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// The model inputs for a text's tokens: overlapping windows of at most
    /// [`Self::window_len`] tokens, [`Self::window_stride`] apart, the last ending at the
    /// end, each wrapped. An empty text is one wrapped empty window.
    pub fn windows(&self, ids: &[u32]) -> Vec<Vec<u32>> {
        windows(ids, self.window_len(), self.window_stride())
            .into_iter()
            .map(|body| [self.prefix.as_slice(), &body, self.suffix.as_slice()].concat())
            .collect()
    }

    /// Class probabilities (softmax of the logits) of each row, run as the padded
    /// [`batches`] of `rows`.
    pub fn probabilities(&mut self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(rows.len());
        for range in batches(rows) {
            out.extend(self.run(&rows[range])?);
        }
        Ok(out)
    }

    fn run(&mut self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let b = rows.len();
        let s = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        if s > self.positions {
            return Err(EngineError::InvalidRequest(format!(
                "a row of {s} tokens is longer than the classifier's {} positions",
                self.positions
            )));
        }
        let mut ids = vec![self.pad_id as i64; b * s];
        let mut mask = vec![0i64; b * s];
        for (r, row) in rows.iter().enumerate() {
            for (c, &t) in row.iter().enumerate() {
                ids[r * s + c] = t as i64;
                mask[r * s + c] = 1;
            }
        }
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                Tensor::<i64>::from_array(([b, s], ids))?.into(),
            ),
            (
                "attention_mask".into(),
                Tensor::<i64>::from_array(([b, s], mask))?.into(),
            ),
        ];
        if self.token_types {
            inputs.push((
                "token_type_ids".into(),
                Tensor::<i64>::from_array(([b, s], vec![0i64; b * s]))?.into(),
            ));
        }
        let n = self.labels.len();
        let name = self.logits_output.clone();
        let outputs = self.session.run(inputs)?;
        let value = outputs
            .get(name.as_str())
            .ok_or_else(|| EngineError::Ort(format!("the classifier returned no `{name}`")))?;
        let (shape, data) = value.try_extract_tensor::<f32>()?;
        if shape.len() != 2 || shape[0] as usize != b || shape[1] as usize != n {
            return Err(EngineError::Ort(format!(
                "the classifier returned logits of shape {shape:?}, expected [{b}, {n}]"
            )));
        }
        Ok(data.chunks(n).map(softmax).collect())
    }
}

/// Overlapping windows of at most `len` tokens, `stride` apart, the last one ending at the
/// end (no token left out). The embedded guard and the sequence classifier both read long
/// texts this way.
pub fn windows(ids: &[u32], len: usize, stride: usize) -> Vec<Vec<u32>> {
    if ids.len() <= len {
        return vec![ids.to_vec()];
    }
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + len).min(ids.len());
        out.push(ids[end - len.min(end)..end].to_vec());
        if end == ids.len() {
            break;
        }
        start += stride;
    }
    out
}

/// Probabilities from logits, computed stably.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] < 1e-30);
        let q = softmax(&[0.1, -2.0, 3.0]);
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(q[2] > q[0] && q[0] > q[1]);
    }

    #[test]
    fn batches_bound_rows_and_padded_tokens() {
        let rows = |lens: &[usize]| lens.iter().map(|&n| vec![1; n]).collect::<Vec<_>>();
        // Short rows: 8 at a time.
        assert_eq!(batches(&rows(&[10; 20])), vec![0..8, 8..16, 16..20]);
        // Long rows: alone, even over the token bound.
        assert_eq!(batches(&rows(&[512, 512, 600])), vec![0..1, 1..2, 2..3]);
        // Growing rows: a batch closes before its padded size passes the bound.
        assert_eq!(
            batches(&rows(&[100, 100, 200, 250, 300])),
            vec![0..2, 2..4, 4..5]
        );
        assert_eq!(batches(&rows(&[])), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn labels_come_from_id2label_or_are_numbered() {
        let config = serde_json::json!({"id2label": {"0": "BENIGN", "2": "JAILBREAK"}});
        assert_eq!(
            labels_from_config(&config, 3),
            ["BENIGN", "LABEL_1", "JAILBREAK"]
        );
        assert_eq!(labels_from_config(&Value::Null, 2), ["LABEL_0", "LABEL_1"]);
    }
}
