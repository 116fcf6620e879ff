//! `GGUF file -> model folder`, written to a temporary folder beside the target and renamed
//! into place at the end, so a failed import never leaves a half-written folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

pub use crate::llama::WeightFormat;
use crate::llama::{build_graph_of, LlamaParams};
pub use crate::llama::{DecoderGraph, DecoderLayout, GraphKind};
use crate::onnx::Graph;
use crate::tokenizer::Vocab;
use crate::{GgufError, GgufFile, Value};

/// The importer's graph revision, written to `config.json` (`safegate_import.graph_version`)
/// so that a folder made by an older importer can be told apart and made again
/// (`scripts/run.sh` does). Raise it when the same options would write a different graph.
/// 2: `logits_positions`, RMSNorm as ONNX Runtime fuses it, the genai layout.
pub const GRAPH_VERSION: u32 = 2;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: WeightFormat,
    /// Cap on the context (rotary tables and `max_position_embeddings`); the GGUF's own
    /// context length when unset.
    pub max_context: Option<usize>,
    /// The decoder (chat models) or an encoder of hidden states (guard features).
    pub kind: GraphKind,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            format: WeightFormat::F32,
            max_context: None,
            kind: GraphKind::default(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportSummary {
    pub name: String,
    pub params: LlamaParams,
    pub context_length: usize,
    pub bytes_written: u64,
    pub seconds: f64,
}

fn meta_err(key: &str, message: &str) -> GgufError {
    GgufError::Metadata {
        key: key.into(),
        message: message.into(),
    }
}

/// Imports `gguf_path` into `out_dir` (which must not exist). `progress(done, total)` is
/// called as layers are written.
pub fn import(
    gguf_path: &Path,
    out_dir: &Path,
    options: &ImportOptions,
    progress: impl FnMut(usize, usize),
) -> Result<ImportSummary, GgufError> {
    let t0 = Instant::now();
    let gguf = GgufFile::open(gguf_path)?;
    let params = LlamaParams::from_gguf(&gguf)?;
    let vocab = Vocab::from_gguf(&gguf)?;
    let tokenizer = vocab.to_tokenizer_json()?;
    if vocab.tokens.len() != params.vocab_size {
        return Err(meta_err(
            "tokenizer.ggml.tokens",
            &format!(
                "{} tokens but token_embd.weight has {} rows",
                vocab.tokens.len(),
                params.vocab_size
            ),
        ));
    }
    let token_id = |key: &str| -> Result<Option<usize>, GgufError> {
        match gguf.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < vocab.tokens.len() => Ok(Some(id as usize)),
                _ => Err(meta_err(key, "not a token id of this vocabulary")),
            },
        }
    };
    let bos = token_id("tokenizer.ggml.bos_token_id")?;
    let eos = token_id("tokenizer.ggml.eos_token_id")?
        .ok_or_else(|| meta_err("tokenizer.ggml.eos_token_id", "missing"))?;
    let mut eos_ids = vec![eos];
    if let Some(eot) = token_id("tokenizer.ggml.eot_token_id")? {
        if eot != eos {
            eos_ids.push(eot);
        }
    }
    let template = gguf
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(str::to_string);
    let context = options
        .max_context
        .map_or(params.context_length, |m| m.min(params.context_length))
        .max(1);

    if out_dir.exists() {
        return Err(GgufError::Io(
            out_dir.to_path_buf(),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists; remove it or choose another folder",
            ),
        ));
    }
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = out_dir
        .file_name()
        .ok_or_else(|| {
            GgufError::Io(
                out_dir.to_path_buf(),
                std::io::Error::other("not a folder name"),
            )
        })?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent).map_err(|e| GgufError::Io(parent.clone(), e))?;
    let tmp = parent.join(format!(".{file_name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| GgufError::Io(tmp.clone(), e))?;

    let written = (|| {
        let io = |e| GgufError::Io(tmp.clone(), e);
        let graph = Graph::with_external_data(&tmp, "model.onnx.data", 1024).map_err(io)?;
        let graph = build_graph_of(
            &gguf,
            &params,
            options.format,
            context,
            &options.kind,
            graph,
            progress,
        )?;
        graph
            .write(&tmp, &[("", 18), ("com.microsoft", 1)])
            .map_err(io)?;
        let name = gguf
            .get("general.name")
            .and_then(Value::as_str)
            .unwrap_or("imported")
            .to_string();
        let config = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": params.vocab_size,
            "hidden_size": params.hidden_size,
            "intermediate_size": params.intermediate_size,
            "num_hidden_layers": params.num_layers,
            "num_attention_heads": params.num_heads,
            "num_key_value_heads": params.num_kv_heads,
            "head_dim": params.head_dim,
            "max_position_embeddings": context,
            "rope_theta": params.rope_theta,
            "rms_norm_eps": params.rms_norm_eps,
            "tie_word_embeddings": params.tied_embeddings,
            "bos_token_id": bos,
            "eos_token_id": eos_ids,
            "torch_dtype": if options.format == WeightFormat::F16Compute { "float16" } else { "float32" },
            "_name_or_path": name,
            "safegate_import": {
                "graph_version": GRAPH_VERSION,
                "source": gguf_path.file_name().map(|f| f.to_string_lossy().into_owned()),
                "weights": format!("{:?}", options.format).to_lowercase(),
                "graph": match &options.kind {
                    GraphKind::Decoder(d) => json!({"decoder": {
                        "layout": match d.layout {
                            DecoderLayout::Optimum => "optimum",
                            DecoderLayout::Genai { .. } => "genai",
                        },
                        "packed_qkv": d.layout == DecoderLayout::Genai { packed_qkv: true },
                        "all_logits": d.all_logits,
                    }}),
                    GraphKind::Encoder { layers } => json!({"encoder": layers}),
                },
            },
        });
        let tokenizer_config = json!({
            "bos_token": bos.map(|b| vocab.tokens[b].clone()),
            "eos_token": vocab.tokens[eos],
            "chat_template": template,
            "add_bos_token": gguf.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false),
        });
        for (file, value) in [
            ("config.json", &config),
            ("tokenizer.json", &tokenizer),
            ("tokenizer_config.json", &tokenizer_config),
        ] {
            let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
            write_synced(&tmp.join(file), text.as_bytes()).map_err(io)?;
        }
        let bytes = std::fs::read_dir(&tmp)
            .map_err(io)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        Ok::<_, GgufError>((name, bytes))
    })();
    let (name, bytes_written) = match written {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, out_dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(GgufError::Io(out_dir.to_path_buf(), e));
    }
    Ok(ImportSummary {
        name,
        params,
        context_length: context,
        bytes_written,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
