//! Bearer-token authentication, per-key endpoint permissions and rate limits.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::HttpRequest;

use super::limiter::Limits;
use super::ApiError;
use crate::config::{sha256, KeyConfig};

fn keys_limits(keys: &[KeyConfig]) -> HashMap<String, Limits> {
    keys.iter().map(|k| (k.id.clone(), Limits::of(k))).collect()
}

/// Who is calling.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub group: Option<String>,
    /// The key's id and its limits (None: keyless).
    pub key: Option<(String, Limits)>,
}

struct Key {
    id: String,
    group: Option<String>,
    endpoints: Option<Vec<String>>,
    limits: Limits,
}

pub struct KeyStore {
    keys: HashMap<[u8; 32], Key>,
    /// Limits by key id (for spending a finished request's tokens).
    limits: HashMap<String, Limits>,
    /// Keyless on loopback: refuse what only a browser would send (see `browser_check`).
    loopback_only: bool,
}

/// Whether `host` (a Host header's name, port stripped) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Without keys the gateway trusts whoever reaches its loopback address, so a web page
/// must not be able to reach it through the user's browser: a request for another host
/// name (DNS rebinding), from another origin, or with a body a form can send (anything
/// but JSON) is refused.
fn browser_check(req: &HttpRequest) -> Result<(), ApiError> {
    let forbidden = |message: &str| ApiError {
        status: StatusCode::FORBIDDEN,
        code: Some("forbidden".into()),
        ..ApiError::invalid(message)
    };
    if let Some(host) = req.headers().get("host") {
        let ok = host.to_str().is_ok_and(loopback_host);
        if !ok {
            return Err(forbidden(
                "this keyless gateway answers only requests addressed to a loopback host name (localhost, 127.0.0.1, [::1]); configure API keys to serve others",
            ));
        }
    }
    if let Some(origin) = req.headers().get("origin") {
        let host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
        if !host.is_some_and(loopback_host) {
            return Err(forbidden(
                "cross-origin requests are refused by a keyless gateway; configure API keys",
            ));
        }
    }
    if req.method() == actix_web::http::Method::POST {
        let json = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: Some("unsupported_media_type".into()),
                ..ApiError::invalid("send the body as JSON with `Content-Type: application/json`")
            });
        }
    }
    Ok(())
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: Some("invalid_api_key".into()),
        ..ApiError::invalid(message)
    }
}

impl KeyStore {
    pub fn new(keys: &[KeyConfig]) -> Self {
        let keys_config = keys;
        let keys = keys
            .iter()
            .filter_map(|k| {
                let hash = crate::config::parse_sha256(&k.sha256)?;
                Some((
                    hash,
                    Key {
                        id: k.id.clone(),
                        group: k.group.clone(),
                        endpoints: k.endpoints.clone(),
                        limits: Limits::of(k),
                    },
                ))
            })
            .collect();
        Self {
            keys,
            limits: keys_limits(keys_config),
            loopback_only: false,
        }
    }

    /// Keyless and listening on loopback: refuse requests only a browser would send.
    pub fn guard_loopback(mut self, on: bool) -> Self {
        self.loopback_only = on && self.keys.is_empty();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The limits of the key with this id.
    pub fn limits(&self, id: &str) -> Option<&Limits> {
        self.limits.get(id)
    }

    /// What can be checked from the headers alone, before the body is read: without keys,
    /// the browser checks; with keys, a bearer token that belongs to a key. (Endpoint
    /// permissions and rate limits are `authenticate`'s, once per request.)
    pub fn precheck(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.keys.is_empty() {
            return if self.loopback_only {
                browser_check(req)
            } else {
                Ok(())
            };
        }
        let token = bearer(req).ok_or_else(|| {
            unauthorized("missing API key: send it as `Authorization: Bearer <key>`")
        })?;
        if self.keys.contains_key(&sha256(token)) {
            Ok(())
        } else {
            Err(unauthorized("incorrect API key provided"))
        }
    }

    /// With no keys configured everyone is an anonymous caller (the server is on loopback;
    /// requests only a browser would send are refused, `browser_check`).
    /// Otherwise: 401 for a missing or unknown key, 403 for an endpoint the key may not
    /// call (its limits are the limiter's, `Caller::key`). `key_id` is set as soon as the
    /// key is known, so that refusals are audited under it.
    pub fn authenticate(
        &self,
        req: &HttpRequest,
        endpoint: &str,
        key_id: &mut Option<String>,
    ) -> Result<Caller, ApiError> {
        if self.keys.is_empty() {
            if self.loopback_only {
                browser_check(req)?;
            }
            return Ok(Caller::default());
        }
        let token = bearer(req).ok_or_else(|| {
            unauthorized("missing API key: send it as `Authorization: Bearer <key>`")
        })?;
        // Looked up by its hash: the table never holds a key, and timing reveals nothing
        // about keys that are not the caller's own.
        let key = self
            .keys
            .get(&sha256(token))
            .ok_or_else(|| unauthorized("incorrect API key provided"))?;
        *key_id = Some(key.id.clone());
        if let Some(allowed) = &key.endpoints {
            if !allowed.iter().any(|e| e == endpoint) {
                return Err(ApiError {
                    status: StatusCode::FORBIDDEN,
                    code: Some("permission_denied".into()),
                    ..ApiError::invalid(format!(
                        "API key `{}` may not call the {endpoint} endpoint",
                        key.id
                    ))
                });
            }
        }
        Ok(Caller {
            group: key.group.clone(),
            key: Some((key.id.clone(), key.limits)),
        })
    }
}

/// The admin bearer token, compared by hash.
pub fn check_admin(req: &HttpRequest, expected: &[u8; 32]) -> Result<(), ApiError> {
    match bearer(req) {
        Some(token) if sha256(token) == *expected => Ok(()),
        _ => Err(unauthorized("missing or wrong admin key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_host_names_are_told_apart() {
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "app.localhost",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:8080",
            "localhost.evil.example",
            "[2001:db8::1]:80",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
