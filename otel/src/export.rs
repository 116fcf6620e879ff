//! Posts finished spans to an OTLP/HTTP receiver from a thread of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::SpanData;

#[derive(Debug, Clone)]
pub struct ExporterConfig {
    /// The receiver's traces URL, e.g. `http://otel-collector:4318/v1/traces`.
    pub url: String,
    pub service_name: String,
    /// JSON or protobuf.
    pub protocol: crate::Protocol,
    /// Extra CA certificates (PEM) for an `https://` receiver.
    pub ca_file: Option<std::path::PathBuf>,
    /// Headers sent with each export (e.g. a vendor's API key).
    pub headers: Vec<(String, String)>,
    /// Spans waiting to be sent; more are dropped (and counted).
    pub queue: usize,
    /// Spans per request to the receiver.
    pub batch: usize,
    /// The longest a span waits for its batch.
    pub interval: Duration,
    pub timeout: Duration,
}

/// The sending side; cheap to share.
pub struct Exporter {
    tx: SyncSender<Message>,
    stats: Arc<Stats>,
}

enum Message {
    Span(Box<SpanData>),
    /// Send what is queued, then say so and stop.
    Flush(std::sync::mpsc::Sender<()>),
}

#[derive(Default)]
struct Stats {
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

impl Exporter {
    /// Starts the export thread. Errors: a URL or CA file that cannot work.
    pub fn start(config: ExporterConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.url).map_err(|e| format!("`{}`: {e}", config.url))?;
        let tls = match url.scheme() {
            "https" => Some(
                safegate_upstream::tls::client_config(config.ca_file.as_deref())
                    .map_err(|e| e.to_string())?,
            ),
            "http" => None,
            other => {
                return Err(format!(
                    "`{}`: {other}:// is not http:// or https://",
                    config.url
                ))
            }
        };
        let (tx, rx) = sync_channel(config.queue.max(1));
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || run(config, tls, rx, &thread_stats))
            .map_err(|e| e.to_string())?;
        Ok(Self { tx, stats })
    }

    /// Queues spans for export; never waits (a full queue drops them).
    pub fn export(&self, spans: impl IntoIterator<Item = SpanData>) {
        for span in spans {
            match self.tx.try_send(Message::Span(Box::new(span))) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// At shutdown: sends what is queued, waiting at most `limit`.
    pub fn flush(&self, limit: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        let deadline = Instant::now() + limit;
        let mut message = Message::Flush(done);
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// (exported, dropped, failed) spans so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.stats.exported.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
            self.stats.failed.load(Ordering::Relaxed),
        )
    }
}

fn run(
    config: ExporterConfig,
    tls: Option<rustls::ClientConfig>,
    rx: Receiver<Message>,
    stats: &Stats,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("the OTLP exporter cannot start its runtime; no traces are sent");
        return;
    };
    // reqwest wants a process-wide TLS provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout);
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the OTLP exporter cannot build its client; no traces are sent");
            return;
        }
    };
    let mut batch = Vec::with_capacity(config.batch);
    let mut last_warning: Option<Instant> = None;
    loop {
        let deadline = Instant::now() + config.interval;
        let mut closed = false;
        let mut flushed = None;
        while batch.len() < config.batch {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Message::Span(span)) => batch.push(*span),
                Ok(Message::Flush(done)) => {
                    flushed = Some(done);
                    closed = true;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let body = config.protocol.body(&config.service_name, &batch);
            let mut request = client
                .post(&config.url)
                .header("content-type", config.protocol.content_type())
                .body(body);
            for (k, v) in &config.headers {
                request = request.header(k, v);
            }
            let result = runtime.block_on(async { request.send().await });
            let n = batch.len() as u64;
            match result {
                Ok(r) if r.status().is_success() => {
                    stats.exported.fetch_add(n, Ordering::Relaxed);
                }
                other => {
                    stats.failed.fetch_add(n, Ordering::Relaxed);
                    // One warning a minute at most: a missing collector must not flood the log.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        last_warning = Some(Instant::now());
                        let why = match other {
                            Ok(r) => format!("HTTP {}", r.status()),
                            Err(e) => e.to_string(),
                        };
                        tracing::warn!(url = %config.url, error = %why, spans = n, "OTLP export failed; spans dropped");
                    }
                }
            }
            batch.clear();
        }
        if closed {
            if let Some(done) = flushed {
                let _ = done.send(());
            }
            return;
        }
    }
}
