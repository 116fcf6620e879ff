//! Structured output (what a request's `response_format` becomes) on arbitrary input: the
//! first line a JSON Schema, the rest output bytes. Never a panic; a schema is compiled or
//! refused with a reason; output the cursor takes whole is JSON a parser reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safegate_structured::{Cursor, Grammar};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (schema, output) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let grammar = match serde_json::from_slice::<serde_json::Value>(schema) {
        Ok(schema) => match Grammar::from_schema(&schema) {
            Ok(g) => g,
            Err(e) => {
                assert!(!e.message.is_empty() && e.path.starts_with('#'));
                return;
            }
        },
        Err(_) => Grammar::any_object(),
    };
    let mut cursor = Cursor::new(&grammar);
    if cursor.feed_all(&grammar, output) && cursor.can_end(&grammar) {
        let parsed = serde_json::from_slice::<serde_json::Value>(output);
        assert!(parsed.is_ok(), "{:?}", String::from_utf8_lossy(output));
    }
});
