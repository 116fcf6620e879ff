//! `safegate serve`: the HTTP front door (actix-web). The only part of safegate that knows
//! about HTTP. Inference and guard scoring run on the engine's worker threads or on
//! actix's blocking pool; handlers never block the async runtime.
//!
//! Layout: `startup` (loading and binding), `routes` below; one file per endpoint family
//! (`chat` + `stream` with what they share in `reply`, `moderation`, `scan`, `reload`); `respond` (auth, metrics and the
//! audit line around every request); `checks` (the guard and shield as the server runs
//! them, feeding `crate::output::OutputChecks`); `backend` (the engine and upstreams behind
//! one trait); `upstream` (the relay); `audit`, `auth`, `error`, `metrics`.

// ApiError carries an OpenAI-style body; it is the slow path and boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod audit;
pub mod auth;
mod backend;
mod chat;
mod checks;
mod error;
mod metrics;
mod moderation;
mod reload;
mod reply;
mod respond;
mod scan;
mod startup;
mod stream;
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

/// Every endpoint.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
    )
    .route("/readyz", web::get().to(readyz))
    .route("/metrics", web::get().to(metrics::scrape))
    .route("/v1/models", web::get().to(models))
    .route("/v1/shield/scan", web::post().to(scan::shield_scan))
    .route("/v1/chat/completions", web::post().to(chat::completions))
    .route("/v1/moderations", web::post().to(moderation::moderations))
    .route(
        "/v1/guard/classify",
        web::post().to(moderation::guard_classify),
    )
    .route(
        "/admin/policies/reload",
        web::post().to(reload::admin_reload),
    )
    .default_service(web::to(|| async {
        ApiError::not_found("no such endpoint").into_response()
    }));
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
