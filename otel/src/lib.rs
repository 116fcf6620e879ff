//! OpenTelemetry traces without the SDK's global state: W3C trace context in and out
//! (`traceparent`), finished spans as plain data, and an exporter that posts them in
//! batches to an OTLP/HTTP receiver in OTLP's JSON encoding (`POST {endpoint}/v1/traces`,
//! `application/json`, which OpenTelemetry collectors, Jaeger and Tempo accept). The
//! exporter runs on its own thread with a bounded queue: a slow or absent collector costs
//! dropped spans (counted), never a waiting request.

mod context;
mod export;
mod otlp;

pub use context::{new_span_id, new_trace_id, parse_traceparent, traceparent, TraceContext};
pub use export::{Exporter, ExporterConfig};
pub use otlp::encode;

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
