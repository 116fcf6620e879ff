//! OpenAI-compatible request bodies, parsed and validated without I/O: the chat `messages`
//! (also the CLI's messages files) and the chat completion parameters. Every error names
//! the field it is about. What the gateway does with a valid request lives in the gateway.
//! The response bodies are typed too (`response`).

pub mod response;

use std::fmt;

use serde_json::Value;

/// The roles a message may have.
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool", "developer"];

/// One message: its role and its text (text parts joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls (`[{id, type: "function", function: {name, arguments}}]`),
    /// as the client sent them.
    pub tool_calls: Option<Value>,
    /// A `tool` turn: the call it answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }

    /// What the checks read of this turn: its text, and the tool calls it makes written
    /// out (`name(arguments)`), so that the guard judges an agent's calls as its words.
    pub fn checked_text(&self) -> String {
        let Some(Value::Array(calls)) = &self.tool_calls else {
            return self.content.clone();
        };
        let mut text = self.content.clone();
        for call in calls {
            let f = &call["function"];
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!(
                "{}({})",
                f["name"].as_str().unwrap_or(""),
                f["arguments"].as_str().unwrap_or("")
            ));
        }
        text
    }

    /// The turn as an OpenAI-compatible server takes it.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("role".into(), Value::String(self.role.clone()));
        let no_text = self.content.is_empty() && self.tool_calls.is_some();
        m.insert(
            "content".into(),
            if no_text {
                Value::Null
            } else {
                Value::String(self.content.clone())
            },
        );
        if let Some(calls) = &self.tool_calls {
            m.insert("tool_calls".into(), calls.clone());
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), Value::String(id.clone()));
        }
        if let Some(name) = &self.name {
            m.insert("name".into(), Value::String(name.clone()));
        }
        Value::Object(m)
    }
}

/// Checks `tool_calls` of an assistant turn: `[{id, type: "function", function: {name,
/// arguments (a string)}}]`.
fn check_tool_calls(calls: &Value, at: &str) -> Result<(), RequestError> {
    let list = calls
        .as_array()
        .ok_or_else(|| RequestError::new(format!("{at}.tool_calls: expected an array")))?;
    for (j, c) in list.iter().enumerate() {
        let ok = c.get("id").is_some_and(Value::is_string)
            && c.get("type").and_then(Value::as_str).unwrap_or("function") == "function"
            && c.pointer("/function/name").is_some_and(Value::is_string)
            && c.pointer("/function/arguments")
                .is_some_and(Value::is_string);
        if !ok {
            return Err(RequestError::new(format!(
                "{at}.tool_calls[{j}]: expected {{id, type: \"function\", function: {{name, arguments (a JSON string)}}}}"
            )));
        }
    }
    Ok(())
}

/// A request that cannot be served as sent: which parameter, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub param: Option<String>,
    pub message: String,
}

impl RequestError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            param: None,
            message: message.into(),
        }
    }

    fn param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            message: message.into(),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

/// The body as JSON; the error gives the line and column.
pub fn parse_body(body: &[u8]) -> Result<Value, RequestError> {
    serde_json::from_slice(body).map_err(|e| {
        RequestError::new(format!(
            "the body is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })
}

/// Content is a string or an array of `{type: "text", text}` parts (joined).
fn content_text(v: &Value, at: &str) -> Result<String, RequestError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(RequestError::new(format!(
                        "{at}.content[{j}]: only {{\"type\": \"text\", \"text\": ...}} parts are supported"
                    )))
                    }
                }
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        _ => Err(RequestError::new(format!(
            "{at}.content: expected a string or an array of text parts"
        ))),
    }
}

/// Messages from a JSON value (an array of `{role, content}`); errors start with `origin`
/// and name the message and field (`origin: messages[2].role: ...`).
pub fn parse_messages(v: &Value, origin: &str) -> Result<Vec<Message>, RequestError> {
    let list = v.as_array().ok_or_else(|| {
        RequestError::new(format!(
            "{origin}: expected a JSON array of {{role, content}} objects"
        ))
    })?;
    if list.is_empty() {
        return Err(RequestError::new(format!(
            "{origin}: the array of messages is empty"
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{origin}: messages[{i}]");
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| RequestError::new(format!("{at}.role: missing or not a string")))?;
            if !ROLES.contains(&role) {
                return Err(RequestError::new(format!(
                    "{at}.role: `{role}` is not one of {}",
                    ROLES.join(", ")
                )));
            }
            let content = content_text(m.get("content").unwrap_or(&Value::Null), &at)?;
            let tool_calls = match m.get("tool_calls") {
                None | Some(Value::Null) => None,
                Some(calls) if role == "assistant" => {
                    check_tool_calls(calls, &at)?;
                    Some(calls.clone())
                }
                Some(_) => {
                    return Err(RequestError::new(format!(
                        "{at}.tool_calls: only assistant turns make tool calls"
                    )))
                }
            };
            let text_field = |key: &str| -> Result<Option<String>, RequestError> {
                match m.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(RequestError::new(format!("{at}.{key}: expected a string"))),
                }
            };
            let tool_call_id = text_field("tool_call_id")?;
            if role == "tool" && tool_call_id.is_none() {
                return Err(RequestError::new(format!(
                    "{at}.tool_call_id: a tool turn names the call it answers"
                )));
            }
            Ok(Message {
                role: role.to_string(),
                content,
                tool_calls,
                tool_call_id,
                name: text_field("name")?,
            })
        })
        .collect()
}

/// A request body's `messages` parameter; errors name it as the parameter.
pub fn messages_param(body: &Value) -> Result<Vec<Message>, RequestError> {
    parse_messages(body.get("messages").unwrap_or(&Value::Null), "request")
        .map_err(|e| RequestError::param("messages", e.message.replacen("request: ", "", 1)))
}

/// What one server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatLimits {
    pub max_messages: usize,
    /// Largest `max_tokens`; also the default (capped at 256) when a request sets none.
    pub max_tokens: usize,
}

/// A chat completion request's parameters, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatParams {
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// The model asked for (None: the server's default).
    pub model: Option<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk carries the usage.
    pub include_usage: bool,
    /// The functions the request offers (`tools`), and whether and which the model must
    /// call (`tool_choice`; `auto` when tools are offered and it is unset).
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    /// OpenAI's penalties (-2..=2) and `logit_bias` (token id, -100..=100): honoured by the
    /// local engine, relayed to an upstream.
    pub frequency_penalty: f64,
    pub presence_penalty: f64,
    pub logit_bias: Vec<(u32, f64)>,
    /// What the reply must look like.
    pub response_format: ResponseFormat,
    /// Fields relayed as they are to an upstream model (`tools`, `tool_choice`,
    /// `parallel_tool_calls`, `response_format`, `user`, `metadata`, `frequency_penalty`,
    /// `presence_penalty`, `logit_bias`), checked for their shape.
    pub relayed: serde_json::Map<String, Value>,
}

/// One function a request offers the model (`tools[i].function`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema of the arguments (an object with no properties when unset).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// No call: the model answers in text.
    #[default]
    None,
    /// The model decides.
    Auto,
    /// The model calls one or more of the tools.
    Required,
    /// The model calls this function.
    Function(String),
}

impl ChatParams {
    /// Whether the model may call a tool.
    pub fn offers_tools(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
}

/// The most tools a request may offer (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// `tools` and `tool_choice` (their shapes are checked with the relayed fields).
fn tools_param(
    relayed: &serde_json::Map<String, Value>,
) -> Result<(Vec<ToolSpec>, ToolChoice), RequestError> {
    let list = relayed.get("tools").and_then(Value::as_array);
    if list.is_some_and(|l| l.len() > MAX_TOOLS) {
        return Err(RequestError::param(
            "tools",
            format!("at most {MAX_TOOLS} tools"),
        ));
    }
    let mut tools: Vec<ToolSpec> = Vec::new();
    for (i, t) in list.into_iter().flatten().enumerate() {
        let f = &t["function"];
        let name = f["name"].as_str().unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(RequestError::param(
                "tools",
                format!("tools[{i}].function.name must not be empty"),
            ));
        }
        if tools.iter().any(|t| t.name == name) {
            return Err(RequestError::param(
                "tools",
                format!("tools[{i}]: the function `{name}` is offered twice"),
            ));
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                return Err(RequestError::param(
                    "tools",
                    format!("tools[{i}].function.description must be a string"),
                ))
            }
        };
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(RequestError::param(
                    "tools",
                    format!("tools[{i}].function.parameters must be a JSON Schema object"),
                ))
            }
        };
        tools.push(ToolSpec {
            name,
            description,
            parameters,
        });
    }
    let choice = match relayed.get("tool_choice") {
        None => ToolChoice::Auto,
        Some(c) => match c.as_str() {
            Some("none") => ToolChoice::None,
            Some("auto") => ToolChoice::Auto,
            Some("required") => ToolChoice::Required,
            _ => ToolChoice::Function(
                c.pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
        },
    };
    if tools.is_empty() {
        return match choice {
            ToolChoice::Required | ToolChoice::Function(_) => Err(RequestError::param(
                "tool_choice",
                "`tool_choice` asks for a call, but `tools` offers none",
            )),
            _ => Ok((tools, ToolChoice::None)),
        };
    }
    if let ToolChoice::Function(name) = &choice {
        if !tools.iter().any(|t| &t.name == name) {
            return Err(RequestError::param(
                "tool_choice",
                format!("`tool_choice` names `{name}`, which is not among `tools`"),
            ));
        }
    }
    Ok((tools, choice))
}

/// `response_format`: free text, any JSON object, or JSON that follows a schema.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
    },
}

/// The most `logit_bias` entries a request may carry.
pub const MAX_LOGIT_BIAS: usize = 1024;

fn penalty(v: &Value, key: &str) -> Result<f64, RequestError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(0.0),
        Some(x) => match x.as_f64() {
            Some(p) if (-2.0..=2.0).contains(&p) => Ok(p),
            _ => Err(RequestError::param(
                key,
                format!("`{key}` must be a number from -2 to 2"),
            )),
        },
    }
}

fn logit_bias(v: &Value) -> Result<Vec<(u32, f64)>, RequestError> {
    let bad = |m: String| RequestError::param("logit_bias", m);
    let map = match v.get("logit_bias") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(bad(
                "`logit_bias` must be an object of token ids to biases".into()
            ))
        }
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(bad(format!(
            "`logit_bias` has {} entries; at most {MAX_LOGIT_BIAS}",
            map.len()
        )));
    }
    map.iter()
        .map(|(k, b)| {
            let Ok(id) = k.parse::<u32>() else {
                return Err(bad(format!(
                    "`logit_bias` keys are token ids (integers as strings), got {k:?}"
                )));
            };
            match b.as_f64() {
                Some(b) if (-100.0..=100.0).contains(&b) => Ok((id, b)),
                _ => Err(bad(format!(
                    "`logit_bias` values must be numbers from -100 to 100 (token {id})"
                ))),
            }
        })
        .collect()
}

fn response_format(v: &Value) -> Result<ResponseFormat, RequestError> {
    let bad = |m: &str| Err(RequestError::param("response_format", m));
    let Some(f) = v.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(ResponseFormat::Text);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let Some(js) = f.get("json_schema").filter(|j| j.is_object()) else {
                return bad(
                    "`response_format.json_schema` must be an object {name, schema, strict}",
                );
            };
            let name = match js.get("name") {
                Some(Value::String(n))
                    if !n.is_empty()
                        && n.len() <= 64
                        && n
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                {
                    n.clone()
                }
                _ => {
                    return bad("`response_format.json_schema.name` must be 1 to 64 letters, digits, `_` or `-`")
                }
            };
            let schema = match js.get("schema") {
                None | Some(Value::Null) => Value::Bool(true),
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                Some(_) => {
                    return bad("`response_format.json_schema.schema` must be a JSON Schema object")
                }
            };
            if !matches!(js.get("strict"), None | Some(Value::Null | Value::Bool(_))) {
                return bad("`response_format.json_schema.strict` must be a boolean");
            }
            Ok(ResponseFormat::JsonSchema { name, schema })
        }
        _ => bad("`response_format.type` must be \"text\", \"json_object\" or \"json_schema\""),
    }
}

/// Fields an OpenAI client may send that safegate cannot honour: refused, never ignored.
const REFUSED: &[(&str, &str)] = &[
    (
        "logprobs",
        "log-probabilities are not returned through the gateway's checks",
    ),
    (
        "top_logprobs",
        "log-probabilities are not returned through the gateway's checks",
    ),
    (
        "functions",
        "the legacy `functions` field is not supported: send `tools`",
    ),
    (
        "function_call",
        "the legacy `function_call` field is not supported: send `tool_choice`",
    ),
    ("audio", "audio output is not supported"),
    ("modalities", "only text output is supported"),
    ("prediction", "predicted outputs are not supported"),
];

/// Checks and collects the fields relayed to an upstream model.
fn relayed_fields(v: &Value) -> Result<serde_json::Map<String, Value>, RequestError> {
    for (key, why) in REFUSED {
        match v.get(*key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => return Err(RequestError::param(key, format!("`{key}`: {why}"))),
        }
    }
    let mut out = serde_json::Map::new();
    let mut take = |key: &str, ok: &dyn Fn(&Value) -> bool, what: &str| match v.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(x) if ok(x) => {
            out.insert(key.to_string(), x.clone());
            Ok(())
        }
        Some(_) => Err(RequestError::param(key, format!("`{key}` must be {what}"))),
    };
    take(
        "tools",
        &|t| {
            t.as_array().is_some_and(|a| {
                a.iter().all(|tool| {
                    tool.get("type").and_then(Value::as_str) == Some("function")
                        && tool.pointer("/function/name").is_some_and(Value::is_string)
                })
            })
        },
        "an array of {type: \"function\", function: {name, description, parameters}}",
    )?;
    take(
        "tool_choice",
        &|c| {
            matches!(c.as_str(), Some("none" | "auto" | "required"))
                || c.pointer("/function/name").is_some_and(Value::is_string)
        },
        "\"none\", \"auto\", \"required\" or {type: \"function\", function: {name}}",
    )?;
    take("parallel_tool_calls", &Value::is_boolean, "a boolean")?;
    take(
        "response_format",
        &|f| {
            matches!(
                f.get("type").and_then(Value::as_str),
                Some("text" | "json_object" | "json_schema")
            )
        },
        "{type: \"text\" | \"json_object\" | \"json_schema\", ...}",
    )?;
    take("user", &Value::is_string, "a string")?;
    take("metadata", &Value::is_object, "an object")?;
    take("frequency_penalty", &Value::is_number, "a number")?;
    take("presence_penalty", &Value::is_number, "a number")?;
    take("logit_bias", &Value::is_object, "an object")?;
    Ok(out)
}

/// Parses and checks a chat completion body (already JSON).
pub fn parse_chat(v: &Value, limits: &ChatLimits) -> Result<ChatParams, RequestError> {
    if !v.is_object() {
        return Err(RequestError::new("the body must be a JSON object"));
    }
    if let Some(n) = v.get("n") {
        if n.as_u64() != Some(1) {
            return Err(RequestError::param("n", "only n = 1 is supported"));
        }
    }
    let messages = messages_param(v)?;
    let num = |key: &str| -> Result<Option<f64>, RequestError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| RequestError::param(key, format!("`{key}` must be a number"))),
        }
    };
    if messages.len() > limits.max_messages {
        return Err(RequestError::param(
            "messages",
            format!(
                "{} messages; this server accepts at most {}",
                messages.len(),
                limits.max_messages
            ),
        ));
    }
    let cap = limits.max_tokens as f64;
    let max_tokens = num("max_completion_tokens")?
        .or(num("max_tokens")?)
        .unwrap_or(cap.min(256.0));
    if !(1.0..=cap).contains(&max_tokens) || max_tokens.fract() != 0.0 {
        return Err(RequestError::param(
            "max_tokens",
            format!("max_tokens must be an integer from 1 to {cap} (this server's limit), got {max_tokens}"),
        ));
    }
    let seed = match num("seed")? {
        // 2^64 (u64::MAX as f64 rounds up to it) is already out of range.
        Some(s) if s < 0.0 || s.fract() != 0.0 || s >= u64::MAX as f64 => {
            return Err(RequestError::param(
                "seed",
                "`seed` must be a non-negative integer",
            ))
        }
        s => s.map(|s| s as u64),
    };
    let stop = match v.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    RequestError::param("stop", "`stop` must be a string or an array of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(RequestError::param(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    let stream = match v.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(RequestError::param("stream", "`stream` must be a boolean")),
    };
    let include_usage = match v.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(RequestError::param(
                    "stream_options",
                    "`stream_options.include_usage` must be a boolean",
                ))
            }
        },
        Some(_) => {
            return Err(RequestError::param(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    let model = match v.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(RequestError::param("model", "`model` must be a string")),
    };
    let relayed = relayed_fields(v)?;
    let (tools, tool_choice) = tools_param(&relayed)?;
    Ok(ChatParams {
        frequency_penalty: penalty(v, "frequency_penalty")?,
        presence_penalty: penalty(v, "presence_penalty")?,
        logit_bias: logit_bias(v)?,
        response_format: response_format(v)?,
        messages,
        model,
        stream,
        include_usage,
        tools,
        tool_choice,
        relayed,
        max_tokens: max_tokens as usize,
        temperature: num("temperature")?.unwrap_or(0.0),
        top_p: num("top_p")?.unwrap_or(1.0),
        seed,
        stop,
    })
}

/// `POST /v1/moderations`: the texts to judge (`input`: a string, or strings and text parts).
pub fn parse_moderation(v: &Value) -> Result<Vec<String>, RequestError> {
    let bad = || {
        RequestError::param(
            "input",
            "`input` must be a string or a non-empty array of strings or {type: text, text} parts",
        )
    };
    match v.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("text") => o
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| RequestError::param("input", "a text part needs `text`")),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// `POST /v1/shield/scan`: code (or a reply with code in it) and, optionally, its language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRequest {
    pub text: String,
    pub language: Option<String>,
}

pub fn parse_scan(v: &Value) -> Result<ScanRequest, RequestError> {
    let text = v
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| RequestError::param("text", "`text` (a string) is required"))?;
    let language = match v.get("language") {
        None | Some(Value::Null) => None,
        Some(Value::String(l)) => Some(l.clone()),
        Some(_) => {
            return Err(RequestError::param(
                "language",
                "`language` must be a string",
            ))
        }
    };
    Ok(ScanRequest {
        text: text.to_string(),
        language,
    })
}

/// Whose turn `/v1/guard/classify` judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentType {
    /// The last user turn.
    User,
    /// The last assistant turn.
    Agent,
}

/// `POST /v1/guard/classify`: a conversation, whose turn to judge and, optionally, which
/// loaded policy to judge it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifyRequest {
    pub messages: Vec<Message>,
    pub agent_type: AgentType,
    pub policy: Option<String>,
}

pub fn parse_classify(v: &Value) -> Result<ClassifyRequest, RequestError> {
    let messages = messages_param(v)?;
    let agent_type = match v.get("agent_type") {
        None | Some(Value::Null) if messages.last().is_some_and(|m| m.role == "assistant") => {
            AgentType::Agent
        }
        None | Some(Value::Null) => AgentType::User,
        Some(Value::String(s)) if s == "user" => AgentType::User,
        Some(Value::String(s)) if s == "agent" => AgentType::Agent,
        Some(other) => {
            return Err(RequestError::param(
                "agent_type",
                format!("agent_type must be `user` or `agent`, got {other}"),
            ))
        }
    };
    let policy = match v.get("policy") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(_) => return Err(RequestError::param("policy", "`policy` must be a string")),
    };
    Ok(ClassifyRequest {
        messages,
        agent_type,
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: ChatLimits = ChatLimits {
        max_messages: 4,
        max_tokens: 100,
    };

    #[test]
    fn parses_strings_and_text_parts() {
        let m = parse_messages(
            &json!([{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]),
            "f.json",
        )
        .unwrap();
        assert_eq!(m[1].content, "ab");
        assert_eq!(m[0].role, "system");
    }

    #[test]
    fn tools_and_tool_choice() {
        let body = |extra: Value| {
            let mut v = json!({"messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "get_weather",
                    "description": "Weather now", "parameters": {"type": "object",
                    "properties": {"city": {"type": "string"}}}}},
                    {"type": "function", "function": {"name": "now"}}]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse_chat(&v, &LIMITS)
        };
        let p = body(json!({})).unwrap();
        assert_eq!(p.tool_choice, ToolChoice::Auto);
        assert!(p.offers_tools());
        assert_eq!(p.tools[0].description.as_deref(), Some("Weather now"));
        assert_eq!(p.tools[1].parameters["type"], "object");
        let p = body(json!({"tool_choice": "none"})).unwrap();
        assert!(!p.offers_tools());
        let p = body(json!({"tool_choice": {"type": "function", "function": {"name": "now"}}}));
        assert_eq!(p.unwrap().tool_choice, ToolChoice::Function("now".into()));
        let e = body(json!({"tool_choice": {"type": "function", "function": {"name": "x"}}}));
        assert_eq!(e.unwrap_err().param.as_deref(), Some("tool_choice"));
        let e = body(
            json!({"tools": [{"type": "function", "function": {"name": "a"}},
            {"type": "function", "function": {"name": "a"}}]}),
        );
        assert!(e.unwrap_err().message.contains("twice"));
        let e = body(
            json!({"tools": [{"type": "function", "function": {"name": "a",
            "parameters": "x"}}]}),
        );
        assert!(e
            .unwrap_err()
            .message
            .contains("tools[0].function.parameters"));
        let e = body(json!({"tools": [], "tool_choice": "required"}));
        assert_eq!(e.unwrap_err().param.as_deref(), Some("tool_choice"));
        let p = body(json!({"tools": [], "tool_choice": "auto"})).unwrap();
        assert!(!p.offers_tools());
    }

    #[test]
    fn message_errors_name_the_field() {
        let e = parse_messages(&json!([{"role":"wizard","content":"x"}]), "m.json").unwrap_err();
        assert!(e.message.contains("m.json: messages[0].role") && e.message.contains("wizard"));
        let e = parse_messages(&json!([{"role":"user","content":5}]), "m.json").unwrap_err();
        assert!(e.message.contains("messages[0].content"), "{e}");
        assert!(parse_messages(&json!([]), "m.json").is_err());
        assert!(parse_messages(&json!({}), "m.json").is_err());
    }

    #[test]
    fn chat_parameters_are_checked_and_defaulted() {
        let ok = parse_chat(
            &json!({"messages": [{"role": "user", "content": "hi"}], "stop": "x", "seed": 7}),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            (ok.max_tokens, ok.temperature, ok.top_p, ok.seed, ok.stop),
            (100, 0.0, 1.0, Some(7), vec!["x".to_string()])
        );
        let bad = |body: Value, param: &str| {
            let e = parse_chat(&body, &LIMITS).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{e}");
        };
        let m = json!([{"role": "user", "content": "hi"}]);
        bad(json!({"messages": m, "n": 2}), "n");
        bad(json!({"messages": m, "max_tokens": 101}), "max_tokens");
        bad(json!({"messages": m, "max_tokens": 1.5}), "max_tokens");
        bad(json!({"messages": m, "temperature": "hot"}), "temperature");
        bad(json!({"messages": m, "stop": 3}), "stop");
        bad(json!({"messages": m, "seed": -1}), "seed");
        bad(
            json!({"messages": [m[0], m[0], m[0], m[0], m[0]]}),
            "messages",
        );
        bad(json!({"messages": "hi"}), "messages");
        bad(json!({"messages": m, "stream": "yes"}), "stream");
        bad(
            json!({"messages": m, "stream_options": 1}),
            "stream_options",
        );
        bad(json!({"messages": m, "model": 4}), "model");
        let s = parse_chat(
            &json!({"messages": m, "stream": true, "stream_options": {"include_usage": true}, "model": "x"}),
            &LIMITS,
        )
        .unwrap();
        assert!(s.stream && s.include_usage && s.model.as_deref() == Some("x"));
        assert!(parse_chat(&json!([1]), &LIMITS)
            .unwrap_err()
            .param
            .is_none());
        let e = parse_body(b"{\n\"messages\": }").unwrap_err();
        assert!(e.message.contains("line 2"), "{e}");
    }

    #[test]
    fn endpoint_bodies_are_typed_with_errors_naming_the_field() {
        assert_eq!(parse_moderation(&json!({"input": "a"})).unwrap(), vec!["a"]);
        assert_eq!(
            parse_moderation(&json!({"input": ["a", {"type": "text", "text": "b"}]})).unwrap(),
            vec!["a", "b"]
        );
        for bad in [json!({}), json!({"input": []}), json!({"input": [3]})] {
            assert_eq!(
                parse_moderation(&bad).unwrap_err().param.as_deref(),
                Some("input")
            );
        }
        assert_eq!(
            parse_scan(&json!({"language": "python"}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("text")
        );
        let m = json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]);
        let c = parse_classify(&json!({"messages": m})).unwrap();
        assert_eq!(c.agent_type, AgentType::Agent);
        let c = parse_classify(&json!({"messages": m, "agent_type": "user"})).unwrap();
        assert_eq!(c.agent_type, AgentType::User);
        let e = parse_classify(&json!({"messages": m, "agent_type": "bot"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("agent_type"));
    }

    #[test]
    fn boundaries_and_defaults_are_exact() {
        // Display is the message.
        let e = parse_chat(&json!({"messages": []}), &LIMITS).unwrap_err();
        assert_eq!(e.to_string(), e.message);
        // A null content (an assistant turn that only called tools) is empty text.
        let m = parse_messages(&json!([{"role": "assistant", "content": null}]), "r").unwrap();
        assert_eq!(m[0].content, "");
        // Exactly the message limit is accepted.
        let four = json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]);
        assert!(parse_chat(&json!({"messages": four}), &LIMITS).is_ok());
        // Seeds: 0 and 2^53 accepted; fractions, negatives and 2^64 refused.
        let m = json!([{"role": "user", "content": "hi"}]);
        let seed =
            |s: Value| parse_chat(&json!({"messages": m, "seed": s}), &LIMITS).map(|p| p.seed);
        assert_eq!(seed(json!(0)).unwrap(), Some(0));
        assert_eq!(
            seed(json!(9007199254740992u64)).unwrap(),
            Some(9007199254740992)
        );
        for bad in [
            json!(1.5),
            json!(-0.5),
            json!(-1),
            json!(18446744073709551616.0),
            json!(1e20),
        ] {
            assert_eq!(
                seed(bad.clone()).unwrap_err().param.as_deref(),
                Some("seed"),
                "{bad}"
            );
        }
    }

    #[test]
    fn moderation_parts_must_be_text_and_agent_types_follow_the_rules() {
        let e =
            parse_moderation(&json!({"input": [{"type": "image_url", "text": "x"}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        let user_last =
            json!([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]);
        let c = parse_classify(&json!({"messages": user_last})).unwrap();
        assert_eq!(c.agent_type, AgentType::User, "the last turn is the user's");
        let c = parse_classify(&json!({"messages": user_last, "agent_type": "agent"})).unwrap();
        assert_eq!(c.agent_type, AgentType::Agent, "named explicitly");
        let c = parse_classify(&json!({"messages": user_last, "policy": "strict"})).unwrap();
        assert_eq!(c.policy.as_deref(), Some("strict"));
    }
}
