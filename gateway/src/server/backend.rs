//! Where a reply is generated: one seam (`Backend`) with the local engine and the
//! upstream servers behind it, each giving the same kind of event stream (`Source`).

use safegate_engine::{
    ChatMessage, Completion, Engine, GenerateRequest, GenerationEvent, SamplingParams, TokenStream,
};
use serde_json::{json, Value};

use std::collections::VecDeque;
use std::sync::Arc;

use safegate_sse::ToolCallDelta;

use super::metrics::UpstreamMetrics;
use super::upstream::{Relay, Target, UpstreamEvent};
use super::ApiError;
use crate::local_tools::CallReader;

/// A validated chat request.
pub(super) struct ChatRequest {
    /// What the checks and the local engine read (tool calls written out as text).
    pub messages: Vec<ChatMessage>,
    /// The turns as an upstream takes them (tool calls and tool results as sent).
    pub upstream_messages: Vec<Value>,
    /// Fields relayed to an upstream as they are (`tools`, `response_format`, ...).
    pub relayed: serde_json::Map<String, Value>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// The grammar a local reply is held to (`response_format`; an upstream gets the field).
    pub format: Option<std::sync::Arc<safegate_structured::Grammar>>,
}

/// A generation backend: starts replies to chat requests.
pub(super) trait Backend: Send + Sync {
    /// The model name replies carry.
    fn model_name(&self) -> String;
    /// `local` or `upstream`, for the audit log.
    fn kind(&self) -> &'static str;
    /// Starts generating (a full queue: 429). Dropping the source cancels the generation.
    fn start(&self, req: &ChatRequest) -> Result<Source, ApiError>;
}

/// The local engine, with the request's prompt already tokenized.
pub(super) struct Local {
    pub engine: Engine,
    pub prompt_ids: Vec<u32>,
    /// With tools offered: the functions the reply may call, and whether it must (then
    /// the request's grammar holds it to a call).
    pub calls: Option<LocalCalls>,
}

#[derive(Clone)]
pub(super) struct LocalCalls {
    pub names: Vec<String>,
    pub forced: bool,
    /// `parallel_tool_calls` (true unless the request says false).
    pub parallel: bool,
}

impl Backend for Local {
    fn model_name(&self) -> String {
        self.engine.info().name.clone()
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn start(&self, req: &ChatRequest) -> Result<Source, ApiError> {
        super::trace::generation_started(None);
        let stream = self.engine.generate(GenerateRequest {
            prompt_ids: self.prompt_ids.clone(),
            max_tokens: req.max_tokens,
            sampling: req.sampling.clone(),
            stop: req.stop.clone(),
            ignore_eos: false,
            format: req.format.clone(),
        })?;
        Ok(Source::Local(LocalReply {
            stream,
            calls: self
                .calls
                .clone()
                .map(|c| CallReader::new(c.names, c.forced, c.parallel)),
            pending: VecDeque::new(),
        }))
    }
}

/// An OpenAI-compatible upstream server: the requested model's, then its fallbacks.
pub(super) struct Upstream {
    pub chain: Vec<Arc<Target>>,
    pub metrics: UpstreamMetrics,
}

impl Backend for Upstream {
    fn model_name(&self) -> String {
        self.chain[0].name().to_string()
    }

    fn kind(&self) -> &'static str {
        "upstream"
    }

    fn start(&self, req: &ChatRequest) -> Result<Source, ApiError> {
        let messages = req.upstream_messages.clone();
        let mut params = req.relayed.clone();
        params.insert("max_tokens".into(), json!(req.max_tokens));
        params.insert("temperature".into(), json!(req.sampling.temperature));
        params.insert("top_p".into(), json!(req.sampling.top_p));
        if let Some(seed) = req.sampling.seed {
            params.insert("seed".into(), json!(seed));
        }
        if !req.stop.is_empty() {
            params.insert("stop".into(), json!(req.stop));
        }
        let first = &self.chain[0].config;
        let traceparent = super::trace::generation_started(Some((
            first.upstream_model.as_deref().unwrap_or(&first.name),
            &first.upstream,
        )));
        Ok(Source::Upstream(super::upstream::start(Relay {
            chain: self.chain.clone(),
            messages: Value::Array(messages),
            params,
            max_tokens: req.max_tokens,
            headers: traceparent
                .map(|t| ("traceparent", t))
                .into_iter()
                .collect(),
            metrics: self.metrics.clone(),
        })))
    }
}

/// A local reply: the engine's tokens, read for calls when tools are offered.
pub(super) struct LocalReply {
    stream: TokenStream,
    calls: Option<CallReader>,
    /// Events decided at the end (calls, then the end itself).
    pending: VecDeque<Event>,
}

impl LocalReply {
    async fn next(&mut self) -> Event {
        if let Some(event) = self.pending.pop_front() {
            return event;
        }
        loop {
            match self.stream.next().await {
                Some(GenerationEvent::Token { text, .. }) => match &mut self.calls {
                    None => return Event::Text(text),
                    Some(reader) => {
                        let passed = reader.push(&text);
                        if !passed.is_empty() {
                            return Event::Text(passed);
                        }
                    }
                },
                Some(GenerationEvent::Done(mut c)) => {
                    let Some(mut reader) = self.calls.take() else {
                        return Event::Done(c);
                    };
                    // What the reader held comes out with the end: as text (the
                    // completion's tail) or as calls.
                    let mut text = reader.push(&c.tail_text);
                    let read = reader.finish();
                    text.push_str(&read.text);
                    c.tail_text = text;
                    for (index, call) in read.calls.into_iter().enumerate() {
                        self.pending.push_back(Event::ToolCall(ToolCallDelta {
                            index,
                            id: Some(call_id()),
                            name: Some(call.name),
                            arguments: Some(call.arguments),
                        }));
                    }
                    self.pending.push_back(Event::Done(c));
                    return self.pending.pop_front().expect("the end was queued");
                }
                Some(GenerationEvent::Error(e)) => return Event::Failed(e.into()),
                None => {
                    return Event::Failed(ApiError::internal("generation stopped unexpectedly"))
                }
            }
        }
    }
}

/// A call id as OpenAI writes them (`call_` and 24 letters and digits): unique across the
/// turns of a conversation, which clients match tool results by.
fn call_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// A reply being generated, locally or upstream, as one kind of event stream.
pub(super) enum Source {
    Local(LocalReply),
    Upstream(tokio::sync::mpsc::Receiver<UpstreamEvent>),
}

pub(super) enum Event {
    Text(String),
    ToolCall(safegate_sse::ToolCallDelta),
    Done(Completion),
    Failed(ApiError),
}

impl Source {
    pub async fn next(&mut self) -> Event {
        match self {
            Source::Local(reply) => reply.next().await,
            Source::Upstream(rx) => match rx.recv().await {
                Some(UpstreamEvent::Delta(text)) => Event::Text(text),
                Some(UpstreamEvent::ToolCall(call)) => Event::ToolCall(call),
                Some(UpstreamEvent::Done(c)) => Event::Done(c),
                Some(UpstreamEvent::Failed(e)) => Event::Failed(e),
                None => Event::Failed(ApiError::internal("the upstream relay stopped")),
            },
        }
    }
}
