use super::*;
use serde_json::{json, Value};

/// Whether `text` is a whole value of the grammar.
fn whole(g: &Grammar, text: &str) -> bool {
    let mut c = Cursor::new(g);
    c.feed_all(g, text.as_bytes()) && c.can_end(g)
}

/// Whether `text` can still become a value of the grammar.
fn prefix(g: &Grammar, text: &str) -> bool {
    Cursor::new(g).accepts(g, text.as_bytes())
}

fn schema(v: Value) -> Grammar {
    Grammar::from_schema(&v).expect("schema compiles")
}

/// A small deterministic generator (no dependency for tests).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64 >> rng.below(60).max(5)),
        3 => json!((rng.next() % 100_000) as f64 / 7.0 - 5000.0),
        4 => {
            let pool = [
                "",
                "a",
                "é",
                "tab\there",
                "quote \" and \\",
                "日本",
                "😀",
                "\u{1}",
            ];
            json!(pool[rng.below(pool.len())])
        }
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|i| (format!("k{i}"), random_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

#[test]
fn any_object_accepts_objects_written_compactly_or_pretty() {
    let g = Grammar::any_object();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for _ in 0..500 {
        let v = Value::Object(
            (0..rng.below(4))
                .map(|i| (format!("key {i}"), random_value(&mut rng, 1)))
                .collect(),
        );
        let compact = serde_json::to_string(&v).unwrap();
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        assert!(whole(&g, &compact), "{compact}");
        assert!(whole(&g, &pretty), "{pretty}");
        // Every proper prefix can still become a value; none of them is one yet.
        for cut in 0..compact.len() {
            if compact.is_char_boundary(cut) {
                assert!(prefix(&g, &compact[..cut]), "{}", &compact[..cut]);
                assert!(!whole(&g, &compact[..cut]), "{}", &compact[..cut]);
            }
        }
    }
}

#[test]
fn any_object_refuses_what_is_not_a_json_object() {
    let g = Grammar::any_object();
    for bad in [
        "[1]",
        "\"s\"",
        "1",
        "null",
        "{a:1}",
        "{\"a\" 1}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":-}",
        "{\"a\":tru}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\u{1}\"}",
        "{\"a\":1}}",
        "{\"a\":1} ",
        "{\"a\":[1,]}",
        "{\"a\":\"\\u12g4\"}",
    ] {
        assert!(!whole(&g, bad), "{bad:?} accepted");
    }
    // Raw bytes that are not UTF-8 never get into a string.
    let mut c = Cursor::new(&g);
    assert!(c.feed_all(&g, b"{\"a\":\""));
    assert!(!c.accepts(&g, &[0xff]));
    assert!(!c.accepts(&g, &[0x80]));
    assert!(c.accepts(&g, &[0xc3, 0xa9]));
    assert!(!c.accepts(&g, &[0xc3, b'"']));
    assert!(!c.accepts(&g, &[0xe0, 0x80, 0x80]), "overlong");
    assert!(!c.accepts(&g, &[0xed, 0xa0, 0x80]), "a surrogate");
    assert!(!c.accepts(&g, &[0xf4, 0x90, 0x80, 0x80]), "past U+10FFFF");
    assert!(c.accepts(&g, "😀€".as_bytes()));
    assert!(!c.accepts(&g, b"\\ud800"));
    assert!(c.accepts(&g, b"\\u00e9\\uE000"));
}

#[test]
fn whitespace_nesting_and_digits_are_bounded() {
    let g = Grammar::any_object();
    let ws = " ".repeat(MAX_WHITESPACE as usize);
    assert!(whole(&g, &format!("{{{ws}\"a\":1}}")));
    assert!(!prefix(&g, &format!("{{{ws} \"a\":1}}")));
    // Whitespace inside strings is text, not counted.
    assert!(whole(&g, &format!("{{\"a\":\"{ws}{ws}\"}}")));
    let deep = format!(
        "{{\"a\":{}1{}}}",
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    assert!(whole(&g, &deep));
    assert!(!prefix(&g, &format!("{{\"a\":{}", "[".repeat(MAX_DEPTH))));
    let digits = "9".repeat(MAX_DIGITS as usize);
    assert!(whole(&g, &format!("{{\"a\":{digits}}}")));
    assert!(!prefix(&g, &format!("{{\"a\":{digits}9")));
    assert!(whole(&g, "{\"a\":1e-99}"));
    assert!(!prefix(&g, "{\"a\":1e999"));
}

#[test]
fn declared_properties_come_in_order_and_required_ones_are_not_skipped() {
    let g = schema(json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "nickname": {"type": "string"},
            "email": {"type": "string"}
        },
        "required": ["name", "email"],
        "additionalProperties": false
    }));
    assert!(whole(
        &g,
        r#"{"name":"Ada","age":36,"nickname":"A","email":"a@b"}"#
    ));
    assert!(whole(&g, r#"{"name": "Ada", "email": "a@b"}"#));
    assert!(whole(&g, r#"{"name":"Ada","nickname":"A","email":"a@b"}"#));
    assert!(!whole(&g, r#"{"name":"Ada"}"#), "a required key left out");
    assert!(!prefix(&g, r#"{"age""#), "a required key skipped");
    assert!(!prefix(&g, r#"{"email":"a","name""#), "out of order");
    assert!(!prefix(&g, r#"{"name":"Ada","other""#), "an undeclared key");
    assert!(
        !prefix(&g, r#"{"name":"Ada","age":1.5"#),
        "an integer with a fraction"
    );
    assert!(
        !prefix(&g, r#"{"name":"Ada","email":"x","age""#),
        "a key twice"
    );
}

#[test]
fn enums_consts_and_nullable_types() {
    let g = schema(json!({
        "type": "object",
        "properties": {
            "answer": {"enum": ["yes", "no", 1, 10, null]},
            "sure": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
            "kind": {"const": "final"},
            "next": {"anyOf": [{"type": "object", "properties": {"a": {"type": "number"}}}, {"type": "null"}]}
        },
        "required": ["answer", "sure", "note", "kind", "next"]
    }));
    for ok in [
        r#"{"answer":"yes","sure":true,"note":null,"kind":"final","next":null}"#,
        r#"{"answer":1,"sure":false,"note":"n","kind":"final","next":{"a":2.5e3}}"#,
        r#"{"answer":10,"sure":false,"note":"","kind":"final","next":{}}"#,
        r#"{"answer":null,"sure":false,"note":"","kind":"final","next":{"a":-0}}"#,
    ] {
        assert!(whole(&g, ok), "{ok}");
    }
    for bad in [
        r#"{"answer":"maybe""#,
        r#"{"answer":100"#,
        r#"{"answer":"yes","sure":1"#,
        r#"{"answer":"yes","sure":true,"note":3"#,
        r#"{"answer":"yes","sure":true,"note":null,"kind":"draft""#,
        r#"{"answer":"yes","sure":true,"note":null,"kind":"final","next":[]"#,
    ] {
        assert!(!prefix(&g, bad), "{bad}");
    }
}

#[test]
fn arrays_hold_their_bounds_and_item_schema() {
    let g = schema(json!({
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 1,
        "maxItems": 3
    }));
    assert!(whole(&g, "[1]"));
    assert!(whole(&g, "[1, 2, 3]"));
    assert!(!whole(&g, "[]"));
    assert!(!prefix(&g, "[1,2,3,"));
    assert!(!prefix(&g, "[\"a\""));
    // A top-level number may end output where it stands.
    let n = schema(json!({"type": "number"}));
    assert!(whole(&n, "12.5"));
    assert!(!whole(&n, "12."));
}

#[test]
fn references_resolve_including_recursive_ones() {
    let g = schema(json!({
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                },
                "required": ["value", "children"]
            }
        },
        "$ref": "#/$defs/node"
    }));
    assert!(whole(
        &g,
        r#"{"value":1,"children":[{"value":2,"children":[]},{"value":3,"children":[{"value":4,"children":[]}]}]}"#
    ));
    assert!(!prefix(&g, r#"{"value":1,"children":[{"value":"x""#));
}

#[test]
fn what_cannot_be_held_to_is_refused_with_where() {
    for (s, path, word) in [
        (json!({"type": "string", "pattern": "^a"}), "#", "pattern"),
        (
            json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}),
            "#/properties/n",
            "minimum",
        ),
        (
            json!({"anyOf": [{"type": "object"}, {"type": "object", "properties": {"a": true}}]}),
            "#",
            "start alike",
        ),
        (
            json!({"anyOf": [{"type": "string"}, {"enum": ["a"]}]}),
            "#",
            "start alike",
        ),
        (json!({"$ref": "#/$defs/missing"}), "#", "does not point"),
        (
            json!({"type": "object", "required": ["a"]}),
            "#",
            "not among",
        ),
        (json!({"type": "wat"}), "#", "unknown type"),
        (json!(false), "#", "allows no value"),
        (
            json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
            "#",
            "itself",
        ),
        (json!({"enum": []}), "#", "non-empty"),
    ] {
        let e = Grammar::from_schema(&s).expect_err(&s.to_string());
        assert_eq!(e.path, path, "{s}: {e}");
        assert!(e.message.contains(word), "{s}: {e}");
    }
    // Annotations are no obstacle.
    schema(json!({"type": "string", "format": "date-time", "description": "when", "title": "t"}));
}

/// A tiny validator for the keywords the compiler takes, to check what the cursor lets
/// through against the schema itself.
fn conforms(v: &Value, s: &Value, root: &Value) -> bool {
    let s = match s.get("$ref").and_then(Value::as_str) {
        Some(r) => root.pointer(&r[1..]).unwrap(),
        None => s,
    };
    if let Some(branches) = s.get("anyOf").and_then(Value::as_array) {
        return branches.iter().any(|b| conforms(v, b, root));
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        return values.contains(v);
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return true,
    };
    types.iter().any(|t| match *t {
        "object" => v.as_object().is_some_and(|o| {
            let props = s.get("properties").and_then(Value::as_object);
            let required = s.get("required").and_then(Value::as_array);
            required.is_none_or(|r| r.iter().all(|k| o.contains_key(k.as_str().unwrap())))
                && o.iter().all(|(k, x)| match props {
                    Some(p) => p.get(k).is_some_and(|ps| conforms(x, ps, root)),
                    None => true,
                })
        }),
        "array" => v.as_array().is_some_and(|a| {
            let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
            let max = s
                .get("maxItems")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX) as usize;
            a.len() >= min
                && a.len() <= max
                && a.iter()
                    .all(|x| s.get("items").is_none_or(|i| conforms(x, i, root)))
        }),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    })
}

/// One walk of the cursor by random allowed bytes (those in `favoured` three times in four,
/// so that walks end): the output, once it may end (None if it ran 4000 bytes without).
fn random_walk(g: &Grammar, rng: &mut Rng, favoured: &[u8]) -> Option<Vec<u8>> {
    let mut c = Cursor::new(g);
    let mut out = Vec::new();
    for _ in 0..4000 {
        if c.can_end(g) {
            return Some(out);
        }
        let allowed: Vec<u8> = (0..=255u8).filter(|&b| c.accepts(g, &[b])).collect();
        assert!(
            !allowed.is_empty(),
            "stuck after {:?}",
            String::from_utf8_lossy(&out)
        );
        let pool: Vec<u8> = allowed
            .iter()
            .copied()
            .filter(|b| favoured.contains(b))
            .collect();
        let pick = if !pool.is_empty() && rng.below(4) != 0 {
            pool[rng.below(pool.len())]
        } else {
            allowed[rng.below(allowed.len())]
        };
        assert!(c.feed(g, pick));
        out.push(pick);
    }
    c.can_end(g).then_some(out)
}

/// Walks the cursor by random allowed bytes (structure favoured so that walks end) and
/// checks that every finished walk is JSON that conforms to the schema.
#[test]
fn random_walks_through_a_schema_end_in_conforming_json() {
    let s = json!({
        "$defs": {"tag": {"type": "string"}},
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 3},
            "score": {"type": ["number", "null"]},
            "status": {"enum": ["open", "closed", 0]},
            "meta": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "any": true
        },
        "required": ["id", "status", "meta"]
    });
    let g = schema(s.clone());
    let favoured = b"\"}],:0123456789tfn-{[ae.";
    let mut rng = Rng(42);
    let mut finished = 0;
    for _ in 0..400 {
        if let Some(out) = random_walk(&g, &mut rng, favoured) {
            finished += 1;
            let v: Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
            assert!(conforms(&v, &s, &s), "{v}");
        }
    }
    assert!(finished > 300, "only {finished} walks ended");
}

#[test]
fn a_constraint_masks_tokens_and_allows_the_end_only_when_done() {
    let vocab = Arc::new(Vocabulary::new(vec![
        b"{\"".to_vec(),
        b"answer".to_vec(),
        b"\":".to_vec(),
        b" \"yes".to_vec(),
        b"\"}".to_vec(),
        b"hello".to_vec(),
        Vec::new(), // a special token
        Vec::new(), // end of sequence
    ]));
    let g = Arc::new(schema(json!({
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"]
    })));
    let mut c = Constraint::new(g, vocab, vec![7]);
    let allowed = |c: &Constraint| (0..8).filter(|&i| c.allows(i)).collect::<Vec<_>>();
    assert_eq!(allowed(&c), [0]);
    for id in [0, 1, 2, 3] {
        assert!(c.allows(id));
        c.advance(id);
    }
    assert_eq!(allowed(&c), [4]);
    c.advance(4);
    assert!(c.is_done());
    assert_eq!(allowed(&c), [7]);
    let mut logits = vec![1.0; 8];
    assert_eq!(c.mask(&mut logits), 1);
    assert_eq!(logits[7], 1.0);
    assert!(logits[..7].iter().all(|v| *v == f32::NEG_INFINITY));
}

fn call_cases() -> (Vec<(Vec<u8>, Value)>, Grammar) {
    let tools = vec![
        (
            "get_weather",
            json!({"type": "object", "properties": {"city": {"type": "string"},
                "unit": {"enum": ["c", "f"]}}, "required": ["city"]}),
        ),
        (
            "get_time",
            json!({"$defs": {"zone": {"type": "string"}}, "type": "object",
                "properties": {"zone": {"$ref": "#/$defs/zone"}}, "required": ["zone"]}),
        ),
        (
            "get",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
    ];
    let cases: Vec<(Vec<u8>, Value)> = tools
        .into_iter()
        .map(|(name, s)| {
            let head = format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": ");
            (head.into_bytes(), s)
        })
        .collect();
    let refs: Vec<(&[u8], &Value, &[u8])> = cases
        .iter()
        .map(|(h, s)| (h.as_slice(), s, b"}\n</tool_call>".as_slice()))
        .collect();
    let g = Grammar::tagged(&refs).expect("cases compile");
    (cases, g)
}

#[test]
fn tagged_cases_hold_each_body_to_its_own_schema() {
    let (_, g) = call_cases();
    let call = |name: &str, args: &str| {
        format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {args}}}\n</tool_call>")
    };
    assert!(whole(
        &g,
        &call("get_weather", r#"{"city": "Paris", "unit": "c"}"#)
    ));
    assert!(whole(&g, &call("get_time", r#"{"zone":"UTC"}"#)));
    assert!(whole(&g, &call("get", "{}")));
    // Leading whitespace, as before any value; none inside the fixed head and tail.
    assert!(whole(&g, &format!("\n{}", call("get", "{}"))));
    assert!(!whole(
        &g,
        &call("get", "{}").replace("\"name\": ", "\"name\":")
    ));
    // Another case's arguments, a missing required one, a name no case has.
    assert!(!prefix(&g, &call("get_weather", r#"{"zone":"UTC"}"#)));
    assert!(!prefix(&g, &call("get_time", "{}")));
    assert!(!prefix(&g, &call("get_date", "{}")));
    // The tail must be written whole before output may end.
    let cut = call("get", "{}");
    assert!(prefix(&g, &cut[..cut.len() - 3]) && !whole(&g, &cut[..cut.len() - 3]));
    assert!(!prefix(&g, &format!("{cut} ")));
}

#[test]
fn tagged_cases_refuse_heads_that_begin_alike_and_name_the_case() {
    let s = json!({"type": "object"});
    let e = Grammar::tagged(&[(b"ab", &s, b""), (b"a", &s, b"")]).unwrap_err();
    assert_eq!(e.0, 1);
    assert!(e.1.message.contains("case 0"), "{}", e.1);
    assert!(Grammar::tagged(&[(b"", &s, b"")]).is_err());
    assert!(Grammar::tagged(&[]).is_err());
    let bad = json!({"type": "string", "pattern": "x"});
    let e = Grammar::tagged(&[(b"a", &s, b""), (b"b", &bad, b"")]).unwrap_err();
    assert_eq!(e.0, 1);
    assert!(e.1.message.contains("pattern"), "{}", e.1);
}

/// Random walks through a set of function calls end in a call whose name is one of the
/// cases and whose arguments conform to that case's schema.
#[test]
fn random_walks_through_tagged_cases_end_in_conforming_calls() {
    let (cases, g) = call_cases();
    let favoured = b"\"}],:0123456789{[cf";
    let mut rng = Rng(7);
    let mut finished = 0;
    for _ in 0..300 {
        let Some(out) = random_walk(&g, &mut rng, favoured) else {
            continue;
        };
        finished += 1;
        let text = String::from_utf8(out).unwrap();
        let inner = text
            .trim_start()
            .strip_prefix("<tool_call>\n")
            .and_then(|t| t.strip_suffix("\n</tool_call>"))
            .unwrap_or_else(|| panic!("{text}"));
        let v: Value = serde_json::from_str(inner).unwrap_or_else(|e| panic!("{e}: {inner}"));
        let name = v["name"].as_str().unwrap();
        let (_, s) = cases
            .iter()
            .find(|(h, _)| String::from_utf8_lossy(h).contains(&format!("\"{name}\"")))
            .unwrap();
        assert!(conforms(&v["arguments"], s, s), "{v}");
    }
    assert!(finished > 200, "only {finished} walks ended");
}
