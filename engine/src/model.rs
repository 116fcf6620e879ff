//! Model folders: reading `config.json` (Optimum) or `genai_config.json` (onnxruntime-genai),
//! and recognising the ONNX graph's layout from its input names.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{EngineError, Result};

/// The two ONNX layouts of Llama-family decoders found in the wild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Optimum export: `position_ids` is an input; attention is plain ops.
    Optimum,
    /// onnxruntime-genai builder: no `position_ids` (GroupQueryAttention with fused rotary).
    Genai,
}

/// What the engine needs to know about a model, from its config file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The files of a model folder, checked for presence.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub chat_template_file: Option<PathBuf>,
}

fn model_err(dir: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Model {
        path: dir.to_path_buf(),
        message: message.into(),
    }
}

pub(crate) fn read_json(dir: &Path, path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| model_err(dir, format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        model_err(
            dir,
            format!(
                "{} is not valid JSON (line {}, column {}): {e}",
                path.display(),
                e.line(),
                e.column()
            ),
        )
    })
}

impl ModelFiles {
    pub fn locate(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(model_err(dir, "not a folder"));
        }
        let onnx = dir.join("model.onnx");
        let onnx = if onnx.is_file() {
            onnx
        } else {
            // onnxruntime-genai names the file in genai_config.json.
            let named = dir.join("genai_config.json").is_file().then(|| {
                read_json(dir, &dir.join("genai_config.json"))
                    .ok()
                    .and_then(|v| {
                        v.pointer("/model/decoder/filename")
                            .and_then(Value::as_str)
                            .map(|f| dir.join(f))
                    })
            });
            named
                .flatten()
                .filter(|p| p.is_file())
                .ok_or_else(|| model_err(dir, "missing model.onnx"))?
        };
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(model_err(dir, "missing tokenizer.json"));
        }
        let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Ok(Self {
            dir: dir.to_path_buf(),
            onnx,
            tokenizer,
            tokenizer_config: opt("tokenizer_config.json"),
            chat_template_file: opt("chat_template.jinja"),
        })
    }
}

fn as_usize(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).map(|n| n as usize)
}

fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `genai_config.json` if present, else Optimum's `config.json`; merges the EOS ids
    /// of `generation_config.json` when it exists (Llama 3 ends turns with `<|eot_id|>`).
    pub fn load(dir: &Path) -> Result<Self> {
        let genai = dir.join("genai_config.json");
        let optimum = dir.join("config.json");
        let mut cfg = if genai.is_file() {
            Self::from_genai(dir, &read_json(dir, &genai)?)?
        } else if optimum.is_file() {
            Self::from_optimum(dir, &read_json(dir, &optimum)?)?
        } else {
            return Err(model_err(
                dir,
                "missing config.json (Optimum) or genai_config.json (onnxruntime-genai)",
            ));
        };
        let generation = dir.join("generation_config.json");
        if generation.is_file() {
            for id in id_list(read_json(dir, &generation)?.get("eos_token_id")) {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
        }
        Ok(cfg)
    }

    fn from_optimum(dir: &Path, v: &Value) -> Result<Self> {
        let need = |key: &str| {
            as_usize(v.get(key))
                .ok_or_else(|| model_err(dir, format!("config.json: missing or invalid `{key}`")))
        };
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let head_dim = as_usize(v.get("head_dim")).unwrap_or(hidden / heads.max(1));
        Ok(Self {
            num_layers: need("num_hidden_layers")?,
            num_kv_heads: as_usize(v.get("num_key_value_heads")).unwrap_or(heads),
            head_dim,
            vocab_size: need("vocab_size")?,
            context_length: need("max_position_embeddings")?,
            bos_token_id: v
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|n| n as u32),
            eos_token_ids: id_list(v.get("eos_token_id")),
        })
    }

    fn from_genai(dir: &Path, v: &Value) -> Result<Self> {
        let need = |ptr: &str| {
            as_usize(v.pointer(ptr)).ok_or_else(|| {
                model_err(
                    dir,
                    format!("genai_config.json: missing or invalid `{ptr}`"),
                )
            })
        };
        Ok(Self {
            num_layers: need("/model/decoder/num_hidden_layers")?,
            num_kv_heads: need("/model/decoder/num_key_value_heads")?,
            head_dim: need("/model/decoder/head_size")?,
            vocab_size: need("/model/vocab_size")?,
            context_length: need("/model/context_length")?,
            bos_token_id: v
                .pointer("/model/bos_token_id")
                .and_then(Value::as_u64)
                .map(|n| n as u32),
            eos_token_ids: id_list(v.pointer("/model/eos_token_id")),
        })
    }
}

/// The graph's inputs, recognised. `kv_inputs[i]` is (key, value) input names of layer i.
#[derive(Debug, Clone)]
pub struct GraphSignature {
    pub layout: Layout,
    /// The graph takes `logits_positions` `[batch, k]` and returns logits for those
    /// positions only (`[batch, k, vocabulary]`); otherwise for every position.
    pub selects_logits: bool,
    pub kv_inputs: Vec<(String, String)>,
    pub kv_outputs: Vec<(String, String)>,
}

/// Recognises the layout from the graph's input and output names, or says exactly what was
/// expected and what was found.
pub fn recognise_layout(
    dir: &Path,
    inputs: &[String],
    outputs: &[String],
    num_layers: usize,
) -> Result<GraphSignature> {
    let has = |list: &[String], name: &str| list.iter().any(|n| n == name);
    let mut missing = Vec::new();
    for name in ["input_ids", "attention_mask"] {
        if !has(inputs, name) {
            missing.push(format!("input `{name}`"));
        }
    }
    if !has(outputs, "logits") {
        missing.push("output `logits`".into());
    }
    let mut kv_inputs = Vec::new();
    let mut kv_outputs = Vec::new();
    for i in 0..num_layers {
        let (pk, pv) = (
            format!("past_key_values.{i}.key"),
            format!("past_key_values.{i}.value"),
        );
        let (ok, ov) = (format!("present.{i}.key"), format!("present.{i}.value"));
        for (list, name, kind) in [
            (inputs, &pk, "input"),
            (inputs, &pv, "input"),
            (outputs, &ok, "output"),
            (outputs, &ov, "output"),
        ] {
            if !has(list, name) {
                missing.push(format!("{kind} `{name}`"));
            }
        }
        kv_inputs.push((pk, pv));
        kv_outputs.push((ok, ov));
    }
    let known = |n: &String| {
        n == "input_ids"
            || n == "attention_mask"
            || n == "position_ids"
            || n == "logits_positions"
            || n.starts_with("past_key_values.")
    };
    let unexpected: Vec<&String> = inputs.iter().filter(|n| !known(n)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        let mut msg = String::from(
            "expected inputs input_ids, attention_mask, [position_ids], [logits_positions], \
             past_key_values.N.key/value and outputs logits, present.N.key/value",
        );
        if !missing.is_empty() {
            msg.push_str(&format!("; missing {}", missing.join(", ")));
        }
        if !unexpected.is_empty() {
            let names: Vec<&str> = unexpected.iter().map(|s| s.as_str()).collect();
            msg.push_str(&format!("; unexpected inputs {}", names.join(", ")));
        }
        msg.push_str(&format!("; the graph has inputs [{}]", inputs.join(", ")));
        return Err(EngineError::UnsupportedLayout {
            path: dir.to_path_buf(),
            message: msg,
        });
    }
    let layout = if has(inputs, "position_ids") {
        Layout::Optimum
    } else {
        Layout::Genai
    };
    Ok(GraphSignature {
        layout,
        selects_logits: has(inputs, "logits_positions"),
        kv_inputs,
        kv_outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recognises_both_layouts() {
        let outs = names(&["logits", "present.0.key", "present.0.value"]);
        let optimum = names(&[
            "input_ids",
            "attention_mask",
            "position_ids",
            "past_key_values.0.key",
            "past_key_values.0.value",
        ]);
        let sig = recognise_layout(Path::new("m"), &optimum, &outs, 1).unwrap();
        assert_eq!(sig.layout, Layout::Optimum);
        let genai = names(&[
            "input_ids",
            "attention_mask",
            "past_key_values.0.key",
            "past_key_values.0.value",
        ]);
        let sig = recognise_layout(Path::new("m"), &genai, &outs, 1).unwrap();
        assert_eq!(sig.layout, Layout::Genai);
        assert!(!sig.selects_logits);
        let mut picking = genai.clone();
        picking.push("logits_positions".into());
        let sig = recognise_layout(Path::new("m"), &picking, &outs, 1).unwrap();
        assert!(sig.selects_logits && sig.layout == Layout::Genai);
    }

    #[test]
    fn reports_missing_and_unexpected_names() {
        let err = recognise_layout(
            Path::new("m"),
            &names(&["input_ids", "token_type_ids"]),
            &names(&["logits"]),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing input `attention_mask`"), "{err}");
        assert!(err.contains("input `past_key_values.0.key`"), "{err}");
        assert!(err.contains("unexpected inputs token_type_ids"), "{err}");
    }

    #[test]
    fn reads_eos_as_number_or_list() {
        assert_eq!(id_list(Some(&serde_json::json!(7))), vec![7]);
        assert_eq!(id_list(Some(&serde_json::json!([1, 2]))), vec![1, 2]);
    }
}
