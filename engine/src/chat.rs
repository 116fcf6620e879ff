//! Tokenizer and chat template. The one rule that matters most here: text supplied by a user
//! never turns into special tokens. The template is rendered with opaque placeholders in place
//! of message contents; the template's own text is encoded with special tokens recognised, and
//! each message content is encoded as plain text.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};
use crate::model::{read_json, ModelFiles};

/// One chat message, already validated by the caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Tokenizer + chat template of one model.
pub struct ChatTokenizer {
    /// Recognises added/special tokens (for the template's own markers).
    with_specials: Tokenizer,
    /// Encodes special-token strings as ordinary text (for anything a user wrote).
    plain: Tokenizer,
    template: Option<String>,
    bos_token: String,
    eos_token: String,
    /// The tokenizer's added tokens (content, id), longest first: the only strings that
    /// may become special-token ids, and only where the application wrote them.
    markers: Vec<(String, u32)>,
}

fn token_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` (pick "default").
fn template_from_config(v: &Value) -> Option<String> {
    match v.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn template_env(template: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    minijinja_contrib::add_to_environment(&mut env);
    env.add_template_owned("chat", template.to_string())
        .map_err(|e| EngineError::Template(format!("cannot parse the chat template: {e:#}")))?;
    Ok(env)
}

/// A piece of the rendered prompt: template text, or the content of message `i`.
#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Template(String),
    Content(usize, bool),
}

/// Placeholder for message `i`, with a nonce so no text can imitate it, padded with one space
/// on each side so we can see whether the template trimmed it.
fn placeholder(nonce: u64, i: usize) -> String {
    format!(" \u{E000}{nonce:x}:{i}\u{E001} ")
}

/// Splits the rendered text at the placeholders. `Content(i, trimmed)` says whether the
/// template trimmed the content (the padding spaces are gone).
fn split_rendered(rendered: &str, nonce: u64, count: usize) -> Result<Vec<Segment>> {
    let mut out = Vec::new();
    let mut rest = rendered;
    let open = format!("\u{E000}{nonce:x}:");
    while let Some(start) = rest.find(&open) {
        let after_open = &rest[start + open.len()..];
        let close = after_open
            .find('\u{E001}')
            .ok_or_else(|| EngineError::Template("the template altered message content".into()))?;
        let index: usize = after_open[..close]
            .parse()
            .map_err(|_| EngineError::Template("the template altered message content".into()))?;
        if index >= count {
            return Err(EngineError::Template(
                "the template altered message content".into(),
            ));
        }
        let tail = &after_open[close + '\u{E001}'.len_utf8()..];
        let padded = tail.starts_with(' ') && rest[..start].ends_with(' ');
        let (before, tail) = if padded {
            (&rest[..start - 1], &tail[1..])
        } else {
            (&rest[..start], tail)
        };
        if !before.is_empty() {
            out.push(Segment::Template(before.to_string()));
        }
        out.push(Segment::Content(index, !padded));
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(Segment::Template(rest.to_string()));
    }
    Ok(out)
}

impl ChatTokenizer {
    pub fn load(files: &ModelFiles) -> Result<Self> {
        let with_specials = Tokenizer::from_file(&files.tokenizer).map_err(|e| {
            EngineError::Tokenizer(format!("cannot load {}: {e}", files.tokenizer.display()))
        })?;
        let config = match &files.tokenizer_config {
            Some(p) => read_json(&files.dir, p)?,
            None => Value::Null,
        };
        let template = match &files.chat_template_file {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| EngineError::Model {
                path: files.dir.clone(),
                message: format!("cannot read {}: {e}", p.display()),
            })?),
            None => template_from_config(&config),
        };
        if let Some(t) = &template {
            template_env(t)?; // parse errors surface at load time, not at the first request
        }
        Self::new(
            with_specials,
            template,
            token_string(config.get("bos_token")),
            token_string(config.get("eos_token")),
        )
    }

    pub fn new(
        with_specials: Tokenizer,
        template: Option<String>,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self> {
        let mut plain = with_specials.clone();
        plain.set_encode_special_tokens(true);
        let mut markers: Vec<(String, u32)> = with_specials
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| !t.content.is_empty())
            .map(|(id, t)| (t.content, id))
            .collect();
        markers.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Self {
            with_specials,
            plain,
            template,
            bos_token,
            eos_token,
            markers,
        })
    }

    pub fn load_dir(dir: &Path) -> Result<Self> {
        Self::load(&ModelFiles::locate(dir)?)
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.with_specials.token_to_id(token)
    }

    /// Plain text to ids: special-token strings in `text` stay text.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .plain
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Text written by the application itself (a prompt template), special tokens recognised.
    pub fn encode_trusted(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .with_specials
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// The bytes each id in `0..vocab_size` stands for in generated text: byte-level BPE
    /// tokens (GPT-2's byte-to-character map, as Llama 3 and SmolLM2 use) mapped back to
    /// bytes, SentencePiece pieces with `▁` as a space and `<0xNN>` as that byte; empty for
    /// added and special tokens and for ids the tokenizer does not have.
    pub fn token_bytes(&self, vocab_size: usize) -> Vec<Vec<u8>> {
        let unbyte = byte_level_inverse();
        let added: std::collections::HashSet<u32> = self.markers.iter().map(|m| m.1).collect();
        (0..vocab_size as u32)
            .map(|id| {
                if added.contains(&id) {
                    return Vec::new();
                }
                let Some(token) = self.with_specials.id_to_token(id) else {
                    return Vec::new();
                };
                if let Some(bytes) = token
                    .chars()
                    .map(|c| unbyte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                {
                    return bytes;
                }
                if let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        return vec![b];
                    }
                }
                token.replace('\u{2581}', " ").into_bytes()
            })
            .collect()
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.with_specials
            .decode(ids, skip_special)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// Renders the chat template as text, with contents in place (for display and debugging;
    /// never tokenize this string: use [`Self::encode_chat`]).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let (segments, _) = self.render_segments(messages, add_generation_prompt)?;
        Ok(segments
            .iter()
            .map(|s| match s {
                Segment::Template(t) => t.as_str(),
                Segment::Content(i, trimmed) => content_text(&messages[*i].content, *trimmed),
            })
            .collect())
    }

    fn render_segments(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<(Vec<Segment>, u64)> {
        let template = self.template.as_deref().ok_or_else(|| {
            EngineError::Template(
                "the model has no chat template (tokenizer_config.json has no `chat_template` \
                 and there is no chat_template.jinja)"
                    .into(),
            )
        })?;
        let env = template_env(template)?;
        let nonce: u64 = rand::random::<u64>() | 1;
        let stand_ins: Vec<Value> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| serde_json::json!({"role": m.role, "content": placeholder(nonce, i)}))
            .collect();
        let ctx = minijinja::context! {
            messages => stand_ins,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let rendered = env
            .get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| EngineError::Template(format!("{e:#}")))?;
        Ok((split_rendered(&rendered, nonce, messages.len())?, nonce))
    }

    /// Messages to prompt ids through the chat template. Only the template's own markers can
    /// become special tokens; message contents are encoded as plain text.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let (segments, _) = self.render_segments(messages, add_generation_prompt)?;
        self.encode_segments(segments.iter().map(|seg| match seg {
            Segment::Template(t) => (t.as_str(), true),
            Segment::Content(i, trimmed) => (content_text(&messages[*i].content, *trimmed), false),
        }))
    }

    /// Encodes a prompt assembled from pieces written by the application (`trusted`) and
    /// pieces from users. Added tokens written by the application become their ids; all
    /// other text, across piece boundaries, is tokenized as one string, as the whole
    /// prompt would be, so a word or punctuation at a boundary gets the same tokens. User
    /// pieces never produce special-token ids.
    pub fn encode_segments<'a>(
        &self,
        segments: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut run = String::new();
        let flush = |run: &mut String, ids: &mut Vec<u32>| -> Result<()> {
            if !run.is_empty() {
                ids.extend(self.encode_plain(run)?);
                run.clear();
            }
            Ok(())
        };
        for (text, trusted) in segments {
            if !trusted {
                run.push_str(text);
                continue;
            }
            let mut rest = text;
            while let Some((at, len, id)) = self.find_marker(rest) {
                run.push_str(&rest[..at]);
                flush(&mut run, &mut ids)?;
                ids.push(id);
                rest = &rest[at + len..];
            }
            run.push_str(rest);
        }
        flush(&mut run, &mut ids)?;
        Ok(ids)
    }

    /// The earliest added token in `text` (longest on ties): (byte offset, length, id).
    fn find_marker(&self, text: &str) -> Option<(usize, usize, u32)> {
        let mut best: Option<(usize, usize, u32)> = None;
        for (content, id) in &self.markers {
            if let Some(at) = text.find(content.as_str()) {
                if best.is_none_or(|(b, l, _)| at < b || (at == b && content.len() > l)) {
                    best = Some((at, content.len(), *id));
                }
            }
        }
        best
    }
}

fn content_text(content: &str, trimmed: bool) -> &str {
    if trimmed {
        content.trim()
    } else {
        content
    }
}

/// GPT-2's byte-level BPE writes each byte as a printable character: bytes that are
/// printable Latin-1 stand for themselves, the others for 256 + n in order. The inverse.
fn byte_level_inverse() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        let c = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("a valid character")
        };
        map.insert(c, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_detects_trim_and_order() {
        let n = 0xabc;
        let text = format!("A{}B{}", placeholder(n, 0).trim(), placeholder(n, 1));
        let segs = split_rendered(&text, n, 2).unwrap();
        assert_eq!(
            segs,
            vec![
                Segment::Template("A".into()),
                Segment::Content(0, true),
                Segment::Template("B".into()),
                Segment::Content(1, false),
            ]
        );
    }

    #[test]
    fn split_rejects_mangled_placeholders() {
        let n = 0xabc;
        let text = "\u{E000}abc:7\u{E001}".to_string();
        assert!(split_rendered(&text, n, 2).is_err());
    }
}
