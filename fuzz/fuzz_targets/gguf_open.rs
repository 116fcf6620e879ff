//! The GGUF reader on arbitrary files: header, metadata, tensor infos, dequantization.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safegate_gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("safegate-fuzz-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(g) = GgufFile::open(&path) {
        for t in g.tensors.iter().take(8) {
            if t.elements() <= 1 << 16 {
                let _ = g.dequantize(t);
            }
        }
        let _ = safegate_gguf::llama::LlamaParams::from_gguf(&g);
        let _ = safegate_gguf::tokenizer::Vocab::from_gguf(&g).and_then(|v| v.to_tokenizer_json());
    }
    let _ = std::fs::remove_file(&path);
});
