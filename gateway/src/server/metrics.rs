//! Prometheus metrics (prefix `safegate_`, bounded label values only).

use actix_web::{web, HttpResponse};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::AppState;

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub stage_duration: HistogramVec,
    pub guard_verdicts: IntCounterVec,
    pub shield_findings: IntCounterVec,
    pub tokens: IntCounterVec,
    pub provider: IntGaugeVec,
    pub policy_reloads: IntCounterVec,
    pub audit_errors: prometheus::IntCounter,
    pub check_errors: IntCounterVec,
    pub decisions: IntCounterVec,
    pub released_bytes: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub guard_batches: prometheus::IntCounter,
    pub guard_batch_rows: prometheus::IntCounter,
    pub decode_steps: prometheus::IntCounter,
    pub prompt_attacks: IntCounterVec,
    pub upstream: UpstreamMetrics,
    pub limiter: LimiterMetrics,
    /// Serialises the catch-up of the counters kept by the engines between concurrent scrapes.
    catch_up: std::sync::Mutex<()>,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_requests_total",
                    "Requests by endpoint and outcome",
                ),
                &["endpoint", "outcome"],
            )?,
        )?;
        let buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "safegate_request_duration_seconds",
                    "Request latency by endpoint",
                )
                .buckets(buckets.clone()),
                &["endpoint"],
            )?,
        )?;
        let stage_duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "safegate_stage_duration_seconds",
                    "Latency per stage (input_guard, generation, output_guard, shield)",
                )
                .buckets(buckets),
                &["stage"],
            )?,
        )?;
        let guard_verdicts = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_guard_verdicts_total",
                    "Guard decisions by stage, taxonomy, category and action",
                ),
                &["stage", "taxonomy", "category", "action"],
            )?,
        )?;
        let shield_findings = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_shield_findings_total",
                    "Shield findings by language, CWE, severity and action",
                ),
                &["language", "cwe", "severity", "action"],
            )?,
        )?;
        let tokens = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_tokens_total",
                    "Tokens in (prompt) and out (completion)",
                ),
                &["direction"],
            )?,
        )?;
        let provider = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "safegate_execution_provider",
                    "Execution provider of the chat model (1 = in use)",
                ),
                &["provider"],
            )?,
        )?;
        let policy_reloads = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_policy_reloads_total",
                    "Policy reloads by trigger and outcome",
                ),
                &["trigger", "outcome"],
            )?,
        )?;
        let audit_errors = registered(
            &registry,
            prometheus::IntCounter::new(
                "safegate_audit_write_errors_total",
                "Audit lines that could not be written",
            )?,
        )?;
        let check_errors = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_check_errors_total",
                    "Guard or shield failures (error, timeout) by check and what the policy did",
                ),
                &["check", "outcome"],
            )?,
        )?;
        let decisions = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_policy_decisions_total",
                    "Policy decisions by policy, stage and action",
                ),
                &["policy", "stage", "action"],
            )?,
        )?;
        let released_bytes = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_released_bytes_total",
                    "Bytes of model replies released to clients, by how the request ended (bytes under outcome=\"blocked\" are the cleared part of a stream blocked later)",
                ),
                &["endpoint", "outcome"],
            )?,
        )?;
        let queue_depth = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "safegate_queue_depth",
                    "Requests waiting for an engine worker, by model role",
                ),
                &["model"],
            )?,
        )?;
        let guard_batches = registered(
            &registry,
            prometheus::IntCounter::new(
                "safegate_guard_batches_total",
                "Guard model runs (local and embedded backends)",
            )?,
        )?;
        let guard_batch_rows = registered(
            &registry,
            prometheus::IntCounter::new(
                "safegate_guard_batch_rows_total",
                "Sequences those guard model runs carried (rows / batches = mean batch size)",
            )?,
        )?;
        let decode_steps = registered(
            &registry,
            prometheus::IntCounter::new(
                "safegate_decode_steps_total",
                "Decode steps the chat model ran (one per generated token; a cancelled generation stops within one)",
            )?,
        )?;
        let prompt_attacks = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_prompt_attacks_total",
                    "Requests whose prompt-attack score reached the policy's threshold, by the action taken",
                ),
                &["action"],
            )?,
        )?;
        for action in ["block", "flag", "log"] {
            prompt_attacks.with_label_values(&[action]);
        }
        let upstream = UpstreamMetrics::new(&registry)?;
        let limiter = LimiterMetrics::new(&registry)?;
        // Series a dashboard or an alert reads exist from start-up, at 0, so panels show 0
        // rather than "no data" until the first error or reload.
        for check in ["guard", "shield"] {
            for outcome in ["fail_closed", "fail_open"] {
                check_errors.with_label_values(&[check, outcome]);
            }
        }
        for trigger in ["file_change", "sighup", "admin"] {
            for outcome in ["ok", "rejected"] {
                policy_reloads.with_label_values(&[trigger, outcome]);
            }
        }
        Ok(Self {
            registry,
            requests,
            duration,
            stage_duration,
            guard_verdicts,
            shield_findings,
            tokens,
            provider,
            policy_reloads,
            audit_errors,
            check_errors,
            decisions,
            released_bytes,
            queue_depth,
            guard_batches,
            guard_batch_rows,
            decode_steps,
            prompt_attacks,
            upstream,
            limiter,
            catch_up: std::sync::Mutex::new(()),
        })
    }
}

/// Per upstream model (label values: the configured `[[models]]` names).
#[derive(Clone)]
pub struct UpstreamMetrics {
    calls: IntCounterVec,
    retries: IntCounterVec,
    fallbacks_taken: IntCounterVec,
    first_byte: HistogramVec,
    open: IntGaugeVec,
}

impl UpstreamMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            calls: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "safegate_upstream_calls_total",
                        "Upstream calls by model and result (ok, or the error kind: connect, timeout_connect, timeout_first_byte, timeout_idle, timeout_total, status_429, status_4xx, status_5xx, line_too_long, malformed, failed_midstream, broke_off, truncated), after retries",
                    ),
                    &["upstream", "result"],
                )?,
            )?,
            retries: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "safegate_upstream_retries_total",
                        "Upstream retries by model and the error that caused them",
                    ),
                    &["upstream", "reason"],
                )?,
            )?,
            fallbacks_taken: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "safegate_upstream_fallbacks_total",
                        "Requests passed from a failing upstream model to its next fallback",
                    ),
                    &["from", "to"],
                )?,
            )?,
            first_byte: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "safegate_upstream_first_byte_seconds",
                        "Time from sending an upstream call (retries included) to its first event",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["upstream"],
                )?,
            )?,
            open: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "safegate_upstream_open_calls",
                        "Upstream calls in progress (each holds one connection)",
                    ),
                    &["upstream"],
                )?,
            )?,
        })
    }

    /// Series at 0 from start-up for each configured model.
    pub fn declare(&self, name: &str) {
        self.calls.with_label_values(&[name, "ok"]);
        self.open.with_label_values(&[name]);
        self.first_byte.with_label_values(&[name]);
    }

    pub fn call(&self, name: &str, result: &str) {
        self.calls.with_label_values(&[name, result]).inc();
    }

    pub fn retry(&self, name: &str, reason: &str) {
        self.retries.with_label_values(&[name, reason]).inc();
    }

    pub fn fallbacks(&self, from: &str, to: &str) {
        self.fallbacks_taken.with_label_values(&[from, to]).inc();
    }

    pub fn first_byte(&self, name: &str, after: std::time::Duration) {
        self.first_byte
            .with_label_values(&[name])
            .observe(after.as_secs_f64());
    }

    pub fn open_calls(&self, name: &str, open: usize) {
        self.open.with_label_values(&[name]).set(open as i64);
    }
}

/// The rate limiter: refusals by reason; with `[redis]`, its round trips and failures.
#[derive(Clone)]
pub struct LimiterMetrics {
    rejections: IntCounterVec,
    redis_errors: IntCounterVec,
    redis_latency: prometheus::Histogram,
    local_fallbacks: prometheus::IntCounter,
}

impl LimiterMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let rejections = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_ratelimit_rejections_total",
                    "Requests refused by a key's limits (429), by reason: requests, tokens_per_minute, tokens_per_day",
                ),
                &["reason"],
            )?,
        )?;
        let redis_errors = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "safegate_ratelimit_redis_errors_total",
                    "Shared limiter calls to Redis that failed, by kind (timeout, error)",
                ),
                &["kind"],
            )?,
        )?;
        let redis_latency = registered(
            registry,
            prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "safegate_ratelimit_redis_seconds",
                    "Round trip of the shared limiter's admission script",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
            )?,
        )?;
        let local_fallbacks = registered(
            registry,
            prometheus::IntCounter::new(
                "safegate_ratelimit_local_fallbacks_total",
                "Requests judged by this replica's own limits because Redis could not answer",
            )?,
        )?;
        for reason in ["requests", "tokens_per_minute", "tokens_per_day"] {
            rejections.with_label_values(&[reason]);
        }
        for kind in ["timeout", "error"] {
            redis_errors.with_label_values(&[kind]);
        }
        Ok(Self {
            rejections,
            redis_errors,
            redis_latency,
            local_fallbacks,
        })
    }

    pub fn rejected(&self, reason: &str) {
        self.rejections.with_label_values(&[reason]).inc();
    }

    pub fn redis_error(&self, why: &str) {
        let why = why.to_ascii_lowercase();
        let kind = if why.contains("timeout") || why.contains("timed out") {
            "timeout"
        } else {
            "error"
        };
        self.redis_errors.with_label_values(&[kind]).inc();
    }

    pub fn redis_seconds(&self, d: std::time::Duration) {
        self.redis_latency.observe(d.as_secs_f64());
    }

    pub fn local_fallback(&self) {
        self.local_fallbacks.inc();
    }
}

/// `metric`, registered with `registry`.
fn registered<M>(registry: &Registry, metric: M) -> prometheus::Result<M>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

pub async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    let depth = &state.metrics.queue_depth;
    if let Some(e) = &state.engine {
        depth
            .with_label_values(&["chat"])
            .set(e.queue_depth() as i64);
        let m = &state.metrics;
        let _one_at_a_time = m.catch_up.lock();
        m.decode_steps
            .inc_by(e.decode_steps().saturating_sub(m.decode_steps.get()));
    }
    if let Some(g) = &state.guard {
        depth
            .with_label_values(&["guard"])
            .set(g.queue_depth() as i64);
        if let Some(stats) = g.batch_stats() {
            // The backend keeps the totals; the counters catch up to them at each scrape.
            let m = &state.metrics;
            let _one_at_a_time = m.catch_up.lock();
            m.guard_batches
                .inc_by(stats.prefills.saturating_sub(m.guard_batches.get()));
            m.guard_batch_rows
                .inc_by(stats.rows.saturating_sub(m.guard_batch_rows.get()));
        }
    }
    for target in &state.upstreams {
        state
            .metrics
            .upstream
            .open_calls(target.name(), target.open_calls());
    }
    let mut buf = Vec::new();
    let families = state.metrics.registry.gather();
    if TextEncoder::new().encode(&families, &mut buf).is_err() {
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(buf)
}
