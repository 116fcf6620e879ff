//! Function calling on the local model, which has no tool protocol of its own: the offered
//! functions written into the prompt (a system turn, in the `<tools>`/`<tool_call>` tags
//! that Hermes- and Qwen-style chat models are trained on), earlier calls and their results
//! written back in the same form, a call the request demands held to a grammar (the
//! function's name, then arguments that follow its parameters' schema), and calls
//! recognised in a reply as it streams. Pure.

use safegate_api::{Message, ToolChoice, ToolSpec};
use safegate_engine::ChatMessage;
use safegate_structured::{Grammar, SchemaError};
use serde_json::{json, Value};

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// The turns the local model reads: the tools described in the system turn, assistant
/// calls as `<tool_call>` blocks, tool results as a user turn of `<tool_response>` blocks
/// (templates that know only system, user and assistant render these too).
pub fn prompt_messages(
    list: &[Message],
    tools: &[ToolSpec],
    choice: &ToolChoice,
) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::new();
    for m in list {
        match m.role.as_str() {
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    // Results of one round of calls go back together.
                    Some(last)
                        if last.role == "user" && last.content.ends_with("</tool_response>") =>
                    {
                        last.content.push('\n');
                        last.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::new("user", block)),
                }
            }
            "assistant" if m.tool_calls.is_some() => {
                let mut text = m.content.clone();
                for call in m.tool_calls.iter().flat_map(|c| c.as_array()).flatten() {
                    let f = &call["function"];
                    let raw = f["arguments"].as_str().unwrap_or("{}");
                    let arguments =
                        serde_json::from_str::<Value>(raw).unwrap_or_else(|_| json!(raw));
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&call_block(f["name"].as_str().unwrap_or(""), &arguments));
                }
                out.push(ChatMessage::new("assistant", text));
            }
            _ => out.push(ChatMessage::new(m.role.clone(), m.content.clone())),
        }
    }
    if tools.is_empty() || *choice == ToolChoice::None {
        return out;
    }
    let preamble = tools_preamble(tools, choice);
    match out.first_mut() {
        Some(first) if first.role == "system" => {
            first.content.push_str("\n\n");
            first.content.push_str(&preamble);
        }
        _ => out.insert(0, ChatMessage::new("system", preamble)),
    }
    out
}

fn call_block(name: &str, arguments: &Value) -> String {
    let call = json!({"name": name, "arguments": arguments});
    format!("{CALL_OPEN}\n{call}\n{CALL_CLOSE}")
}

fn tools_preamble(tools: &[ToolSpec], choice: &ToolChoice) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to help with the user's request. \
         Their signatures, as JSON Schema, are inside <tools></tools>:\n<tools>\n",
    );
    for t in tools {
        let mut function = json!({"name": t.name});
        if let Some(d) = &t.description {
            function["description"] = json!(d);
        }
        function["parameters"] = t.parameters.clone();
        text.push_str(&json!({"type": "function", "function": function}).to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\n\nTo call a function, write a JSON object with its name and arguments \
         inside <tool_call></tool_call> tags, one block per call:\n<tool_call>\n\
         {\"name\": <function name>, \"arguments\": <arguments as a JSON object>}\n</tool_call>\n",
    );
    text.push_str(&match choice {
        ToolChoice::Function(name) => format!("You must call the function `{name}`."),
        ToolChoice::Required => "You must call at least one function.".to_string(),
        _ => "If no function is needed, answer in plain text.".to_string(),
    });
    text
}

/// For `tool_choice` `required` or a named function: the grammar of one call to one of the
/// functions it allows, written as the prompt asks (`<tool_call>` block, name first, then
/// arguments held to the function's parameters). None when the model may answer in text.
/// An error names the tool whose parameters cannot be held to.
pub fn call_grammar(
    tools: &[ToolSpec],
    choice: &ToolChoice,
) -> Result<Option<Grammar>, (String, SchemaError)> {
    let allowed: Vec<&ToolSpec> = match choice {
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::None | ToolChoice::Auto => return Ok(None),
    };
    let heads: Vec<Vec<u8>> = allowed
        .iter()
        .map(|t| {
            format!(
                "{CALL_OPEN}\n{{\"name\": {}, \"arguments\": ",
                json!(t.name)
            )
            .into_bytes()
        })
        .collect();
    let tail = format!("}}\n{CALL_CLOSE}").into_bytes();
    let cases: Vec<(&[u8], &Value, &[u8])> = allowed
        .iter()
        .zip(&heads)
        .map(|(t, h)| (h.as_slice(), &t.parameters, tail.as_slice()))
        .collect();
    Grammar::tagged(&cases)
        .map(Some)
        .map_err(|(i, e)| (allowed[i.min(allowed.len() - 1)].name.clone(), e))
}

/// A call found in a reply: the function and its arguments (a JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Nothing but whitespace, or the start of `<tool_call>`, so far.
    Undecided,
    /// A text answer: passed through.
    Text,
    /// What looks like calls: held until the reply ends.
    Calls,
}

/// Reads a local reply that may be calls: text is passed on as it comes until the reply
/// starts like a call (`<tool_call>`, or a JSON object as Llama 3.1 writes calls); from
/// there it is held, and at the end it is either calls to offered functions or, if it is
/// not, released as the text it is.
#[derive(Debug)]
pub struct CallReader {
    names: Vec<String>,
    /// `parallel_tool_calls`: false keeps the first call only.
    parallel: bool,
    /// The reply is held to the call grammar: whatever it holds is (part of) a call.
    forced: bool,
    reading: Reading,
    held: String,
}

/// What a finished reply was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReply {
    /// Text still to release (held text that was not a call, or text after the calls).
    pub text: String,
    pub calls: Vec<FoundCall>,
}

impl CallReader {
    /// `forced`: the reply is a call (held to the call grammar), so nothing is passed on.
    /// `parallel`: whether a reply may make more than one call (else the first is kept).
    pub fn new(names: Vec<String>, forced: bool, parallel: bool) -> Self {
        Self {
            names,
            parallel,
            forced,
            reading: if forced {
                Reading::Calls
            } else {
                Reading::Undecided
            },
            held: String::new(),
        }
    }

    /// More of the reply; returns the text to pass on now.
    pub fn push(&mut self, text: &str) -> String {
        match self.reading {
            Reading::Text => return text.to_string(),
            Reading::Calls => {
                self.held.push_str(text);
                return String::new();
            }
            Reading::Undecided => self.held.push_str(text),
        }
        let start = self.held.trim_start();
        if start.is_empty() || (CALL_OPEN.starts_with(start) && start.len() < CALL_OPEN.len()) {
            return String::new();
        }
        if start.starts_with(CALL_OPEN) || start.starts_with('{') {
            self.reading = Reading::Calls;
            return String::new();
        }
        self.reading = Reading::Text;
        std::mem::take(&mut self.held)
    }

    /// The reply has ended.
    pub fn finish(self) -> ReadReply {
        let held = self.held;
        if self.reading == Reading::Calls {
            if let Some((mut calls, rest)) = parse_calls(&held, &self.names) {
                if !self.parallel {
                    calls.truncate(1);
                }
                return ReadReply { text: rest, calls };
            }
            if self.forced {
                // Cut short (max_tokens): what OpenAI returns then, the call with the
                // arguments written so far (finish_reason "length" says they are partial),
                // or nothing while even the name is unfinished; never the call markup.
                return ReadReply {
                    text: String::new(),
                    calls: cut_call(&held, &self.names).into_iter().collect(),
                };
            }
        }
        ReadReply {
            text: held,
            calls: Vec::new(),
        }
    }
}

/// `<tool_call>` blocks (the last may lack its closing tag: the reply ended), or one JSON
/// object, each `{"name", "arguments" | "parameters"}` naming an offered function. Returns
/// the calls and any text after them; None if it is not that.
fn parse_calls(text: &str, names: &[String]) -> Option<(Vec<FoundCall>, String)> {
    let mut rest = text.trim_start();
    let mut calls = Vec::new();
    if !rest.starts_with(CALL_OPEN) {
        let v: Value = serde_json::from_str(rest.trim_end()).ok()?;
        return Some((vec![call_from(&v, names)?], String::new()));
    }
    while let Some(after) = rest.strip_prefix(CALL_OPEN) {
        let (inner, next) = match after.find(CALL_CLOSE) {
            Some(end) => (&after[..end], &after[end + CALL_CLOSE.len()..]),
            None => (after, ""),
        };
        let v: Value = serde_json::from_str(inner.trim()).ok()?;
        calls.push(call_from(&v, names)?);
        rest = next.trim_start();
    }
    Some((calls, rest.trim_end().to_string()))
}

/// A demanded call the reply stopped inside: the grammar wrote `<tool_call>`, the name and
/// `"arguments": ` in that order, so the name is read once it is whole, and the arguments
/// are what follows (a JSON prefix; the whole value when only the closing tail was cut).
fn cut_call(text: &str, names: &[String]) -> Option<FoundCall> {
    let body = text.trim_start().strip_prefix(CALL_OPEN)?.trim_start();
    let after_key = body
        .strip_prefix('{')?
        .trim_start()
        .strip_prefix("\"name\"")?;
    let after_colon = after_key.trim_start().strip_prefix(':')?.trim_start();
    let mut values = serde_json::Deserializer::from_str(after_colon).into_iter::<String>();
    let name = values.next()?.ok()?;
    if !names.contains(&name) {
        return None;
    }
    let rest = after_colon[values.byte_offset()..].trim_start();
    let arguments = rest
        .strip_prefix(',')
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix("\"arguments\""))
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix(':'))
        .map(str::trim_start)
        .unwrap_or("");
    let mut whole = serde_json::Deserializer::from_str(arguments).into_iter::<Value>();
    let arguments = match whole.next() {
        Some(Ok(_)) => arguments[..whole.byte_offset()].to_string(),
        _ => arguments.to_string(),
    };
    Some(FoundCall { name, arguments })
}

fn call_from(v: &Value, names: &[String]) -> Option<FoundCall> {
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let arguments = match o.get("arguments").or_else(|| o.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(a @ Value::Object(_)) => a.to_string(),
        // Some models write the arguments as a JSON text, as the API carries them.
        Some(Value::String(s)) if serde_json::from_str::<Value>(s).is_ok_and(|a| a.is_object()) => {
            s.clone()
        }
        Some(_) => return None,
    };
    Some(FoundCall {
        name: name.to_string(),
        arguments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, parameters: Value) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: Some(format!("{name} does things")),
            parameters,
        }
    }

    fn weather() -> Vec<ToolSpec> {
        vec![
            spec(
                "get_weather",
                json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            ),
            spec("now", json!({"type": "object", "properties": {}})),
        ]
    }

    fn read(chunks: &[&str], forced: bool) -> (String, ReadReply) {
        let mut r = CallReader::new(vec!["get_weather".into(), "now".into()], forced, true);
        let passed: String = chunks.iter().map(|c| r.push(c)).collect();
        (passed, r.finish())
    }

    #[test]
    fn tools_go_into_the_system_turn_and_history_is_written_as_blocks() {
        let mut call = Message::new("assistant", "");
        call.tool_calls = Some(json!([{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]));
        let mut result = Message::new("tool", "{\"temp\": 3}");
        result.tool_call_id = Some("call_1".into());
        let list = vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Weather in Oslo?"),
            call,
            result.clone(),
            result,
        ];
        let out = prompt_messages(&list, &weather(), &ToolChoice::Auto);
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert!(out[0].content.contains(r#""name":"get_weather""#));
        assert!(out[0].content.ends_with("answer in plain text."));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>"
        );
        assert_eq!(out[3].role, "user");
        assert_eq!(
            out[3]
                .content
                .matches("<tool_response>\n{\"temp\": 3}\n</tool_response>")
                .count(),
            2
        );
        // No system turn: one is added; `none`: the tools are not described.
        let out = prompt_messages(&list[1..2], &weather(), &ToolChoice::Function("now".into()));
        assert_eq!(out[0].role, "system");
        assert!(out[0]
            .content
            .ends_with("You must call the function `now`."));
        assert_eq!(
            prompt_messages(&list[1..2], &weather(), &ToolChoice::None).len(),
            1
        );
    }

    #[test]
    fn a_demanded_call_is_held_to_the_named_functions() {
        let g = call_grammar(&weather(), &ToolChoice::Function("get_weather".into()))
            .unwrap()
            .unwrap();
        let mut c = safegate_structured::Cursor::new(&g);
        let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        assert!(c.feed_all(&g, call.as_bytes()) && c.is_done());
        let only = safegate_structured::Cursor::new(&g);
        assert!(!only.accepts(&g, b"<tool_call>\n{\"name\": \"now\""));
        let any = call_grammar(&weather(), &ToolChoice::Required)
            .unwrap()
            .unwrap();
        let c = safegate_structured::Cursor::new(&any);
        assert!(c.accepts(&any, b"<tool_call>\n{\"name\": \"now\", \"arguments\": {}"));
        assert!(call_grammar(&weather(), &ToolChoice::Auto)
            .unwrap()
            .is_none());
        let bad = vec![spec("f", json!({"type": "string", "minLength": 2}))];
        let (tool, e) = call_grammar(&bad, &ToolChoice::Required).unwrap_err();
        assert_eq!(tool, "f");
        assert!(e.message.contains("minLength"));
    }

    #[test]
    fn text_passes_through_and_calls_are_held_then_parsed() {
        let (passed, r) = read(&["The", " weather", " is fine."], false);
        assert_eq!(
            (passed.as_str(), r.text.as_str()),
            ("The weather is fine.", "")
        );
        assert!(r.calls.is_empty());
        // Whitespace and a partial tag are held until they decide.
        let (passed, r) = read(
            &[
                "\n",
                "<tool",
                "_call>\n{\"name\": \"get_weather\", ",
                "\"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
            ],
            false,
        );
        assert_eq!(passed, "");
        assert_eq!(
            r.calls,
            [FoundCall {
                name: "get_weather".into(),
                arguments: "{\"city\":\"Oslo\"}".into()
            }]
        );
        assert_eq!(r.text, "");
        let (passed, r) = read(&["<to", "y box"], false);
        assert_eq!(passed, "<toy box");
        assert!(r.calls.is_empty() && r.text.is_empty());
        // Llama 3.1's bare JSON with `parameters`; two blocks, the last unclosed; text after.
        let (_, r) = read(&["{\"name\": \"now\", \"parameters\": {}}"], false);
        assert_eq!(r.calls[0].name, "now");
        let (_, r) = read(&["<tool_call>{\"name\":\"now\"}</tool_call>\n<tool_call>{\"name\":\"now\",\"arguments\":\"{}\"}"], false);
        assert_eq!(r.calls.len(), 2);
        let mut one = CallReader::new(vec!["now".into()], false, false);
        one.push(
            "<tool_call>{\"name\":\"now\"}</tool_call><tool_call>{\"name\":\"now\"}</tool_call>",
        );
        assert_eq!(one.finish().calls.len(), 1);
        let (_, r) = read(&["<tool_call>{\"name\":\"now\"}</tool_call> Done."], false);
        assert_eq!((r.calls.len(), r.text.as_str()), (1, "Done."));
    }

    #[test]
    fn held_text_that_is_no_call_is_released_whole() {
        for reply in [
            "{\"answer\": 42}",
            "{\"name\": \"delete_everything\", \"arguments\": {}}",
            "<tool_call>{\"name\": \"now\", \"arguments\": [1]}</tool_call>",
            "<tool_call>not json</tool_call>",
            "{\"name\": \"now\"",
        ] {
            let (passed, r) = read(&[reply], false);
            assert_eq!(passed, "");
            assert!(r.calls.is_empty(), "{reply}");
            assert_eq!(r.text, reply);
        }
    }

    #[test]
    fn a_demanded_call_cut_short_is_the_call_so_far_never_markup() {
        let cut = |reply: &str| {
            let (passed, r) = read(&[reply], true);
            assert_eq!((passed.as_str(), r.text.as_str()), ("", ""), "{reply}");
            r.calls
                .into_iter()
                .map(|c| (c.name, c.arguments))
                .collect::<Vec<_>>()
        };
        let call = |name: &str, args: &str| vec![(name.to_string(), args.to_string())];
        assert_eq!(cut("<tool_call>"), []);
        assert_eq!(cut("<tool_call>\n{\"name\": \"get_wea"), []);
        assert_eq!(
            cut("<tool_call>\n{\"name\": \"now\", \"argu"),
            call("now", "")
        );
        assert_eq!(
            cut("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Os"),
            call("get_weather", "{\"city\": \"Os")
        );
        // Only the closing tail was cut: the arguments are whole.
        assert_eq!(
            cut("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool"),
            call("get_weather", "{\"city\": \"Oslo\"}")
        );
        // A name nobody offered is no call, even cut.
        assert_eq!(cut("<tool_call>\n{\"name\": \"rm\", \"arguments\": {"), []);
    }
}
