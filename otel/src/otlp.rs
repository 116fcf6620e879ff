//! Spans in OTLP's JSON encoding (an `ExportTraceServiceRequest`): ids as hex, times as
//! decimal strings of nanoseconds, 64-bit integers as strings, enums as numbers.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::context::to_hex;
use crate::{AttrValue, SpanData};

fn nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

fn value(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => json!({"stringValue": s}),
        AttrValue::Int(i) => json!({"intValue": i.to_string()}),
        AttrValue::Float(f) if f.is_finite() => json!({"doubleValue": f}),
        AttrValue::Float(f) => json!({"stringValue": f.to_string()}),
        AttrValue::Bool(b) => json!({"boolValue": b}),
        AttrValue::Strs(items) => json!({"arrayValue": {"values":
            items.iter().map(|s| json!({"stringValue": s})).collect::<Vec<_>>()}}),
    }
}

fn attributes(attrs: &[(String, AttrValue)]) -> Value {
    attrs
        .iter()
        .map(|(k, v)| json!({"key": k, "value": value(v)}))
        .collect()
}

/// The resource's attributes: which service, which SDK.
pub(crate) fn resource_attributes(service_name: &str) -> Vec<(String, AttrValue)> {
    vec![
        ("service.name".into(), service_name.into()),
        ("telemetry.sdk.name".into(), "safegate".into()),
        ("telemetry.sdk.language".into(), "rust".into()),
        (
            "telemetry.sdk.version".into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
    ]
}

/// The request body for `POST /v1/traces`.
pub fn encode(service_name: &str, spans: &[SpanData]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": to_hex(&s.trace_id),
                "spanId": to_hex(&s.span_id),
                "name": s.name,
                "kind": s.kind as i32,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes(&s.attributes),
                "status": match &s.error {
                    Some(message) => json!({"code": 2, "message": message}),
                    None => json!({"code": 1}),
                },
            });
            if let Some(parent) = &s.parent_span_id {
                span["parentSpanId"] = json!(to_hex(parent));
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": attributes(&resource_attributes(service_name))},
        "scopeSpans": [{
            "scope": {"name": "safegate", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans,
        }],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_in_otlp_json() {
        let span = crate::sample_server_span(vec![
            ("gen_ai.request.model".into(), "llama".into()),
            ("gen_ai.usage.input_tokens".into(), 12usize.into()),
            ("safegate.score".into(), 0.25.into()),
            ("safegate.blocked".into(), false.into()),
            ("safegate.categories".into(), vec!["S1".to_string()].into()),
        ]);
        let body = encode("safegate", &[span]);
        let s = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "abababababababababababababababab");
        assert_eq!(s["spanId"], "0102030405060708");
        assert_eq!(s["parentSpanId"], "0909090909090909");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(s["endTimeUnixNano"], "1700000000128456789");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "12");
        assert_eq!(s["attributes"][2]["value"]["doubleValue"], 0.25);
        assert_eq!(s["attributes"][3]["value"]["boolValue"], false);
        assert_eq!(
            s["attributes"][4]["value"]["arrayValue"]["values"][0]["stringValue"],
            "S1"
        );
        assert_eq!(s["status"], json!({"code": 2, "message": "upstream_error"}));
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "safegate"}})
        );
    }
}
