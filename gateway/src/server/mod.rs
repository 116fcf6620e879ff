//! `safegate serve`: the HTTP front door (actix-web). The only part of safegate that knows
//! about HTTP. Inference and guard scoring run on the engine's worker threads or on
//! actix's blocking pool; handlers never block the async runtime.
//!
//! Layout: `startup` (loading and binding), `routes` below; one file per endpoint family
//! (`chat` + `stream` with what they share in `reply`, `moderation`, `scan`, `reload`); `respond` (auth, metrics and the
//! audit line around every request); `checks` (the guard and shield as the server runs
//! them, feeding `crate::output::OutputChecks`); `backend` (the engine and upstreams behind
//! one trait); `upstream` (the relay); `trace` (OpenTelemetry spans); `audit`, `auth`, `error`,
//! `metrics`.

// ApiError carries an OpenAI-style body; it is the slow path and boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod audit;
pub mod auth;
mod backend;
mod chat;
mod checks;
mod error;
mod limiter;
mod metrics;
mod moderation;
mod reload;
mod reply;
mod respond;
mod scan;
mod startup;
mod stream;
mod trace;
mod upstream;

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use safegate_engine::Engine;
use safegate_guard::SafetyClassifier;
use safegate_policies::PolicyStore;
use safegate_shield::Shield;
use serde_json::json;

use crate::config::Limits;
pub use error::ApiError;
pub use metrics::Metrics;
pub use startup::run;

pub struct AppState {
    pub engine: Option<Engine>,
    pub guard: Option<Arc<dyn SafetyClassifier>>,
    /// Prompt Guard for the prompt_attack stage (None: the guard's attack head, if any).
    pub prompt_guard: Option<Arc<safegate_guard::PromptGuard>>,
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
    /// Largest request body (413 past it).
    pub max_body_bytes: usize,
    pub upstreams: Vec<Arc<upstream::Target>>,
    /// Per-key request rates and token budgets (local, or shared on Redis).
    pub limiter: Arc<limiter::Limiter>,
    /// OpenTelemetry traces (None: off).
    pub tracing: Option<trace::Tracing>,
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// /metrics and /readyz.
fn ops_endpoints(cfg: &mut web::ServiceConfig) {
    use actix_web::http::Method;
    cfg.service(endpoint("/readyz", Method::GET, web::get().to(readyz)))
        .service(endpoint(
            "/metrics",
            Method::GET,
            web::get().to(metrics::scrape),
        ));
}

/// The operations endpoints alone, for `--metrics-listen`.
fn ops_routes(cfg: &mut web::ServiceConfig) {
    ops_endpoints(cfg);
    cfg.service(endpoint(
        "/healthz",
        actix_web::http::Method::GET,
        web::get().to(health),
    ))
    .default_service(web::to(|| async {
        ApiError::not_found("no such endpoint").into_response()
    }));
}

/// Every endpoint of the API listener; /metrics and /readyz too unless they have their own
/// listener (`with_ops`).
fn routes(cfg: &mut web::ServiceConfig, with_ops: bool) {
    use actix_web::http::Method;
    if with_ops {
        ops_endpoints(cfg);
    }
    cfg.service(endpoint("/healthz", Method::GET, web::get().to(health)))
        .service(endpoint("/v1/models", Method::GET, web::get().to(models)))
        .service(endpoint(
            "/v1/models/{id:.+}",
            Method::GET,
            web::get().to(model),
        ))
        .service(endpoint(
            "/v1/shield/scan",
            Method::POST,
            web::post().to(scan::shield_scan),
        ))
        .service(endpoint(
            "/v1/chat/completions",
            Method::POST,
            web::post().to(chat::completions),
        ))
        .service(endpoint(
            "/v1/moderations",
            Method::POST,
            web::post().to(moderation::moderations),
        ))
        .service(endpoint(
            "/v1/guard/classify",
            Method::POST,
            web::post().to(moderation::guard_classify),
        ))
        .service(endpoint(
            "/admin/policies/reload",
            Method::POST,
            web::post().to(reload::admin_reload),
        ))
        .default_service(web::to(|| async {
            ApiError::not_found("no such endpoint").into_response()
        }));
}

/// One endpoint served by `route` for `method`; any other method gets 405 with `Allow`.
fn endpoint(
    path: &str,
    method: actix_web::http::Method,
    route: actix_web::Route,
) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move || {
            let method = method.clone();
            async move {
                let mut resp = ApiError {
                    status: actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
                    code: Some("method_not_allowed".into()),
                    ..ApiError::invalid(format!("this endpoint takes {method} only"))
                }
                .into_response();
                if let Ok(v) = actix_web::http::header::HeaderValue::from_str(method.as_str()) {
                    resp.headers_mut().insert(actix_web::http::header::ALLOW, v);
                }
                resp
            }
        }))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let set = state.policies.current();
    let model = state.engine.as_ref().map(|e| {
        json!({"name": e.info().name, "layout": e.info().layout, "provider": e.info().provider.as_str(), "fallback": e.info().fallback, "io_binding": e.info().io_bound, "kv_shared": e.info().kv_shared})
    });
    let guard = state
        .guard
        .as_ref()
        .map(|g| json!({"backend": g.backend(), "model": g.model_name()}));
    // What judges the prompt_attack stage: Prompt Guard, the embedded guard's attack head
    // (asked with no texts, it says whether it has one), or nothing (the stage is skipped).
    let prompt_attack = match (&state.prompt_guard, &state.guard) {
        (Some(p), _) => {
            Some(json!({"backend": "prompt-guard", "model": p.name(), "labels": p.labels()}))
        }
        (None, Some(g)) => matches!(
            g.prompt_attack_scores(&[], &Default::default()),
            Ok(Some(_))
        )
        .then(|| json!({"backend": g.backend(), "model": g.model_name()})),
        (None, None) => None,
    };
    HttpResponse::Ok().json(json!({
        "status": "ready",
        "chat_model": model,
        "guard": guard,
        "prompt_attack": prompt_attack,
        // Distinct rules (a pack serving two languages holds each of its rules once per
        // language: `rule_language_pairs` counts those), as docs/shield.md counts them.
        "shield": {
            "rules": state.shield.rules().map(|(_, r)| r.spec.id.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
            "rule_language_pairs": state.shield.rules().count(),
        },
        "policy_version": set.version,
        "policies": set.policies.keys().collect::<Vec<_>>(),
        // How each upstream's calls went lately; a failing upstream does not make this
        // replica unready (every replica shares it), it shows here and in the metrics.
        "upstreams": state.upstreams.iter().map(|t| t.health_json()).collect::<Vec<_>>(),
    }))
}

/// Every model this server answers for, as OpenAI lists them.
fn served_models(state: &AppState) -> Vec<serde_json::Value> {
    state
        .engine
        .iter()
        .map(|e| json!({"id": e.info().name, "object": "model", "created": 0, "owned_by": "safegate"}))
        .chain(state.upstreams.iter().map(|m| {
            json!({"id": m.name(), "object": "model", "created": 0, "owned_by": "upstream"})
        }))
        .collect()
}

/// The caller's key and request rate, as for any other endpoint.
async fn admit_listing(state: &AppState, req: &actix_web::HttpRequest) -> Result<(), ApiError> {
    let caller = state.keys.authenticate(req, "models", &mut None)?;
    match &caller.key {
        Some((id, limits)) => state.limiter.admit(id, limits).await,
        None => Ok(()),
    }
}

async fn models(state: web::Data<AppState>, req: actix_web::HttpRequest) -> HttpResponse {
    if let Err(e) = admit_listing(&state, &req).await {
        return e.into_response();
    }
    HttpResponse::Ok().json(json!({"object": "list", "data": served_models(&state)}))
}

/// `GET /v1/models/{id}` (the `openai` client's `models.retrieve`): the model, or 404
/// `model_not_found` naming those served.
async fn model(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = admit_listing(&state, &req).await {
        return e.into_response();
    }
    match served_models(&state)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
    {
        Some(m) => HttpResponse::Ok().json(m),
        None => model_not_found(&state, &id, "").into_response(),
    }
}

/// 404 `model_not_found` for a model this server does not serve, naming those it does
/// (`hint` follows the list).
pub(super) fn model_not_found(state: &AppState, name: &str, hint: &str) -> ApiError {
    let served: Vec<String> = served_models(state)
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    ApiError {
        code: Some("model_not_found".into()),
        ..ApiError::not_found(format!(
            "model `{name}` does not exist here (available: {}{hint})",
            served.join(", ")
        ))
    }
}
