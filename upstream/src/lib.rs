//! An async client for OpenAI-compatible upstream servers (vLLM, TGI, llama.cpp's server,
//! Ollama's `/v1`, hosted APIs over HTTPS, Azure OpenAI): pooled keep-alive connections
//! (HTTP/1.1, and HTTP/2 where TLS offers it), deadlines for every phase of a call, retries
//! before the first byte, a bound on line length, and the stream dialects these servers
//! speak. It knows nothing of the gateway's checks: a call yields chunks, the caller
//! decides what to do with them. Dropping a `Call` closes its connection.
//!
//! Built on `reqwest` (hyper underneath, rustls with the `ring` provider): the maintained
//! client with pooling, HTTP/2 and streamed bodies on tokio, which the gateway already
//! runs on. Each gateway worker thread has its own connection pool, so a connection is
//! driven by the thread that uses it.

mod lines;
mod retry;
pub mod tls;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use lines::{LineBuffer, LineTooLong};
pub use retry::{parse_retry_after, RetryPolicy};
pub use safegate_sse::Chunk;
use safegate_sse::Line;

/// Everything that can go wrong with an upstream call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("invalid upstream configuration: {0}")]
    Config(String),
    #[error("cannot be reached ({0})")]
    Connect(String),
    #[error("sent no {0} within {1:?}")]
    Timeout(Phase, Duration),
    #[error("answered HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        /// The start of the answer's body, for the server log only.
        body: String,
    },
    #[error("sent a line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("sent a malformed stream event ({0})")]
    Malformed(String),
    #[error("failed mid-stream ({0})")]
    Failed(String),
    #[error("broke off its stream ({0})")]
    BrokeOff(String),
    #[error("ended its stream without finishing the reply")]
    Truncated,
}

/// The phase of a call a deadline covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The TCP (and TLS) connection.
    Connect,
    /// From sending the request to the first event of the reply.
    FirstByte,
    /// Between two reads of the reply.
    Idle,
    /// The whole call.
    Total,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connection",
            Phase::FirstByte => "first event",
            Phase::Idle => "next event",
            Phase::Total => "end of the reply",
        })
    }
}

impl UpstreamError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Config(_) => "config",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(Phase::Connect, _) => "timeout_connect",
            UpstreamError::Timeout(Phase::FirstByte, _) => "timeout_first_byte",
            UpstreamError::Timeout(Phase::Idle, _) => "timeout_idle",
            UpstreamError::Timeout(Phase::Total, _) => "timeout_total",
            UpstreamError::Status { status: 429, .. } => "status_429",
            UpstreamError::Status { status, .. } if *status >= 500 => "status_5xx",
            UpstreamError::Status { .. } => "status_4xx",
            UpstreamError::LineTooLong { .. } => "line_too_long",
            UpstreamError::Malformed(_) => "malformed",
            UpstreamError::Failed(_) => "failed_midstream",
            UpstreamError::BrokeOff(_) => "broke_off",
            UpstreamError::Truncated => "truncated",
        }
    }

    /// Worth trying again (the same upstream after a wait, or the next one): nothing was
    /// generated, and the failure is the upstream's state, not the request.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Timeout(Phase::Connect, _) => true,
            UpstreamError::Status { status, .. } => {
                *status == 429 || (*status >= 500 && *status != 501)
            }
            _ => false,
        }
    }

    /// Worth trying another upstream for: retryable failures, and upstreams that refuse
    /// this gateway (credentials, a model they do not serve) or time out; not a request
    /// the upstream found malformed, which the next one would refuse too.
    pub fn falls_back(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => {
                self.retryable() || matches!(status, 401 | 403 | 404 | 408)
            }
            UpstreamError::Timeout(..) => true,
            other => other.retryable(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// How requests authenticate and address the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiStyle {
    /// `POST {base}/chat/completions`, `Authorization: Bearer KEY`.
    OpenAi,
    /// Azure OpenAI: `POST {base}/chat/completions?api-version=V` with `api-key: KEY`, where
    /// the base names the deployment (`https://R.openai.azure.com/openai/deployments/D`).
    Azure { api_version: String },
}

/// Time limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// One upstream server, as configured.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// `http://` or `https://`, up to and including `/v1` (or Azure's deployment path).
    pub base_url: String,
    pub style: ApiStyle,
    pub api_key: Option<String>,
    /// Extra CA certificates (PEM) trusted for this upstream, besides the system's.
    pub ca_file: Option<PathBuf>,
    pub deadlines: Deadlines,
    pub retry: RetryPolicy,
    /// A longer line ends the call (`LineTooLong`).
    pub max_line_bytes: usize,
}

/// A configured upstream, ready to call.
pub struct Endpoint {
    id: usize,
    config: EndpointConfig,
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Calls open now (connections held by this gateway for replies in progress).
    open: Arc<AtomicUsize>,
}

thread_local! {
    /// One client (one connection pool) per endpoint per thread.
    static CLIENTS: RefCell<HashMap<usize, reqwest::Client>> = RefCell::new(HashMap::new());
}

impl Endpoint {
    /// Checks the URL and builds the TLS settings, so a bad configuration fails at start.
    pub fn new(config: EndpointConfig) -> Result<Self, UpstreamError> {
        static IDS: AtomicUsize = AtomicUsize::new(0);
        // reqwest builds TLS settings for every client, plain-HTTP ones too, from the
        // process's default provider.
        tls::install_crypto_provider();
        let base = config.base_url.trim_end_matches('/');
        let tls = if base.starts_with("https://") {
            Some(Arc::new(tls::client_config(config.ca_file.as_deref())?))
        } else if base.starts_with("http://") {
            if config.ca_file.is_some() {
                return Err(UpstreamError::Config(format!(
                    "ca_file is set but `{base}` is not an https:// URL"
                )));
            }
            None
        } else {
            return Err(UpstreamError::Config(format!(
                "`{base}` is not an http:// or https:// URL"
            )));
        };
        let mut url = format!("{base}/chat/completions");
        if let ApiStyle::Azure { api_version } = &config.style {
            url.push_str("?api-version=");
            url.push_str(api_version);
        }
        reqwest::Url::parse(&url).map_err(|e| UpstreamError::Config(format!("`{base}`: {e}")))?;
        Ok(Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            config,
            url,
            tls,
            open: Arc::default(),
        })
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Calls open now.
    pub fn open_calls(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn client(&self) -> Result<reqwest::Client, UpstreamError> {
        CLIENTS.with(|clients| {
            if let Some(c) = clients.borrow().get(&self.id) {
                return Ok(c.clone());
            }
            let mut builder = reqwest::Client::builder()
                .connect_timeout(self.config.deadlines.connect)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true);
            if let Some(tls) = &self.tls {
                builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(tls));
            }
            let client = builder
                .build()
                .map_err(|e| UpstreamError::Config(format!("HTTP client: {e}")))?;
            clients.borrow_mut().insert(self.id, client.clone());
            Ok(client)
        })
    }

    /// Sends the request (a JSON body) and returns the call once the upstream answered
    /// 2xx, retrying failures that generated nothing (`retryable`) as the policy says.
    /// `on_retry` hears of each retry before its wait. `headers` go along (e.g.
    /// `traceparent`).
    pub async fn open(
        &self,
        body: &[u8],
        headers: &[(&str, String)],
        mut on_retry: impl FnMut(&UpstreamError, Duration),
    ) -> Result<Call, UpstreamError> {
        let t0 = Instant::now();
        let total = t0 + self.config.deadlines.total;
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let first_byte = (started + self.config.deadlines.first_byte).min(total);
            match self.send(body, headers, first_byte).await {
                Ok(response) => {
                    return Ok(Call::new(
                        response,
                        first_byte,
                        total,
                        &self.config,
                        self.open.clone(),
                    ))
                }
                Err(e) => {
                    attempt += 1;
                    let wait = e
                        .retryable()
                        .then(|| {
                            self.config
                                .retry
                                .wait(attempt, e.retry_after(), rand::random())
                        })
                        .flatten()
                        .filter(|w| Instant::now() + *w < total);
                    let Some(wait) = wait else { return Err(e) };
                    on_retry(&e, wait);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn send(
        &self,
        body: &[u8],
        headers: &[(&str, String)],
        deadline: Instant,
    ) -> Result<reqwest::Response, UpstreamError> {
        let client = self.client()?;
        let mut request = client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(body.to_vec());
        if let Some(key) = &self.config.api_key {
            request = match self.config.style {
                ApiStyle::OpenAi => request.bearer_auth(key),
                ApiStyle::Azure { .. } => request.header("api-key", key),
            };
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let response = match tokio::time::timeout(left, request.send()).await {
            Err(_) => {
                return Err(UpstreamError::Timeout(
                    Phase::FirstByte,
                    self.config.deadlines.first_byte,
                ))
            }
            Ok(Err(e)) if e.is_connect() && is_timeout(&e) => {
                return Err(UpstreamError::Timeout(
                    Phase::Connect,
                    self.config.deadlines.connect,
                ))
            }
            Ok(Err(e)) if e.is_connect() => return Err(UpstreamError::Connect(chain(&e))),
            Ok(Err(e)) => return Err(UpstreamError::BrokeOff(chain(&e))),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The start of the body, for the log; a second at most.
        let body = tokio::time::timeout(Duration::from_secs(1), first_bytes(response, 2000))
            .await
            .unwrap_or_default();
        Err(UpstreamError::Status {
            status,
            retry_after,
            body,
        })
    }
}

fn is_timeout(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.to_string().to_ascii_lowercase().contains("timed out") {
            return true;
        }
        source = s.source();
    }
    e.is_timeout()
}

/// An error with its causes ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn first_bytes(mut response: reqwest::Response, limit: usize) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(b)) => bytes.extend_from_slice(&b),
            _ => break,
        }
    }
    bytes.truncate(limit);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A reply being received. Dropping it closes the connection (unless the reply was read
/// to its end, when the connection goes back to the pool).
pub struct Call {
    response: reqwest::Response,
    lines: LineBuffer,
    /// `data:` lines of an event not yet complete (SSE lets one event span several).
    event: Option<String>,
    /// The whole body when the upstream answered JSON instead of a stream.
    whole: Option<Vec<u8>>,
    first_byte: Instant,
    total: Instant,
    deadlines: Deadlines,
    seen_data: bool,
    finished: bool,
    ended: bool,
    eof: bool,
    max_line: usize,
    open: Arc<AtomicUsize>,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Call {
    fn new(
        response: reqwest::Response,
        first_byte: Instant,
        total: Instant,
        config: &EndpointConfig,
        open: Arc<AtomicUsize>,
    ) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        let json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        Self {
            response,
            lines: LineBuffer::new(config.max_line_bytes),
            event: None,
            whole: json.then(Vec::new),
            first_byte,
            total,
            deadlines: config.deadlines,
            seen_data: false,
            finished: false,
            ended: false,
            eof: false,
            max_line: config.max_line_bytes,
            open,
        }
    }

    /// The next chunk of the reply; `None` at its end (`[DONE]`, or the end of the body
    /// after a finish reason: not every server sends `[DONE]`).
    pub async fn next(&mut self) -> Result<Option<Chunk>, UpstreamError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            if self.whole.is_none() {
                while let Some(line) = self.lines.next_line().map_err(too_long)? {
                    if let Some(event) = self.on_line(&line)? {
                        if self.ended {
                            self.drain().await;
                        }
                        return Ok(event);
                    }
                }
            }
            if self.eof {
                return self.at_eof();
            }
            let now = Instant::now();
            let (deadline, phase) = if !self.seen_data && self.whole.is_none() {
                (self.first_byte, Phase::FirstByte)
            } else {
                (now + self.deadlines.idle, Phase::Idle)
            };
            let (deadline, phase) = if self.total <= deadline {
                (self.total, Phase::Total)
            } else {
                (deadline, phase)
            };
            let limit = match phase {
                Phase::FirstByte => self.deadlines.first_byte,
                Phase::Idle => self.deadlines.idle,
                _ => self.deadlines.total,
            };
            let read = tokio::time::timeout_at(deadline.into(), self.response.chunk()).await;
            match read {
                Err(_) => return Err(UpstreamError::Timeout(phase, limit)),
                Ok(Err(e)) => return Err(UpstreamError::BrokeOff(chain(&e))),
                Ok(Ok(None)) => self.eof = true,
                Ok(Ok(Some(bytes))) => match &mut self.whole {
                    Some(whole) => {
                        whole.extend_from_slice(&bytes);
                        if whole.len() > self.max_line {
                            return Err(UpstreamError::LineTooLong {
                                limit: self.max_line,
                            });
                        }
                    }
                    None => self.lines.push(&bytes),
                },
            }
        }
    }

    /// One line of the stream: `Some(event)` when it completes one worth returning.
    fn on_line(&mut self, line: &[u8]) -> Result<Option<Option<Chunk>>, UpstreamError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| UpstreamError::Malformed("a line that is not UTF-8".into()))?;
        if let Some(data) = line.strip_prefix("data:") {
            self.seen_data = true;
            let data = data.strip_prefix(' ').unwrap_or(data);
            let joined = match self.event.take() {
                Some(mut pending) => {
                    pending.push('\n');
                    pending.push_str(data);
                    pending
                }
                None => data.to_string(),
            };
            return match safegate_sse::parse_data(&joined) {
                Ok(parsed) => self.on_event(parsed),
                // Perhaps the first of several `data:` lines of one event: wait for more,
                // within the line bound.
                Err(safegate_sse::SseError::Malformed(_)) if joined.len() <= self.max_line => {
                    self.event = Some(joined);
                    Ok(None)
                }
                Err(e) => Err(sse_error(e)),
            };
        }
        if line.is_empty() {
            // The end of an event: one still pending is malformed.
            if let Some(pending) = self.event.take() {
                return Err(sse_error(
                    safegate_sse::parse_data(&pending)
                        .err()
                        .unwrap_or(safegate_sse::SseError::Malformed(String::new())),
                ));
            }
        }
        // Comments (`: keep-alive`), `event:`, `id:`, `retry:` lines.
        Ok(None)
    }

    fn on_event(&mut self, line: Line) -> Result<Option<Option<Chunk>>, UpstreamError> {
        match line {
            Line::Ignored => Ok(None),
            Line::Done => {
                self.ended = true;
                Ok(Some(None))
            }
            Line::Chunk(chunk) => {
                if chunk.finish_reason.is_some() {
                    self.finished = true;
                }
                Ok(Some(Some(chunk)))
            }
        }
    }

    /// Reads what follows `[DONE]` (the end of a chunked body, usually already here), so
    /// the connection can go back to the pool; a little of it, briefly.
    async fn drain(&mut self) {
        let mut budget: usize = 64 * 1024;
        while budget > 0 {
            match tokio::time::timeout(Duration::from_millis(50), self.response.chunk()).await {
                Ok(Ok(Some(b))) => budget = budget.saturating_sub(b.len()),
                _ => return,
            }
        }
    }

    fn at_eof(&mut self) -> Result<Option<Chunk>, UpstreamError> {
        if let Some(whole) = self.whole.take() {
            self.ended = true;
            let text = std::str::from_utf8(&whole)
                .map_err(|_| UpstreamError::Malformed("a body that is not UTF-8".into()))?;
            return match safegate_sse::parse_data(text).map_err(sse_error)? {
                Line::Chunk(chunk) if chunk.finish_reason.is_some() => Ok(Some(chunk)),
                _ => Err(UpstreamError::Truncated),
            };
        }
        if let Some(last) = self.lines.finish() {
            if let Some(event) = self.on_line(&last)? {
                return Ok(event);
            }
        }
        self.ended = true;
        if let Some(pending) = self.event.take() {
            return Err(sse_error(
                safegate_sse::parse_data(&pending)
                    .err()
                    .unwrap_or(safegate_sse::SseError::Malformed(String::new())),
            ));
        }
        if self.finished {
            Ok(None)
        } else {
            Err(UpstreamError::Truncated)
        }
    }
}

fn too_long(e: LineTooLong) -> UpstreamError {
    UpstreamError::LineTooLong { limit: e.limit }
}

fn sse_error(e: safegate_sse::SseError) -> UpstreamError {
    match e {
        safegate_sse::SseError::Malformed(m) => UpstreamError::Malformed(m),
        safegate_sse::SseError::Upstream(m) => UpstreamError::Failed(m),
    }
}
