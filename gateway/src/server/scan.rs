//! `POST /v1/shield/scan`: Code Shield on a text, with the caller's policy deciding.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use safegate_policies::{decide, Stage};
use safegate_shield::Language;
use serde_json::json;

use super::audit::{sha256_hex, AuditRecord};
use super::checks::shield_options;
use super::respond::{authorize, parse_request, record_decision, respond, Body, Reply};
use super::{ApiError, AppState};

pub async fn shield_scan(state: web::Data<AppState>, req: HttpRequest, body: Body) -> HttpResponse {
    let t0 = Instant::now();
    let mut audit = AuditRecord::default();
    let result = async {
        let caller = authorize(&state, &req, "shield", &mut audit).await?;
        let body = body.0?;
        let request = parse_request(&body, safegate_api::parse_scan)?;
        let language = match &request.language {
            Some(l) => Some(
                l.parse::<Language>()
                    .map_err(|e| ApiError::invalid_param("language", e))?,
            ),
            None => None,
        };
        audit.text_sha256 = Some(sha256_hex(&request.text));
        let policy = state.policies.current().for_group(caller.group.as_deref());
        let options = shield_options(&policy, language);
        let shield = state.shield;
        let text = request.text;
        let report = web::block(move || shield.scan(&text, &options))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let decision = decide(&policy, Stage::Output, None, &report.findings);
        record_decision(&state, &policy, &decision, &report.findings);
        audit.policy = Some(policy.name.clone());
        let body = json!({"findings": report.findings, "blocks": report.blocks, "decision": decision, "policy": policy.name});
        audit.decision = Some(decision);
        Ok(Reply::from(body))
    }
    .await;
    respond(&state, "shield_scan", t0, audit, result).await
}
