//! The upstream relay's SSE line parser on arbitrary lines; and text put into a well-formed
//! chunk always comes back out unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safegate_sse::{parse_line, Line};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.split('\n') {
        let _ = parse_line(line);
    }
    if !text.is_empty() {
        let chunk = format!(
            "data: {}",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]})
        );
        match parse_line(&chunk) {
            Ok(Line::Chunk(c)) => assert_eq!(c.text.as_deref(), Some(text)),
            other => panic!("{other:?}"),
        }
    }
});
