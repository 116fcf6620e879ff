//! `safegate models import-gguf`.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Result};
use safegate_gguf::{DecoderGraph, DecoderLayout, GraphKind, ImportOptions, WeightFormat};

use crate::cli::ModelsCommand;

pub fn run(cmd: &ModelsCommand) -> Result<()> {
    let ModelsCommand::ImportGguf {
        file,
        out_dir,
        weights,
        compute,
        max_context,
        encoder_layers,
        layout,
        packed_qkv,
        all_logits,
    } = cmd;
    let format = match (weights.as_str(), compute.as_str()) {
        ("f32", "f32") => WeightFormat::F32,
        ("f16", "f32") => WeightFormat::F16,
        ("f16", "f16") => WeightFormat::F16Compute,
        ("int4", "f32") => WeightFormat::Int4 { accuracy_level: 4 },
        (w, "f16") if w != "f16" => {
            bail!("--compute f16 needs --weights f16 (the weights are what it computes with)")
        }
        (other, "f32") => bail!("--weights `{other}`: expected f32, f16 or int4"),
        (_, other) => bail!("--compute `{other}`: expected f32 or f16"),
    };
    let options = ImportOptions {
        format,
        max_context: *max_context,
        kind: match (encoder_layers, layout.as_str()) {
            (Some(layers), "optimum") => GraphKind::Encoder {
                layers: layers.clone(),
            },
            (Some(_), _) => bail!("--encoder-layers writes its own graph; leave --layout out"),
            (None, "optimum") if *packed_qkv => bail!("--packed-qkv is for --layout genai"),
            (None, layout) => GraphKind::Decoder(DecoderGraph {
                layout: match layout {
                    "optimum" => DecoderLayout::Optimum,
                    "genai" => DecoderLayout::Genai {
                        packed_qkv: *packed_qkv,
                    },
                    other => bail!("--layout `{other}`: expected optimum or genai"),
                },
                all_logits: *all_logits,
            }),
        },
    };
    let tty = std::io::stderr().is_terminal();
    let mut last_shown = 0;
    let progress = |done: usize, total: usize| {
        let width = 30;
        let filled = width * done / total.max(1);
        // A bar redrawn in place on a terminal; one line per tenth in a log.
        let tenth = 10 * done / total.max(1);
        if tty {
            eprint!(
                "\r  [{}{}] {done}/{total} layers",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
        } else if tenth > last_shown || done == total {
            eprintln!("  importing: {done}/{total}");
            last_shown = tenth;
        }
        let _ = std::io::stderr().flush();
    };
    eprintln!("importing {} -> {}", file.display(), out_dir.display());
    let summary = safegate_gguf::import(file, out_dir, &options, progress);
    if tty {
        eprintln!();
    }
    let summary = summary.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let p = &summary.params;
    eprintln!(
        "imported `{}`: {} layers, hidden {}, {} heads / {} KV heads, vocabulary {}, context {}; {:.1} MB in {:.1} s",
        summary.name,
        p.num_layers,
        p.hidden_size,
        p.num_heads,
        p.num_kv_heads,
        p.vocab_size,
        summary.context_length,
        summary.bytes_written as f64 / 1e6,
        summary.seconds
    );
    Ok(())
}
