//! Spans in OTLP's protobuf encoding (`application/x-protobuf`, the OTLP/HTTP default): the
//! same `ExportTraceServiceRequest` as [`crate::encode`], written field by field with the
//! field numbers of opentelemetry-proto's `trace.proto`, `common.proto` and
//! `resource.proto` (the tests decode it with the generated types).

use std::time::SystemTime;

use crate::{AttrValue, SpanData};

/// A protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn uint(&mut self, field: u32, v: u64) {
        self.tag(field, 0);
        self.varint(v);
    }

    /// `int64`: two's complement as a varint (ten bytes when negative).
    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn double(&mut self, field: u32, v: f64) {
        self.fixed64(field, v.to_bits());
    }

    fn bytes(&mut self, field: u32, v: &[u8]) {
        self.tag(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
    }

    fn string(&mut self, field: u32, v: &str) {
        self.bytes(field, v.as_bytes());
    }

    fn message(&mut self, field: u32, m: Message) {
        self.bytes(field, &m.0);
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `AnyValue`: string 1, bool 2, int 3, double 4, array 5.
fn any_value(v: &AttrValue) -> Message {
    let mut m = Message::default();
    match v {
        AttrValue::Str(s) => m.string(1, s),
        AttrValue::Bool(b) => m.uint(2, u64::from(*b)),
        AttrValue::Int(i) => m.int(3, *i),
        AttrValue::Float(f) => m.double(4, *f),
        AttrValue::Strs(items) => {
            // ArrayValue { repeated AnyValue values = 1 }
            let mut array = Message::default();
            for s in items {
                array.message(1, any_value(&AttrValue::Str(s.clone())));
            }
            m.message(5, array);
        }
    }
    m
}

/// `KeyValue { key = 1; value = 2 }`, one per attribute, into `field`.
fn attributes(m: &mut Message, field: u32, attrs: &[(String, AttrValue)]) {
    for (k, v) in attrs {
        let mut kv = Message::default();
        kv.string(1, k);
        kv.message(2, any_value(v));
        m.message(field, kv);
    }
}

/// `Span`: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7, end 8,
/// attributes 9, status 15 (`Status { message = 2; code = 3 }`).
fn span(s: &SpanData) -> Message {
    let mut m = Message::default();
    m.bytes(1, &s.trace_id);
    m.bytes(2, &s.span_id);
    if let Some(parent) = &s.parent_span_id {
        m.bytes(4, parent);
    }
    m.string(5, &s.name);
    m.uint(6, s.kind as u64);
    m.fixed64(7, nanos(s.start));
    m.fixed64(8, nanos(s.end));
    attributes(&mut m, 9, &s.attributes);
    let mut status = Message::default();
    match &s.error {
        Some(message) => {
            status.string(2, message);
            status.uint(3, 2);
        }
        None => status.uint(3, 1),
    }
    m.message(15, status);
    m
}

/// The request body for `POST /v1/traces` with `content-type: application/x-protobuf`.
pub fn encode_protobuf(service_name: &str, spans: &[SpanData]) -> Vec<u8> {
    // Resource { attributes = 1 }
    let mut resource = Message::default();
    attributes(
        &mut resource,
        1,
        &crate::otlp::resource_attributes(service_name),
    );
    // InstrumentationScope { name = 1; version = 2 }
    let mut scope = Message::default();
    scope.string(1, "safegate");
    scope.string(2, env!("CARGO_PKG_VERSION"));
    // ScopeSpans { scope = 1; spans = 2 }
    let mut scope_spans = Message::default();
    scope_spans.message(1, scope);
    for s in spans {
        scope_spans.message(2, span(s));
    }
    // ResourceSpans { resource = 1; scope_spans = 2 }
    let mut resource_spans = Message::default();
    resource_spans.message(1, resource);
    resource_spans.message(2, scope_spans);
    // ExportTraceServiceRequest { resource_spans = 1 }
    let mut request = Message::default();
    request.message(1, resource_spans);
    request.0
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;

    use super::*;
    use crate::SpanKind;

    #[test]
    fn the_generated_types_decode_every_field() {
        let first = crate::sample_server_span(vec![
            ("gen_ai.request.model".into(), "llama".into()),
            ("gen_ai.usage.input_tokens".into(), 12usize.into()),
            ("safegate.offset".into(), AttrValue::Int(-3)),
            ("safegate.score".into(), 0.25.into()),
            ("safegate.blocked".into(), true.into()),
            (
                "safegate.categories".into(),
                vec!["S1".to_string(), "S10".to_string()].into(),
            ),
        ]);
        let start = first.start;
        let spans = [
            first,
            SpanData {
                trace_id: [0xcd; 16],
                span_id: [7; 8],
                parent_span_id: None,
                name: "guard".into(),
                kind: SpanKind::Internal,
                start,
                end: start,
                attributes: Vec::new(),
                error: None,
            },
        ];
        let body = encode_protobuf("gw", &spans);
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let rs = &request.resource_spans[0];
        let resource = rs.resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        assert_eq!(
            resource.attributes[0].value.as_ref().unwrap().value,
            Some(Value::StringValue("gw".into()))
        );
        let scope = &rs.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "safegate");
        let s = &scope.spans[0];
        assert_eq!(s.trace_id, vec![0xab; 16]);
        assert_eq!(s.span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.name, "chat llama");
        assert_eq!(s.kind, 2);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(s.end_time_unix_nano, 1_700_000_000_128_456_789);
        let values: Vec<Option<Value>> = s
            .attributes
            .iter()
            .map(|kv| kv.value.as_ref().unwrap().value.clone())
            .collect();
        assert_eq!(values[0], Some(Value::StringValue("llama".into())));
        assert_eq!(values[1], Some(Value::IntValue(12)));
        assert_eq!(values[2], Some(Value::IntValue(-3)));
        assert_eq!(values[3], Some(Value::DoubleValue(0.25)));
        assert_eq!(values[4], Some(Value::BoolValue(true)));
        match &values[5] {
            Some(Value::ArrayValue(a)) => assert_eq!(
                a.values.iter().map(|v| v.value.clone()).collect::<Vec<_>>(),
                vec![
                    Some(Value::StringValue("S1".into())),
                    Some(Value::StringValue("S10".into()))
                ]
            ),
            other => panic!("{other:?}"),
        }
        let status = s.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "upstream_error")
        );
        let ok = &scope.spans[1];
        assert!(ok.parent_span_id.is_empty());
        assert_eq!((ok.kind, ok.status.as_ref().unwrap().code), (1, 1));
    }
}
