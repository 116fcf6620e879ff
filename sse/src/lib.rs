//! One line of an OpenAI-compatible chat completion stream (server-sent events), read into
//! what a relay needs: the text delta, the finish reason, usage, or the end. Pure and
//! total (fuzzed: `fuzz/fuzz_targets/sse_line.rs`).

use serde_json::Value;

/// What a line of the stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A comment, an `event:`/`id:` field, a blank separator, or an event without a choice.
    Ignored,
    /// `data: [DONE]`.
    Done,
    Chunk(Chunk),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// `choices[0].delta.content`, when non-empty.
    pub text: Option<String>,
    pub finish_reason: Option<String>,
    /// (prompt_tokens, completion_tokens)
    pub usage: Option<(usize, usize)>,
    /// `choices[0].delta.tool_calls` (or a whole completion's `message.tool_calls`).
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A piece of a tool call: the first piece of a call names it, the next ones add to its
/// arguments (a JSON text streamed in fragments); `index` says which call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
}

fn tool_call_deltas(calls: Option<&Value>) -> Vec<ToolCallDelta> {
    let Some(Value::Array(calls)) = calls else {
        return Vec::new();
    };
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| ToolCallDelta {
            index: c
                .get("index")
                .and_then(Value::as_u64)
                .map_or(i, |n| n as usize),
            id: c.get("id").and_then(Value::as_str).map(str::to_string),
            name: c
                .pointer("/function/name")
                .and_then(Value::as_str)
                .map(str::to_string),
            arguments: c
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// The data is not JSON.
    Malformed(String),
    /// The upstream reported an error inside the stream.
    Upstream(String),
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::Malformed(m) => write!(f, "the upstream sent a malformed stream event ({m})"),
            SseError::Upstream(m) => write!(f, "the upstream failed mid-stream: {m}"),
        }
    }
}

/// Parses one line (with or without its line break).
pub fn parse_line(line: &str) -> Result<Line, SseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(data) = line.strip_prefix("data:") else {
        return Ok(Line::Ignored);
    };
    parse_data(data)
}

/// Parses the data of one event (what follows `data:`, or several `data:` lines joined
/// with line breaks, as server-sent events allow).
pub fn parse_data(data: &str) -> Result<Line, SseError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Line::Done);
    }
    let event: Value = serde_json::from_str(data).map_err(|e| {
        SseError::Malformed(format!(
            "{e}: {}",
            data.chars().take(120).collect::<String>()
        ))
    })?;
    if let Some(err) = event.get("error").filter(|e| !e.is_null()) {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| err.as_str())
            .unwrap_or("unknown error");
        return Err(SseError::Upstream(message.to_string()));
    }
    Ok(chunk_of(&event))
}

/// What one event carries: a streamed chunk (`choices[0].delta`) or, from an upstream
/// that answers a stream request with a whole completion, `choices[0].message`.
fn chunk_of(event: &Value) -> Line {
    let usage = event.get("usage").filter(|u| u.is_object()).map(|u| {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        (n("prompt_tokens"), n("completion_tokens"))
    });
    let choice = event.pointer("/choices/0");
    let chunk = Chunk {
        text: choice
            .and_then(|c| {
                c.pointer("/delta/content")
                    .or_else(|| c.pointer("/message/content"))
            })
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        finish_reason: choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
            .map(str::to_string),
        usage,
        tool_calls: tool_call_deltas(choice.and_then(|c| {
            c.pointer("/delta/tool_calls")
                .or_else(|| c.pointer("/message/tool_calls"))
        })),
    };
    if chunk == Chunk::default() {
        return Line::Ignored;
    }
    Line::Chunk(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_a_stream() {
        assert_eq!(parse_line(": keep-alive\n"), Ok(Line::Ignored));
        assert_eq!(parse_line("event: message"), Ok(Line::Ignored));
        assert_eq!(parse_line(""), Ok(Line::Ignored));
        assert_eq!(parse_line("data: [DONE]\r\n"), Ok(Line::Done));
        assert_eq!(parse_line("data:[DONE]"), Ok(Line::Done));
        let delta =
            r#"data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        assert_eq!(
            parse_line(delta),
            Ok(Line::Chunk(Chunk {
                text: Some("Hi".into()),
                ..Chunk::default()
            }))
        );
        let last = r#"data: {"choices":[{"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
        assert_eq!(
            parse_line(last),
            Ok(Line::Chunk(Chunk {
                text: None,
                finish_reason: Some("length".into()),
                usage: Some((5, 7)),
                ..Chunk::default()
            }))
        );
        // A role-only first chunk and a usage: null field carry nothing.
        let role =
            r#"data: {"choices":[{"delta":{"role":"assistant","content":""}}],"usage":null}"#;
        assert_eq!(parse_line(role), Ok(Line::Ignored));
        assert!(matches!(
            parse_line("data: {not json"),
            Err(SseError::Malformed(_))
        ));
        assert_eq!(
            parse_line(r#"data: {"error":{"message":"overloaded"}}"#),
            Err(SseError::Upstream("overloaded".into()))
        );
    }

    #[test]
    fn dialects_of_real_servers() {
        // TGI: no space after `data:`, finish reasons of its own, usage with the last choice.
        let tgi = r#"data:{"choices":[{"index":0,"delta":{"role":"assistant","content":"x"},"finish_reason":"eos_token"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        assert_eq!(
            parse_line(tgi),
            Ok(Line::Chunk(Chunk {
                text: Some("x".into()),
                finish_reason: Some("eos_token".into()),
                usage: Some((3, 1)),
                ..Chunk::default()
            }))
        );
        // vLLM's usage-only last chunk: empty choices.
        let usage =
            r#"data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#;
        assert_eq!(
            parse_line(usage),
            Ok(Line::Chunk(Chunk {
                usage: Some((9, 2)),
                ..Chunk::default()
            }))
        );
        // A whole completion where a stream was asked for.
        let whole = r#"{"choices":[{"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}]}"#;
        assert_eq!(
            parse_data(whole),
            Ok(Line::Chunk(Chunk {
                text: Some("Hello".into()),
                finish_reason: Some("stop".into()),
                usage: None,
                ..Chunk::default()
            }))
        );
        // One event's JSON over two `data:` lines, joined as the SSE format says.
        assert_eq!(
            parse_data("{\"choices\":[{\"delta\":\n{\"content\":\"a\"}}]}"),
            Ok(Line::Chunk(Chunk {
                text: Some("a".into()),
                ..Chunk::default()
            }))
        );
    }

    #[test]
    fn tool_calls_streamed_and_whole() {
        let first = r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"run_python","arguments":""}}]},"finish_reason":null}]}"#;
        assert_eq!(
            parse_line(first),
            Ok(Line::Chunk(Chunk {
                tool_calls: vec![ToolCallDelta {
                    index: 0,
                    id: Some("call_1".into()),
                    name: Some("run_python".into()),
                    arguments: Some(String::new()),
                }],
                ..Chunk::default()
            }))
        );
        let more = r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"code\":"}}]}}]}"#;
        let Ok(Line::Chunk(c)) = parse_line(more) else {
            panic!()
        };
        assert_eq!(c.tool_calls[0].arguments.as_deref(), Some("{\"code\":"));
        assert_eq!(c.tool_calls[0].name, None);
        let whole = r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}},{"id":"b","type":"function","function":{"name":"g","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#;
        let Ok(Line::Chunk(c)) = parse_data(whole) else {
            panic!()
        };
        assert_eq!(c.tool_calls.len(), 2);
        assert_eq!(c.tool_calls[1].index, 1);
        assert_eq!(c.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn errors_say_what_the_upstream_did() {
        assert_eq!(
            SseError::Upstream("overloaded".into()).to_string(),
            "the upstream failed mid-stream: overloaded"
        );
        assert!(SseError::Malformed("x".into())
            .to_string()
            .starts_with("the upstream sent a malformed stream event"));
    }
}
