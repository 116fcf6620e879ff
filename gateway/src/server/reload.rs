//! Policy hot reload: on a change of the policy files (polled), on SIGHUP, or on the admin
//! endpoint. The new set is validated as a whole and swapped in atomically; an invalid set
//! is rejected with a log line and a metric, and the old one stays in force.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{ApiError, AppState};

/// What the files look like now: (path, modified, length) of every policy file.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                files.extend(rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| {
                    matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                }));
            }
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            (f, modified, meta.map_or(0, |m| m.len()))
        })
        .collect()
}

/// Reads and validates the files and, if valid, puts them in force. Logs and counts either way.
pub fn reload(state: &AppState, paths: &[PathBuf], trigger: &str) -> Result<u64, String> {
    let files = crate::cmd_policy::read_policy_files(paths).map_err(|e| format!("{e:#}"))?;
    match state.policies.reload(&files, state.shield) {
        Ok(version) => {
            state
                .metrics
                .policy_reloads
                .with_label_values(&[trigger, "ok"])
                .inc();
            tracing::info!(version, trigger, "policies reloaded");
            Ok(version)
        }
        Err(e) => {
            state
                .metrics
                .policy_reloads
                .with_label_values(&[trigger, "rejected"])
                .inc();
            tracing::warn!(
                trigger,
                "policy reload rejected, the previous set stays in force:\n{e}"
            );
            Err(e.to_string())
        }
    }
}

/// Polls the files every `every` and reloads when they change.
pub fn spawn_watcher(state: web::Data<AppState>, paths: Vec<PathBuf>, every: Duration) {
    std::thread::Builder::new()
        .name("safegate-policy-watch".into())
        .spawn(move || {
            let mut last = fingerprint(&paths);
            loop {
                std::thread::sleep(every);
                let now = fingerprint(&paths);
                if now != last {
                    last = now;
                    let _ = reload(&state, &paths, "file_change");
                }
            }
        })
        .expect("policy watcher thread");
}

/// Reloads on SIGHUP.
pub fn spawn_sighup(state: web::Data<AppState>, paths: Vec<PathBuf>) {
    actix_web::rt::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!(
                "cannot listen for SIGHUP; reload with the admin endpoint or by editing the files"
            );
            return;
        };
        while hup.recv().await.is_some() {
            let (state, paths) = (state.clone(), paths.clone());
            let _ = web::block(move || reload(&state, &paths, "sighup")).await;
        }
    });
}

/// `POST /admin/policies/reload` with `Authorization: Bearer <admin key>`. Audited like
/// every request, refusals included (`key_id` is `admin` once the token checks out).
pub async fn admin_reload(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let t0 = std::time::Instant::now();
    let mut audit = super::audit::AuditRecord::default();
    let result = async {
        let Some(expected) = state.admin_key else {
            return Err(ApiError {
                status: actix_web::http::StatusCode::FORBIDDEN,
                ..ApiError::invalid(
                    "admin endpoints are disabled: start with SAFEGATE_ADMIN_KEY, --admin-key-file or admin_key_sha256 in the config",
                )
            });
        };
        super::auth::check_admin(&req, &expected)?;
        audit.key_id = Some("admin".into());
        let Some(paths) = state.policy_paths.clone() else {
            return Err(ApiError::invalid(
                "the server runs on the built-in presets; start with --policies to reload files",
            ));
        };
        let s = state.clone();
        match web::block(move || reload(&s, &paths, "admin")).await {
            Ok(Ok(version)) => {
                audit.policy_version = Some(version);
                Ok(super::respond::Reply::from(
                    json!({"status": "reloaded", "policy_version": version}),
                ))
            }
            Ok(Err(errors)) => Err(ApiError {
                code: Some("invalid_policy".into()),
                ..ApiError::invalid(errors)
            }),
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }
    .await;
    super::respond::respond(&state, "admin_policy_reload", t0, audit, result).await
}
