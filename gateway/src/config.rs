//! `safegate serve` settings: command-line flags and environment (clap) over a TOML config
//! file (`--config FILE`) over built-in defaults, validated at start-up. API keys live only
//! in the file, as SHA-256 hashes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cli::ServeArgs;

/// The config file. Every field is optional; relative paths are relative to the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub allow_insecure_listen: Option<bool>,
    pub model: Option<PathBuf>,
    pub guard_model: Option<PathBuf>,
    /// Prompt Guard (v1 or 2, ONNX) for the prompt_attack stage.
    pub prompt_guard: Option<PathBuf>,
    pub policies: Option<Vec<PathBuf>>,
    pub device: Option<String>,
    pub io_binding: Option<String>,
    pub threads: Option<usize>,
    pub queue: Option<usize>,
    pub max_body_bytes: Option<usize>,
    /// SHA-256 (hex) of the admin bearer token.
    pub admin_key_sha256: Option<String>,
    pub audit_log: Option<PathBuf>,
    pub audit_max_bytes: Option<u64>,
    pub audit_keep: Option<usize>,
    pub audit_fsync: Option<bool>,
    pub policy_poll_ms: Option<u64>,
    pub metrics_listen: Option<String>,
    pub limits: Option<Limits>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Models served by OpenAI-compatible upstream servers.
    #[serde(default)]
    pub models: Vec<UpstreamModel>,
    /// Llama Guard on an OpenAI-compatible completions server with logprobs (vLLM), shared
    /// by all replicas, instead of a local guard model.
    pub guard_remote: Option<RemoteGuardConfig>,
    /// Rate limits and token budgets shared by all replicas (without it each process keeps
    /// its own).
    pub redis: Option<RedisConfig>,
    /// OpenTelemetry traces (OTLP over HTTP); off without this section or the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variables.
    pub tracing: Option<TracingConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS (checked against the
    /// system's roots, or `ca_file`); the password may come from `password_env`.
    pub url: String,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://` only),
    /// instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Environment variable holding the password (kept out of the config text).
    pub password_env: Option<String>,
    /// Time for one limiter round trip (connect included); past it `on_error` applies.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    /// When Redis cannot answer: `local` (each replica's own buckets and windows, with a
    /// warning and a metric) or `closed` (503 until Redis answers again).
    #[serde(default)]
    pub on_error: RedisOnError,
    /// Prefix of the keys safegate writes.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisOnError {
    #[default]
    Local,
    Closed,
}

fn default_redis_timeout() -> u64 {
    250
}

fn default_redis_prefix() -> String {
    "safegate".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The receiver's base URL (`/v1/traces` is appended), e.g. `http://otel-collector:4318`;
    /// a URL already ending in `/v1/traces` is used as it is.
    pub otlp_endpoint: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded (a caller's `traceparent` decides for its own).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Prompt and reply text as span attributes: for debugging only (they leave the
    /// gateway in every trace).
    #[serde(default)]
    pub include_prompts: bool,
    /// CA certificates (PEM) for an https:// receiver, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Headers sent with each export, e.g. a hosted backend's key; values may name an
    /// environment variable as `env:NAME`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_export_interval")]
    pub export_interval_ms: u64,
    /// `http/json` (the default here) or `http/protobuf` (OTLP/HTTP's own default);
    /// from the environment, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "http/json".into()
}

fn default_service_name() -> String {
    "safegate".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_export_interval() -> u64 {
    1_000
}

impl TracingConfig {
    pub fn traces_url(&self) -> String {
        let base = self.otlp_endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }

    /// From the standard OpenTelemetry environment variables, when they are set.
    fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|full| {
                // The traces variable is the full URL already.
                if full.trim_end_matches('/').ends_with("/v1/traces") {
                    full
                } else {
                    format!("{}/v1/traces", full.trim_end_matches('/'))
                }
            })
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let headers = var("OTEL_EXPORTER_OTLP_HEADERS")
            .map(|h| {
                h.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            otlp_endpoint: endpoint,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(default_service_name),
            sample_ratio: var("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|r| r.parse().ok())
                .unwrap_or(1.0),
            include_prompts: false,
            ca_file: None,
            headers,
            export_interval_ms: default_export_interval(),
            protocol: var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
                .unwrap_or_else(default_protocol),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteGuardConfig {
    /// e.g. `http://vllm-guard:8000` (`/v1/completions` is appended).
    pub base_url: String,
    /// The served model name, e.g. `meta-llama/Meta-Llama-Guard-2-8B`.
    pub model: String,
    /// A folder with the guard model's `tokenizer.json` (and `config.json` for its BOS id):
    /// prompts are sent as token ids, tokenized here so user text never becomes special
    /// tokens on the server.
    pub tokenizer: PathBuf,
    /// Environment variable holding the server's bearer token (it must be set).
    pub api_key_env: Option<String>,
    /// CA certificates (PEM) trusted for an https:// server, besides the system's.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_guard_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_guard_retries")]
    pub retries: u32,
}

fn default_guard_timeout() -> u64 {
    5_000
}

fn default_guard_retries() -> u32 {
    2
}

/// A model generated on an upstream server; the same checks apply as to local models.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamModel {
    /// The id clients send as `model` (and see in /v1/models).
    pub name: String,
    /// Base URL of the OpenAI-compatible API, `http://` or `https://`, e.g.
    /// `http://vllm:8000/v1` (Azure OpenAI: `https://R.openai.azure.com/openai/deployments/D`).
    pub upstream: String,
    /// The model id sent upstream (default: `name`).
    pub upstream_model: Option<String>,
    /// Environment variable holding the upstream's API key (it must be set).
    pub api_key_env: Option<String>,
    /// A file holding the upstream's API key (its first line), e.g. a mounted secret.
    pub api_key_file: Option<PathBuf>,
    /// `openai` (Bearer token) or `azure` (`api-key` header, `api-version` query).
    #[serde(default)]
    pub api_style: ApiStyleName,
    /// Azure OpenAI's `api-version` (required with `api_style = "azure"`).
    pub api_version: Option<String>,
    /// CA certificates (PEM) trusted for this upstream besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Time to connect (TCP and TLS).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Time to the reply's first event, and between two events.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_ms: u64,
    /// Time for the whole call, retries included.
    #[serde(default = "default_total_timeout")]
    pub total_timeout_ms: u64,
    /// Retries of a call that failed before the upstream generated anything (connection
    /// refused, 429, 5xx), with jittered exponential backoff from `retry_backoff_ms`, or
    /// the upstream's `Retry-After`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff_ms: u64,
    /// A longer line from the upstream ends the call (502).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Other `[[models]]` tried in order when this one fails before its reply starts.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// A folder with the upstream model's `tokenizer.json` (or the file): the request's
    /// `max_tokens` is counted in its tokens; without one, in stream deltas.
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiStyleName {
    #[default]
    Openai,
    Azure,
}

fn default_connect_timeout() -> u64 {
    5_000
}

fn default_upstream_timeout() -> u64 {
    60_000
}

fn default_total_timeout() -> u64 {
    300_000
}

fn default_retries() -> u32 {
    2
}

fn default_retry_backoff() -> u64 {
    200
}

fn default_max_line_bytes() -> usize {
    1 << 20
}

/// Request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Messages in one chat request.
    pub max_messages: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// Prompt tokens of one chat request (after the chat template).
    pub max_prompt_tokens: usize,
    /// Whole-request time limit (a stream ends with an error past it).
    pub request_timeout_ms: u64,
    /// Seconds a drained server waits for in-flight requests on shutdown.
    pub shutdown_grace_s: u64,
    /// Time to receive a request body (408 past it: a slow sender holds no worker).
    pub body_timeout_ms: u64,
    /// Bytes of text the guard judges for one request at its input (the chat's turns, the
    /// moderation inputs, the conversation to classify): 400 past it, never judged in part.
    pub max_guard_bytes: usize,
    /// Bytes of tool calls (names and arguments) one reply may carry: past it the reply
    /// ends with 502 (a model that floods).
    pub max_tool_call_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_messages: 256,
            max_tokens: 4096,
            max_prompt_tokens: 32_768,
            request_timeout_ms: 300_000,
            shutdown_grace_s: 30,
            body_timeout_ms: 30_000,
            max_guard_bytes: 65_536,
            max_tool_call_bytes: 1 << 20,
        }
    }
}

/// One API key: its hash, who it is, what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for logs and the audit log (never the key).
    pub id: String,
    /// SHA-256 (hex) of the bearer token (`safegate keys new` prints one).
    pub sha256: String,
    /// The key group; `bindings.yaml` maps groups to policies.
    pub group: Option<String>,
    /// Requests per minute (token bucket); unset is unlimited.
    pub requests_per_minute: Option<u32>,
    /// Model tokens (prompt + completion) per calendar minute (UTC); unset is unlimited. A
    /// request is refused once the window's spending reached it; what a request spends is
    /// counted when it ends.
    pub tokens_per_minute: Option<u64>,
    /// Model tokens per calendar day (UTC).
    pub tokens_per_day: Option<u64>,
    /// Endpoints this key may call (chat, moderations, guard, shield, models); unset is all.
    pub endpoints: Option<Vec<String>>,
}

pub const ENDPOINTS: &[&str] = &["chat", "moderations", "guard", "shield", "models"];

/// Everything `serve` runs with, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub allow_insecure_listen: bool,
    pub model: Option<PathBuf>,
    pub guard_model: Option<PathBuf>,
    pub prompt_guard: Option<PathBuf>,
    pub policies: Option<Vec<PathBuf>>,
    pub device: String,
    pub io_binding: String,
    pub threads: usize,
    pub queue: usize,
    pub max_body_bytes: usize,
    pub admin_key_sha256: Option<[u8; 32]>,
    pub audit_log: Option<PathBuf>,
    pub audit_max_bytes: u64,
    /// Rotated audit files kept (0: all).
    pub audit_keep: usize,
    pub audit_fsync: bool,
    pub policy_poll_ms: u64,
    /// /metrics and /readyz on their own address (None: beside the API).
    pub metrics_listen: Option<String>,
    pub limits: Limits,
    pub keys: Vec<KeyConfig>,
    pub upstreams: Vec<UpstreamModel>,
    pub guard_remote: Option<RemoteGuardConfig>,
    pub tracing: Option<TracingConfig>,
    pub redis: Option<RedisConfig>,
}

pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let mut cfg: FileConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let rebase = |p: &mut PathBuf| {
        // `stdout` and `off` name no file (audit_log).
        if p.is_relative() && p.as_os_str() != "stdout" && p.as_os_str() != "off" {
            *p = base.join(&*p);
        }
    };
    for p in [
        &mut cfg.model,
        &mut cfg.guard_model,
        &mut cfg.prompt_guard,
        &mut cfg.audit_log,
    ]
    .into_iter()
    .flatten()
    {
        rebase(p);
    }
    for p in cfg.policies.iter_mut().flatten() {
        rebase(p);
    }
    if let Some(g) = cfg.guard_remote.as_mut() {
        rebase(&mut g.tokenizer);
        if let Some(p) = g.ca_file.as_mut() {
            rebase(p);
        }
    }
    if let Some(p) = cfg.tracing.as_mut().and_then(|t| t.ca_file.as_mut()) {
        rebase(p);
    }
    if let Some(p) = cfg.redis.as_mut().and_then(|r| r.ca_file.as_mut()) {
        rebase(p);
    }
    for m in &mut cfg.models {
        for p in [&mut m.api_key_file, &mut m.ca_file, &mut m.tokenizer]
            .into_iter()
            .flatten()
        {
            rebase(p);
        }
    }
    Ok(cfg)
}

impl Settings {
    pub fn resolve(args: &ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let where_ = || {
            args.config
                .as_ref()
                .map_or("the config".to_string(), |p| p.display().to_string())
        };
        if args.admin_key.is_some() {
            bail!(
                "--admin-key would show the admin token to every user of this machine (ps); \
                 put it in SAFEGATE_ADMIN_KEY or in a file given with --admin-key-file"
            );
        }
        let from_file = match &args.admin_key_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("--admin-key-file: cannot read {}", p.display()))?;
                let token = text.lines().next().unwrap_or("").trim().to_string();
                if token.is_empty() {
                    bail!("--admin-key-file: {} is empty", p.display());
                }
                Some(token)
            }
            None => None,
        };
        let admin_key = from_file.or_else(|| {
            std::env::var("SAFEGATE_ADMIN_KEY")
                .ok()
                .filter(|k| !k.is_empty())
        });
        let admin_key_sha256 =
            match (&admin_key, &file.admin_key_sha256) {
                (Some(key), _) => Some(sha256(key)),
                (None, Some(hex)) => Some(parse_sha256(hex).with_context(|| {
                    format!("{}: admin_key_sha256 is not 64 hex digits", where_())
                })?),
                (None, None) => None,
            };
        if let (Some(dir), Some(remote)) = (
            args.guard_model.as_ref().or(file.guard_model.as_ref()),
            &file.guard_remote,
        ) {
            bail!(
                "{}: both a guard model ({}) and [guard_remote] ({}) are set; one guard judges \
                 requests: remove one (a --guard-model flag or SAFEGATE_GUARD_MODEL counts too)",
                where_(),
                dir.display(),
                remote.base_url
            );
        }
        let mut seen_ids = std::collections::HashSet::new();
        let mut seen_hashes = std::collections::HashSet::new();
        for (i, k) in file.keys.iter().enumerate() {
            let at = format!("{}: keys[{i}] (`{}`)", where_(), k.id);
            if k.id.is_empty() {
                bail!("{}: keys[{i}]: `id` must not be empty", where_());
            }
            if !seen_ids.insert(k.id.clone()) {
                bail!("{at}: the id is used twice");
            }
            let Some(hash) = parse_sha256(&k.sha256) else {
                bail!("{at}: `sha256` must be 64 hex digits (the SHA-256 of the key, not the key)");
            };
            if !seen_hashes.insert(hash) {
                bail!("{at}: the same key hash is listed twice");
            }
            if k.requests_per_minute == Some(0)
                || k.tokens_per_minute == Some(0)
                || k.tokens_per_day == Some(0)
            {
                bail!("{at}: requests_per_minute, tokens_per_minute and tokens_per_day must be at least 1 (leave one out for no limit)");
            }
            for e in k.endpoints.iter().flatten() {
                if !ENDPOINTS.contains(&e.as_str()) {
                    bail!(
                        "{at}: unknown endpoint `{e}` (expected {})",
                        ENDPOINTS.join(", ")
                    );
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, m) in file.models.iter().enumerate() {
            let at = format!("{}: models[{i}] (`{}`)", where_(), m.name);
            if m.name.is_empty() || !names.insert(m.name.clone()) {
                bail!("{at}: `name` must be non-empty and unique");
            }
            if !m.upstream.starts_with("http://") && !m.upstream.starts_with("https://") {
                bail!(
                    "{at}: `upstream` must be an http:// or https:// URL (e.g. http://vllm:8000/v1); got `{}`",
                    m.upstream
                );
            }
            if m.timeout_ms == 0
                || m.connect_timeout_ms == 0
                || m.total_timeout_ms == 0
                || m.max_line_bytes == 0
            {
                bail!("{at}: timeout_ms, connect_timeout_ms, total_timeout_ms and max_line_bytes must be at least 1");
            }
            if m.api_key_env.is_some() && m.api_key_file.is_some() {
                bail!("{at}: api_key_env and api_key_file both name a key; keep one");
            }
            match (m.api_style, &m.api_version) {
                (ApiStyleName::Azure, None) => {
                    bail!("{at}: api_style = \"azure\" needs api_version (e.g. \"2024-10-21\")")
                }
                (ApiStyleName::Openai, Some(_)) => {
                    bail!("{at}: api_version applies to api_style = \"azure\" only")
                }
                _ => {}
            }
        }
        for (i, m) in file.models.iter().enumerate() {
            let at = format!("{}: models[{i}] (`{}`)", where_(), m.name);
            for f in &m.fallbacks {
                if f == &m.name || !names.contains(f) {
                    bail!(
                        "{at}: fallback `{f}` is not another [[models]] entry (have: {})",
                        file.models
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        if let (Some(_), Some(_)) = (&args.guard_model, &file.guard_remote) {
            bail!(
                "{}: guard_remote and --guard-model both name a guard; keep one",
                where_()
            );
        }
        let mut tracing = file.tracing.clone().or_else(TracingConfig::from_env);
        if let Some(t) = tracing.as_mut() {
            if !(0.0..=1.0).contains(&t.sample_ratio) {
                bail!("{}: [tracing] sample_ratio must be within 0..1", where_());
            }
            for (name, value) in t.headers.iter_mut() {
                if let Some(var) = value.strip_prefix("env:") {
                    *value = std::env::var(var).with_context(|| {
                        format!("{}: [tracing] header {name}: {var} is not set", where_())
                    })?;
                }
            }
        }
        if let Some(r) = &file.redis {
            let tls = r.url.starts_with("rediss://");
            if !tls && !r.url.starts_with("redis://") && !r.url.starts_with("redis+unix://") {
                bail!(
                    "{}: [redis] url must be redis://HOST:PORT, rediss://HOST:PORT (TLS) or \
                     redis+unix://PATH; got `{}`",
                    where_(),
                    r.url
                );
            }
            if r.ca_file.is_some() && !tls {
                bail!(
                    "{}: [redis] ca_file is for TLS: the url must be rediss://",
                    where_()
                );
            }
            if r.timeout_ms == 0 {
                bail!("{}: [redis] timeout_ms must be at least 1", where_());
            }
        }
        let limits = file.limits.clone().unwrap_or_default();
        if limits.max_messages == 0
            || limits.max_tokens == 0
            || limits.request_timeout_ms == 0
            || limits.body_timeout_ms == 0
            || limits.max_guard_bytes == 0
        {
            bail!(
                "{}: limits must be at least 1 (max_messages, max_tokens, request_timeout_ms, body_timeout_ms, max_guard_bytes)",
                where_()
            );
        }
        Ok(Self {
            listen: args
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            allow_insecure_listen: args.allow_insecure_listen
                || file.allow_insecure_listen.unwrap_or(false),
            model: args.model.clone().or(file.model),
            guard_model: args.guard_model.clone().or(file.guard_model),
            prompt_guard: args.prompt_guard.clone().or(file.prompt_guard),
            policies: args.policies.clone().or(file.policies),
            device: args
                .device
                .clone()
                .or(file.device)
                .unwrap_or_else(|| "auto".into()),
            io_binding: args
                .io_binding
                .clone()
                .or(file.io_binding)
                .unwrap_or_else(|| "auto".into()),
            threads: args.threads.or(file.threads).unwrap_or(0),
            queue: args.queue.or(file.queue).unwrap_or(64),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(2 * 1024 * 1024),
            admin_key_sha256,
            audit_log: args
                .audit_log
                .clone()
                .or(file.audit_log)
                .or_else(|| Some(PathBuf::from("safegate-audit.jsonl")))
                .filter(|p| p.as_os_str() != "off"),
            audit_max_bytes: args
                .audit_max_bytes
                .or(file.audit_max_bytes)
                .unwrap_or(100 * 1024 * 1024),
            audit_keep: args.audit_keep.or(file.audit_keep).unwrap_or(0),
            audit_fsync: !args.no_audit_fsync && file.audit_fsync.unwrap_or(true),
            policy_poll_ms: args.policy_poll_ms.or(file.policy_poll_ms).unwrap_or(1000),
            metrics_listen: args.metrics_listen.clone().or(file.metrics_listen),
            limits,
            keys: file.keys,
            upstreams: file.models,
            guard_remote: file.guard_remote,
            tracing,
            redis: file.redis,
        })
    }
}
