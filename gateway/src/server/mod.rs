//! `safegate serve`: the HTTP front door (actix-web). The only part of safegate that knows
//! about HTTP. Inference and guard scoring run on the engine's worker threads or on
//! actix's blocking pool; handlers never block the async runtime.

// ApiError carries an OpenAI-style body; it is the slow path and boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod audit;
pub mod auth;
mod chat;
mod error;
mod metrics;
mod reload;
mod stream;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{bail, Context, Result};
use safegate_engine::session::SessionOptions;
use safegate_engine::{Engine, EngineOptions};
use safegate_guard::{
    is_embedded_guard, EmbeddedGuard, EmbeddedOptions, LocalGuard, RemoteConfig, RemoteGuard,
    SafetyClassifier,
};
use safegate_policies::{PolicySet, PolicyStore};
use safegate_shield::Shield;
use serde_json::json;

use crate::cli::{Cli, ServeArgs};
use crate::config::{Limits, Settings};
pub use error::ApiError;
pub use metrics::Metrics;

pub struct AppState {
    pub engine: Option<Engine>,
    pub guard: Option<Arc<dyn SafetyClassifier>>,
    pub policies: Arc<PolicyStore>,
    pub shield: &'static Shield,
    pub metrics: Metrics,
    /// Policy files in force (None: the built-in presets).
    pub policy_paths: Option<Vec<std::path::PathBuf>>,
    /// SHA-256 of the admin bearer token.
    pub admin_key: Option<[u8; 32]>,
    pub audit: Option<audit::AuditLog>,
    pub keys: auth::KeyStore,
    pub limits: Limits,
    pub upstreams: Vec<crate::config::UpstreamModel>,
}

static REQUEST_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes one audit record (when the audit log is on): time, request id, endpoint, latency
/// and what the handler collected.
pub async fn write_audit(
    state: &AppState,
    endpoint: &str,
    t0: std::time::Instant,
    mut record: serde_json::Map<String, serde_json::Value>,
) -> std::io::Result<()> {
    let Some(log) = &state.audit else {
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seq = REQUEST_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    record.insert("time_ms".into(), json!(now.as_millis() as u64));
    record.insert(
        "request_id".into(),
        json!(format!("req-{:x}-{seq}", now.as_secs())),
    );
    record.insert("endpoint".into(), json!(endpoint));
    record.entry("key_id").or_insert(serde_json::Value::Null);
    record.insert("latency_ms".into(), json!(t0.elapsed().as_secs_f64() * 1e3));
    log.write(&serde_json::Value::Object(record))
        .await
        .inspect_err(|_| {
            state.metrics.audit_errors.inc();
        })
}

fn load(cli: &Cli, dir: &std::path::Path, args: &Settings) -> Result<Engine> {
    safegate_engine::runtime::init(cli.ort_lib.as_deref())?;
    let opts = EngineOptions {
        device: args.device.parse()?,
        intra_threads: args.threads,
        queue_capacity: args.queue,
        ..Default::default()
    };
    Engine::load(dir, &opts).with_context(|| format!("loading {}", dir.display()))
}

pub fn run(cli: &Cli, serve_args: &ServeArgs) -> Result<()> {
    let args = &Settings::resolve(serve_args)?;
    let addr: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen `{}` is not ADDR:PORT", args.listen))?;
    let keys = auth::KeyStore::new(&args.keys);
    if keys.is_empty() {
        if !addr.ip().is_loopback() && !args.allow_insecure_listen {
            bail!(
                "refusing to listen on {addr} without API keys: anyone who can reach it could use the models. \
                 Add keys to the config file (safegate keys new), listen on 127.0.0.1, or pass \
                 --allow-insecure-listen if a proxy in front authenticates"
            );
        }
        tracing::warn!(
            "no API keys configured: every caller is accepted, with any or no bearer token"
        );
    }
    let shield = Shield::embedded();
    let set = match &args.policies {
        Some(paths) => {
            let files = crate::cmd_policy::read_policy_files(paths)?;
            PolicySet::from_files(&files, shield).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => PolicySet::presets(shield),
    };
    for k in &args.keys {
        if let Some(group) = &k.group {
            if !set.bindings.groups.contains_key(group) {
                if set.bindings.groups.is_empty() {
                    tracing::warn!(
                        "key `{}`: group `{group}` has no binding; it gets the default policy",
                        k.id
                    );
                } else {
                    bail!(
                        "key `{}`: group `{group}` is not in bindings.yaml (groups: {})",
                        k.id,
                        set.bindings
                            .groups
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
    }
    let engine = args
        .model
        .as_ref()
        .map(|m| load(cli, m, args))
        .transpose()?;
    let mut guard: Option<Arc<dyn SafetyClassifier>> = None;
    if let Some(m) = &args.guard_model {
        guard = Some(if is_embedded_guard(m) {
            // The small classifier that ships with safegate (an encoder and guard_head.json).
            safegate_engine::runtime::init(cli.ort_lib.as_deref())?;
            let options = EmbeddedOptions {
                session: SessionOptions {
                    device: args.device.parse()?,
                    intra_threads: args.threads,
                },
                queue: args.queue,
                ..Default::default()
            };
            Arc::new(
                EmbeddedGuard::open(m, &options)
                    .with_context(|| format!("loading the guard {}", m.display()))?,
            )
        } else {
            Arc::new(LocalGuard::new(load(cli, m, args)?))
        });
    }
    if let Some(r) = &args.guard_remote {
        let tokenizer =
            safegate_engine::ChatTokenizer::load_dir(&r.tokenizer).with_context(|| {
                format!(
                    "guard_remote.tokenizer: cannot load {}",
                    r.tokenizer.display()
                )
            })?;
        let bos = safegate_engine::ModelConfig::load(&r.tokenizer)
            .ok()
            .and_then(|c| c.bos_token_id)
            .or_else(|| tokenizer.token_id("<|begin_of_text|>"));
        let config = RemoteConfig {
            base_url: r.base_url.clone(),
            model: r.model.clone(),
            api_key: r.api_key_env.as_ref().and_then(|v| std::env::var(v).ok()),
            timeout: std::time::Duration::from_millis(r.timeout_ms),
            retries: r.retries,
            ..Default::default()
        };
        guard = Some(Arc::new(RemoteGuard::new(config, tokenizer, bos)));
    }
    if let Some(g) = &guard {
        tracing::info!(backend = g.backend(), model = %g.model_name(), "guard ready");
    }
    if guard.is_none() {
        tracing::warn!(
            "no guard model (--guard-model DIR): the policies' guard stages are skipped; the shield still runs"
        );
    }
    let metrics = Metrics::new()?;
    if let Some(e) = &engine {
        metrics
            .provider
            .with_label_values(&[e.info().provider.as_str()])
            .set(1);
    }
    let state = web::Data::new(AppState {
        engine,
        guard,
        policies: Arc::new(PolicyStore::new(set)),
        shield,
        metrics,
        policy_paths: args.policies.clone(),
        admin_key: args.admin_key_sha256,
        audit: match &args.audit_log {
            Some(p) => Some(
                audit::AuditLog::open(p.clone(), args.audit_max_bytes, args.audit_fsync)
                    .with_context(|| format!("cannot open the audit log {}", p.display()))?,
            ),
            None => None,
        },
        keys,
        limits: args.limits.clone(),
        upstreams: args.upstreams.clone(),
    });
    if let Some(paths) = &args.policies {
        reload::spawn_watcher(
            state.clone(),
            paths.clone(),
            std::time::Duration::from_millis(args.policy_poll_ms),
        );
    }
    tracing::info!(%addr, "safegate listening");
    eprintln!("safegate listening on http://{addr}");
    let max_body = args.max_body_bytes;
    // On SIGTERM/SIGINT actix stops accepting, lets in-flight requests (streams included)
    // finish within this grace period, then exits; audit lines are fsynced as written.
    let shutdown_grace = args.limits.shutdown_grace_s;
    let system = actix_web::rt::System::new();
    let sighup = args.policies.clone().map(|p| (state.clone(), p));
    system.block_on(async move {
        if let Some((state, paths)) = sighup {
            reload::spawn_sighup(state, paths);
        }
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(max_body))
                .route(
                    "/healthz",
                    web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
                )
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics::scrape))
                .route("/v1/models", web::get().to(models))
                .route("/v1/shield/scan", web::post().to(chat::shield_scan))
                .route("/v1/chat/completions", web::post().to(chat::completions))
                .route("/v1/moderations", web::post().to(chat::moderations))
                .route("/v1/guard/classify", web::post().to(chat::guard_classify))
                .route(
                    "/admin/policies/reload",
                    web::post().to(reload::admin_reload),
                )
                .default_service(web::to(|| async {
                    ApiError::not_found("no such endpoint").into_response()
                }))
        })
        // Stream frames leave at once instead of waiting on Nagle's algorithm.
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .workers(2)
        .shutdown_timeout(shutdown_grace)
        .bind(addr)?
        .run()
        .await
    })?;
    Ok(())
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let set = state.policies.current();
    let model = state.engine.as_ref().map(|e| {
        json!({"name": e.info().name, "layout": e.info().layout, "provider": e.info().provider.as_str()})
    });
    let guard = state
        .guard
        .as_ref()
        .map(|g| json!({"backend": g.backend(), "model": g.model_name()}));
    HttpResponse::Ok().json(json!({
        "status": "ready",
        "chat_model": model,
        "guard": guard,
        "shield": {"rules": state.shield.rules().count()},
        "policy_version": set.version,
        "policies": set.policies.keys().collect::<Vec<_>>(),
    }))
}

async fn models(state: web::Data<AppState>, req: actix_web::HttpRequest) -> HttpResponse {
    if let Err(e) = state.keys.authenticate(&req, "models", &mut None) {
        return e.into_response();
    }
    let data: Vec<serde_json::Value> = state
        .engine
        .iter()
        .map(|e| json!({"id": e.info().name, "object": "model", "created": 0, "owned_by": "safegate"}))
        .chain(state.upstreams.iter().map(|m| {
            json!({"id": m.name, "object": "model", "created": 0, "owned_by": "upstream"})
        }))
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}
