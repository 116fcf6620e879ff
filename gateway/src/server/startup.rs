//! Start-up: settings resolved, models, guard, policies and audit log loaded, and the
//! HTTP server bound. Request handling is elsewhere; this runs once.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use anyhow::{bail, Context, Result};
use safegate_engine::session::SessionOptions;
use safegate_engine::{Engine, EngineOptions};
use safegate_guard::{
    is_embedded_guard, EmbeddedGuard, EmbeddedOptions, LocalGuard, PromptGuard, RemoteConfig,
    RemoteGuard, SafetyClassifier,
};
use safegate_policies::{PolicySet, PolicyStore};
use safegate_shield::Shield;

use super::{audit, auth, limiter, reload, trace, upstream, AppState, Metrics};
use crate::cli::{Cli, ServeArgs};
use crate::config::Settings;

fn load(cli: &Cli, dir: &std::path::Path, args: &Settings) -> Result<Engine> {
    safegate_engine::runtime::init(cli.ort_lib.as_deref())?;
    let opts = EngineOptions {
        device: args.device.parse()?,
        io_binding: args.io_binding.parse()?,
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
    let keys = auth::KeyStore::new(&args.keys).guard_loopback(addr.ip().is_loopback());
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
    // Every language's rules compiled before the first request, not during it.
    let rules = shield.rules().count();
    tracing::debug!(rules, "shield rules compiled");
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
                    ..Default::default()
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
        let api_key = match &r.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|k| !k.is_empty())
                    .with_context(|| format!("guard_remote.api_key_env: {var} is not set"))?,
            ),
            None => None,
        };
        // https:// with the same trust as upstream models: system roots plus a CA file.
        let tls = if r.base_url.starts_with("https://") {
            Some(Arc::new(
                safegate_upstream::tls::client_config(r.ca_file.as_deref())
                    .map_err(|e| anyhow::anyhow!("guard_remote: {e}"))?,
            ))
        } else if r.base_url.starts_with("http://") {
            None
        } else {
            bail!(
                "guard_remote.base_url must be an http:// or https:// URL; got `{}`",
                r.base_url
            );
        };
        let config = RemoteConfig {
            base_url: r.base_url.clone(),
            model: r.model.clone(),
            api_key,
            timeout: std::time::Duration::from_millis(r.timeout_ms),
            retries: r.retries,
            tls,
            ..Default::default()
        };
        guard = Some(Arc::new(RemoteGuard::new(config, tokenizer, bos)));
    }
    if let Some(g) = &guard {
        tracing::info!(backend = g.backend(), model = %g.model_name(), "guard ready");
    }
    let prompt_guard = match &args.prompt_guard {
        Some(dir) => {
            safegate_engine::runtime::init(cli.ort_lib.as_deref())?;
            let session = SessionOptions {
                device: args.device.parse()?,
                intra_threads: args.threads,
                ..Default::default()
            };
            let p = PromptGuard::open(dir, &session)
                .with_context(|| format!("loading the Prompt Guard {}", dir.display()))?;
            tracing::info!(model = p.name(), labels = ?p.labels(), "prompt guard ready (the policies' prompt_attack stage)");
            Some(Arc::new(p))
        }
        None => None,
    };
    if guard.is_none() {
        tracing::warn!(
            "no guard model (--guard-model DIR): the policies' guard stages are skipped; the shield still runs"
        );
    }
    let metrics = Metrics::new()?;
    let limiter = Arc::new(limiter::Limiter::new(
        args.redis.as_ref(),
        metrics.limiter.clone(),
    )?);
    let upstreams = upstream::build_targets(&args.upstreams)?;
    for t in &upstreams {
        metrics.upstream.declare(t.name());
    }
    if let Some(e) = &engine {
        metrics
            .provider
            .with_label_values(&[e.info().provider.as_str()])
            .set(1);
    }
    let state = web::Data::new(AppState {
        engine,
        guard,
        prompt_guard,
        policies: Arc::new(PolicyStore::new(set)),
        shield,
        metrics,
        policy_paths: args.policies.clone(),
        admin_key: args.admin_key_sha256,
        audit: match &args.audit_log {
            Some(p) if p.as_os_str() == "stdout" => {
                Some(audit::AuditLog::stdout().context("cannot start the audit log on stdout")?)
            }
            Some(p) => Some(
                audit::AuditLog::open(
                    p.clone(),
                    args.audit_max_bytes,
                    args.audit_fsync,
                    args.audit_keep,
                )
                .with_context(|| format!("cannot open the audit log {}", p.display()))?,
            ),
            None => None,
        },
        keys,
        limits: args.limits.clone(),
        max_body_bytes: args.max_body_bytes,
        upstreams,
        limiter,
        tracing: args
            .tracing
            .as_ref()
            .map(trace::Tracing::start)
            .transpose()?,
    });
    if let Some(paths) = &args.policies {
        reload::spawn_watcher(
            state.clone(),
            paths.clone(),
            std::time::Duration::from_millis(args.policy_poll_ms),
        );
    }
    let ops_addr: Option<SocketAddr> = args
        .metrics_listen
        .as_deref()
        .map(|a| {
            a.parse()
                .with_context(|| format!("--metrics-listen `{a}` is not ADDR:PORT"))
        })
        .transpose()?;
    if let Some(ops) = ops_addr {
        tracing::info!(%ops, "metrics and readiness on their own address");
        eprintln!("safegate metrics and readiness on http://{ops}");
    }
    tracing::info!(%addr, "safegate listening");
    eprintln!("safegate listening on http://{addr}");
    // On SIGTERM/SIGINT actix stops accepting, lets in-flight requests (streams included)
    // finish within this grace period, then exits; audit lines are fsynced as written.
    let shutdown_grace = args.limits.shutdown_grace_s;
    let system = actix_web::rt::System::new();
    let sighup = args.policies.clone().map(|p| (state.clone(), p));
    let at_exit = state.clone();
    system.block_on(async move {
        if let Some((state, paths)) = sighup {
            reload::spawn_sighup(state, paths);
        }
        let ops = match ops_addr {
            Some(ops_addr) => {
                let state = state.clone();
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(state.clone())
                        .configure(super::ops_routes)
                })
                .workers(1)
                .shutdown_timeout(shutdown_grace)
                .bind(ops_addr)?
                .run();
                Some(actix_web::rt::spawn(server))
            }
            None => None,
        };
        let with_ops = ops.is_none();
        let api = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // Each API request's trace (when tracing is on) is the task's current one.
                .wrap_fn(|req, srv| {
                    use actix_web::dev::Service;
                    let handle = req
                        .app_data::<web::Data<AppState>>()
                        .filter(|_| {
                            req.path().starts_with("/v1/") || req.path().starts_with("/admin/")
                        })
                        .and_then(|s| {
                            trace::begin(
                                s.tracing.as_ref(),
                                req.method().as_str(),
                                req.path(),
                                req.headers()
                                    .get("traceparent")
                                    .and_then(|v| v.to_str().ok()),
                            )
                        });
                    trace::scoped(handle, srv.call(req))
                })
                .configure(|cfg| super::routes(cfg, with_ops))
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
        .await;
        if let Some(ops) = ops {
            ops.abort();
        }
        api
    })?;
    if let Some(tracing) = &at_exit.tracing {
        tracing.flush();
    }
    Ok(())
}
