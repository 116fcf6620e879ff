//! OpenTelemetry traces without the SDK's global state: W3C trace context in and out
//! (`traceparent`), finished spans as plain data, and an exporter that posts them in
//! batches to an OTLP/HTTP receiver (`POST {endpoint}/v1/traces`) in OTLP's JSON encoding
//! (`application/json`) or its protobuf encoding (`application/x-protobuf`, the OTLP/HTTP
//! default, which every receiver accepts). The
//! exporter runs on its own thread with a bounded queue: a slow or absent collector costs
//! dropped spans (counted), never a waiting request.

mod context;
mod export;
mod otlp;
mod protobuf;

pub use context::{new_span_id, new_trace_id, parse_traceparent, traceparent, TraceContext};
pub use export::{Exporter, ExporterConfig};
pub use otlp::encode;
pub use protobuf::encode_protobuf;

/// How spans are encoded for the receiver (`OTEL_EXPORTER_OTLP_PROTOCOL`'s names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `http/json`.
    #[default]
    Json,
    /// `http/protobuf`.
    Protobuf,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http/json" => Ok(Protocol::Json),
            "http/protobuf" => Ok(Protocol::Protobuf),
            "grpc" => Err(
                "OTLP over gRPC is not supported: use http/protobuf or http/json (port 4318)"
                    .into(),
            ),
            other => Err(format!(
                "unknown OTLP protocol `{other}` (http/protobuf, http/json)"
            )),
        }
    }
}

impl Protocol {
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Json => "application/json",
            Protocol::Protobuf => "application/x-protobuf",
        }
    }

    /// The request body for these spans.
    pub fn body(self, service_name: &str, spans: &[SpanData]) -> Vec<u8> {
        match self {
            Protocol::Json => encode(service_name, spans).to_string().into_bytes(),
            Protocol::Protobuf => encode_protobuf(service_name, spans),
        }
    }
}

use std::time::SystemTime;

/// What a span stands for (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Strs(Vec<String>),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}

impl From<usize> for AttrValue {
    fn from(v: usize) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Float(v)
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> Self {
        AttrValue::Strs(v)
    }
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(String, AttrValue)>,
    /// `Some(message)`: the span's status is an error.
    pub error: Option<String>,
}

/// The server span both encoders' tests write: fixed ids, a parent, 5 ms from a fixed
/// start, an error status, and the given attributes.
#[cfg(test)]
pub(crate) fn sample_server_span(attributes: Vec<(String, AttrValue)>) -> SpanData {
    let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789);
    SpanData {
        trace_id: [0xab; 16],
        span_id: [1, 2, 3, 4, 5, 6, 7, 8],
        parent_span_id: Some([9; 8]),
        name: "chat llama".into(),
        kind: SpanKind::Server,
        start,
        end: start + std::time::Duration::from_millis(5),
        attributes,
        error: Some("upstream_error".into()),
    }
}
