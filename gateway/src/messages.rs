//! Reading an OpenAI-style messages file, with errors that name the file, line and field.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use safegate_engine::ChatMessage;
use serde_json::Value;

const ROLES: &[&str] = &["system", "user", "assistant", "tool", "developer"];

/// Content is a string or an array of `{type: "text", text}` parts (joined).
fn content_text(v: &Value, at: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => bail!("{at}.content[{j}]: only {{\"type\": \"text\", \"text\": ...}} parts are supported"),
                }
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        _ => bail!("{at}.content: expected a string or an array of text parts"),
    }
}

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
    let list = v
        .as_array()
        .ok_or_else(|| anyhow!("{origin}: expected a JSON array of {{role, content}} objects"))?;
    if list.is_empty() {
        bail!("{origin}: the array of messages is empty");
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{origin}: messages[{i}]");
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("{at}.role: missing or not a string"))?;
            if !ROLES.contains(&role) {
                bail!("{at}.role: `{role}` is not one of {}", ROLES.join(", "));
            }
            let content = content_text(m.get("content").unwrap_or(&Value::Null), &at)?;
            Ok(ChatMessage::new(role, content))
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
