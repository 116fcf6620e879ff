//! One mapping from errors to HTTP status and OpenAI-style JSON bodies.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<String>,
    pub param: Option<String>,
    pub message: String,
    /// Extra fields under `error` (content-filter details).
    pub extra: Option<Value>,
    /// Seconds for the Retry-After header of a 429 (1 when unset).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            extra: None,
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::invalid(message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    pub fn overloaded() -> Self {
        Self {
            code: Some("rate_limit_exceeded".into()),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "the server is at capacity; retry shortly",
            )
        }
    }

    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self {
            code: Some("rate_limit_exceeded".into()),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        }
    }

    pub fn timeout(limit: std::time::Duration) -> Self {
        Self {
            code: Some("timeout".into()),
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                format!(
                    "the request did not complete within {} ms",
                    limit.as_millis()
                ),
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// A prompt refused by policy (Azure OpenAI's content-filter convention).
    pub fn content_filter(message: impl Into<String>, details: Value) -> Self {
        Self {
            code: Some("content_filter".into()),
            extra: Some(details),
            ..Self::invalid(message)
        }
    }

    /// The `error` object of the body.
    pub fn body(&self) -> Value {
        let mut error = json!({"message": self.message, "type": self.kind, "param": self.param, "code": self.code});
        if let (Some(Value::Object(extra)), Some(obj)) = (&self.extra, error.as_object_mut()) {
            obj.extend(extra.clone());
        }
        error
    }

    pub fn into_response(self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.insert_header(("Retry-After", self.retry_after.unwrap_or(1).to_string()));
        }
        resp.json(json!({ "error": self.body() }))
    }
}

impl From<safegate_engine::EngineError> for ApiError {
    fn from(e: safegate_engine::EngineError) -> Self {
        use safegate_engine::EngineError as E;
        match e {
            E::QueueFull => ApiError::overloaded(),
            E::InvalidRequest(m) => ApiError::invalid(m),
            e @ E::ContextOverflow { .. } => ApiError {
                code: Some("context_length_exceeded".into()),
                ..ApiError::invalid(e.to_string())
            },
            e @ (E::Template(_) | E::Tokenizer(_)) => ApiError::invalid(e.to_string()),
            E::Stopped => ApiError::unavailable("the engine has stopped"),
            other => ApiError::internal(other.to_string()),
        }
    }
}
