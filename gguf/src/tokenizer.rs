//! `tokenizer.json` (Hugging Face `tokenizers` format) rebuilt from a GGUF vocabulary
//! (`tokenizer.ggml.*`): byte-level BPE with the pre-tokenizer llama.cpp names in
//! `tokenizer.ggml.pre`.

use serde_json::{json, Value as Json};

use crate::{GgufError, GgufFile, Value};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The Llama 3 pre-tokenizer split (as in Meta's tokenizer.json).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The vocabulary as stored in GGUF metadata.
pub struct Vocab {
    pub model: String,
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i64>,
    pub merges: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, GgufError> {
    v.as_array()
        .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
        .ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            message: "not an array of strings".into(),
        })
}

impl Vocab {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, GgufError> {
        let get = |key: &str| {
            g.get(key).ok_or_else(|| GgufError::Metadata {
                key: key.into(),
                message: "missing".into(),
            })
        };
        let model = get("tokenizer.ggml.model")?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let tokens = strings(get("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
        let token_types = match g.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|t| t.as_f64().map(|f| f as i64))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| GgufError::Metadata {
                    key: "tokenizer.ggml.token_type".into(),
                    message: "not an array of integers".into(),
                })?,
            None => vec![1; tokens.len()],
        };
        if token_types.len() != tokens.len() {
            return Err(GgufError::Metadata {
                key: "tokenizer.ggml.token_type".into(),
                message: format!("{} types for {} tokens", token_types.len(), tokens.len()),
            });
        }
        let merges = match g.get("tokenizer.ggml.merges") {
            Some(v) => strings(v, "tokenizer.ggml.merges")?,
            None => Vec::new(),
        };
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        Ok(Self {
            model,
            pre,
            tokens,
            token_types,
            merges,
        })
    }

    /// The `tokenizer.json` document.
    pub fn to_tokenizer_json(&self) -> Result<Json, GgufError> {
        if self.model != "gpt2" {
            return Err(GgufError::Unsupported(format!(
                "tokenizer.ggml.model `{}` is not supported: only byte-level BPE (`gpt2`: Llama 3, SmolLM, ...) is; SentencePiece (`llama`) vocabularies are not",
                self.model
            )));
        }
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let (pre_tokenizer, ignore_merges) = match self.pre.as_str() {
            "llama-bpe" | "llama3" => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                    byte_level(false),
                ]}),
                true,
            ),
            "smollm" | "starcoder" | "refact" | "codeshell" => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    byte_level(true),
                ]}),
                false,
            ),
            "gpt2" | "default" | "gpt-2" => (byte_level(true), false),
            other => {
                return Err(GgufError::Unsupported(format!(
                    "tokenizer.ggml.pre `{other}` is not supported (llama-bpe, smollm, gpt2 are)"
                )))
            }
        };
        let vocab: serde_json::Map<String, Json> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        if vocab.len() != self.tokens.len() {
            return Err(GgufError::Metadata {
                key: "tokenizer.ggml.tokens".into(),
                message: "the vocabulary has duplicate tokens".into(),
            });
        }
        let merges = self
            .merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| json!([a, b]))
                    .ok_or_else(|| GgufError::Metadata {
                        key: "tokenizer.ggml.merges".into(),
                        message: format!("merge #{i} `{m}` is not two tokens"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let added: Vec<Json> = self
            .tokens
            .iter()
            .zip(&self.token_types)
            .enumerate()
            .filter(|(_, (_, t))| matches!(**t, CONTROL | USER_DEFINED))
            .map(|(id, (content, t))| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": *t == CONTROL})
            })
            .collect();
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
            },
        }))
    }
}
