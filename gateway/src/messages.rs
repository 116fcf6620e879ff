//! Reading an OpenAI-style messages file, with errors that name the file, line and field
//! (the parsing itself is `safegate_api::parse_messages`, shared with the HTTP API), and a
//! `response_format` as the grammar the local engine holds a reply to (the CLI's and the
//! server's).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use safegate_engine::ChatMessage;
use serde_json::Value;

pub fn parse_messages(text: &str, origin: &str) -> Result<Vec<ChatMessage>> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{origin}: line {}, column {}: invalid JSON: {e}",
            e.line(),
            e.column()
        )
    })?;
    parse_message_values(&v, origin)
}

/// Messages from an already-parsed JSON value (an array of `{role, content}`).
pub fn parse_message_values(v: &Value, origin: &str) -> Result<Vec<ChatMessage>> {
    Ok(to_chat_messages(safegate_api::parse_messages(v, origin)?))
}

/// The engine's messages from the API crate's.
pub fn to_chat_messages(list: Vec<safegate_api::Message>) -> Vec<ChatMessage> {
    // Tool calls a client's assistant turns made are part of what the checks read.
    list.into_iter()
        .map(|m| {
            let text = m.checked_text();
            ChatMessage::new(m.role, text)
        })
        .collect()
}

pub fn read_messages(path: &Path) -> Result<Vec<ChatMessage>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}: invalid UTF-8 at byte {}",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    parse_messages(&text, &path.display().to_string())
}

/// The grammar a local reply is held to (None: free text).
pub fn grammar_for(
    format: &safegate_api::ResponseFormat,
) -> std::result::Result<
    Option<std::sync::Arc<safegate_structured::Grammar>>,
    safegate_structured::SchemaError,
> {
    use safegate_api::ResponseFormat;
    use safegate_structured::Grammar;
    let grammar = match format {
        ResponseFormat::Text => return Ok(None),
        ResponseFormat::JsonObject => Grammar::any_object(),
        ResponseFormat::JsonSchema { schema, .. } => Grammar::from_schema(schema)?,
    };
    Ok(Some(std::sync::Arc::new(grammar)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strings_and_text_parts() {
        let m = parse_messages(
            r#"[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]"#,
            "f.json",
        )
        .unwrap();
        assert_eq!(m[1], ChatMessage::new("user", "ab"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse_messages("[\n{\"role\": \"user\",\n \"content\": }]", "m.json")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.json: line 3, column"), "{e}");
        let e = parse_messages(r#"[{"role":"wizard","content":"x"}]"#, "m.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("messages[0].role") && e.contains("wizard"),
            "{e}"
        );
        let e = parse_messages(r#"[{"role":"user","content":5}]"#, "m.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("messages[0].content"), "{e}");
        assert!(parse_messages("[]", "m.json").is_err());
        assert!(parse_messages("{}", "m.json").is_err());
    }
}
