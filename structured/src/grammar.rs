//! A JSON Schema compiled to the grammar the cursor walks: a small graph of nodes (objects
//! with their properties in declared order, arrays, strings, numbers, literal sets, and
//! unions whose branches start with different bytes).

use std::collections::HashMap;

use serde_json::Value;

/// Index of a node in [`Grammar::nodes`].
pub(crate) type NodeId = u16;

/// The most properties of one object, values of one `enum` and branches of one union (a
/// candidate set is a 64-bit mask).
pub const MAX_CHOICES: usize = 64;
/// The most nodes one grammar may have (a schema is part of a request: bounded).
pub const MAX_NODES: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prop {
    /// The key as written in the output: a JSON string, quotes included.
    pub key: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Case {
    pub head: Vec<u8>,
    pub body: NodeId,
    pub tail: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// With `props`, only those keys, in that order (optional ones may be left out); without,
    /// any keys, each value a `extra` (None: no keys at all, `{}`).
    Object {
        props: Vec<Prop>,
        extra: Option<NodeId>,
    },
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    String,
    Number {
        integer: bool,
    },
    /// One of these values, each written compactly (`enum`, `const`, booleans, null).
    Literals(Vec<Vec<u8>>),
    /// One of these nodes; no two can start with the same byte.
    Union(Vec<NodeId>),
    /// One of these cases: its fixed head (which says which case it is: no head is a prefix
    /// of another), a value of its body, its fixed tail.
    Switch(Vec<Case>),
    /// Being compiled (a `$ref` cycle points here until it is filled in).
    Pending,
}

/// A schema this compiler cannot hold output to: where (a JSON pointer into the schema) and
/// why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

/// What output must look like.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar {
    pub(crate) nodes: Vec<Node>,
    pub(crate) root: NodeId,
    /// For each node, the bytes a value of it may start with.
    pub(crate) first: Vec<ByteSet>,
}

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ByteSet([u64; 4]);

impl ByteSet {
    pub fn insert(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
    }
    pub fn contains(&self, b: u8) -> bool {
        self.0[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
    fn union(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }
    fn intersects(&self, other: &ByteSet) -> bool {
        self.0.iter().zip(other.0).any(|(a, b)| a & b != 0)
    }
}

/// Keywords that describe and do not constrain (`format` is an annotation in JSON Schema
/// 2020-12 unless a validator opts in): accepted and left alone.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "format",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
];

const SUPPORTED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
];

impl Grammar {
    /// Any JSON object (OpenAI's `json_object` mode).
    pub fn any_object() -> Grammar {
        let mut c = Compiler::new(&Value::Null);
        let any = c.any();
        let root = c.push(Node::Object {
            props: Vec::new(),
            extra: Some(any),
        });
        c.finish(root)
    }

    /// A JSON Schema (draft 2020-12 keywords; the subset structured outputs use): `type`
    /// (one or a list), `properties`, `required`, `additionalProperties`, `items`,
    /// `minItems`, `maxItems`, `enum`, `const`, `anyOf`/`oneOf` whose branches start
    /// differently (an object or null, a string or a number), `$ref` into `$defs` or
    /// `definitions`. Anything that constrains in another way (`pattern`, `minimum`,
    /// `minLength`, ...) is an error rather than a promise not kept.
    pub fn from_schema(schema: &Value) -> Result<Grammar, SchemaError> {
        let mut c = Compiler::new(schema);
        let root = c.compile(schema, "#")?;
        if c.nodes.iter().any(|n| matches!(n, Node::Pending)) {
            return Err(err(
                "#",
                "a `$ref` that resolves only to itself allows no value",
            ));
        }
        Ok(c.finish(root))
    }

    /// One of several values, each written as a fixed head, a value of its own schema, and
    /// a fixed tail: a function call held to the function's parameters (`{"name": "f",
    /// "arguments": ` + arguments + `}`). The head written says which schema follows, so no
    /// head may be a prefix of another. An error names the case (its index) and the place
    /// in that case's schema, whose `$ref`s point into itself.
    pub fn tagged(cases: &[(&[u8], &Value, &[u8])]) -> Result<Grammar, (usize, SchemaError)> {
        if cases.is_empty() || cases.len() > MAX_CHOICES {
            let message = format!("from 1 to {MAX_CHOICES} cases");
            return Err((0, err("#", message)));
        }
        let mut c = Compiler::new(&Value::Null);
        let mut compiled = Vec::new();
        for (i, (head, schema, tail)) in cases.iter().enumerate() {
            if head.is_empty() {
                return Err((i, err("#", "a case's head must not be empty")));
            }
            if let Some(j) = cases[..i]
                .iter()
                .position(|(other, _, _)| other.starts_with(head) || head.starts_with(other))
            {
                return Err((i, err("#", format!("its head and case {j}'s begin alike"))));
            }
            // Each case's `$ref`s resolve in its own schema.
            c.root_schema = schema;
            c.refs.clear();
            let body = c.compile(schema, "#").map_err(|e| (i, e))?;
            compiled.push(Case {
                head: head.to_vec(),
                body,
                tail: tail.to_vec(),
            });
        }
        if c.nodes.iter().any(|n| matches!(n, Node::Pending)) {
            let message = "a `$ref` that resolves only to itself allows no value";
            return Err((0, err("#", message)));
        }
        let root = c.push(Node::Switch(compiled));
        Ok(c.finish(root))
    }
}

struct Compiler<'a> {
    root_schema: &'a Value,
    nodes: Vec<Node>,
    any: Option<NodeId>,
    refs: HashMap<String, NodeId>,
}

fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.to_string(),
        message: message.into(),
    }
}

impl<'a> Compiler<'a> {
    fn new(root_schema: &'a Value) -> Self {
        Self {
            root_schema,
            nodes: Vec::new(),
            any: None,
            refs: HashMap::new(),
        }
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    fn check_size(&self, path: &str) -> Result<(), SchemaError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(err(
                path,
                format!("the schema is too large (over {MAX_NODES} nodes)"),
            ));
        }
        Ok(())
    }

    /// Any JSON value.
    fn any(&mut self) -> NodeId {
        if let Some(id) = self.any {
            return id;
        }
        let any = self.push(Node::Pending);
        self.any = Some(any);
        let object = self.push(Node::Object {
            props: Vec::new(),
            extra: Some(any),
        });
        let array = self.push(Node::Array {
            items: any,
            min: 0,
            max: u32::MAX,
        });
        let string = self.push(Node::String);
        let number = self.push(Node::Number { integer: false });
        let literals = self.push(literals(&["true", "false", "null"]));
        self.nodes[any as usize] = Node::Union(vec![object, array, string, number, literals]);
        any
    }

    fn finish(self, root: NodeId) -> Grammar {
        let mut first = vec![None; self.nodes.len()];
        for id in 0..self.nodes.len() {
            first_bytes(&self.nodes, id as NodeId, &mut first, 0);
        }
        Grammar {
            first: first.into_iter().map(Option::unwrap_or_default).collect(),
            nodes: self.nodes,
            root,
        }
    }

    fn compile(&mut self, schema: &Value, path: &str) -> Result<NodeId, SchemaError> {
        self.check_size(path)?;
        let obj = match schema {
            Value::Bool(true) => return Ok(self.any()),
            Value::Bool(false) => return Err(err(path, "the schema `false` allows no value")),
            Value::Object(o) => o,
            _ => return Err(err(path, "a schema must be an object or a boolean")),
        };
        for key in obj.keys() {
            if !SUPPORTED.contains(&key.as_str()) && !ANNOTATIONS.contains(&key.as_str()) {
                return Err(err(
                    path,
                    format!("`{key}` is not supported for local structured output (supported: {}; an upstream model may take it)", SUPPORTED.join(", ")),
                ));
            }
        }
        let constraining = |except: &[&str]| {
            obj.keys()
                .find(|k| SUPPORTED.contains(&k.as_str()) && !except.contains(&k.as_str()))
                .cloned()
        };
        if let Some(reference) = obj.get("$ref") {
            if let Some(other) = constraining(&["$ref"]) {
                return Err(err(
                    path,
                    format!("`{other}` beside `$ref` is not supported"),
                ));
            }
            let reference = reference
                .as_str()
                .ok_or_else(|| err(path, "`$ref` must be a string"))?;
            return self.reference(reference, path);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = obj.get(key) {
                if let Some(other) = constraining(&[key]) {
                    return Err(err(
                        path,
                        format!("`{other}` beside `{key}` is not supported"),
                    ));
                }
                let branches = branches
                    .as_array()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| err(path, format!("`{key}` must be a non-empty array")))?;
                let mut ids = Vec::new();
                for (i, b) in branches.iter().enumerate() {
                    ids.push(self.compile(b, &format!("{path}/{key}/{i}"))?);
                }
                return self.union(ids, path);
            }
        }
        let types: Vec<&str> = match obj.get("type") {
            None => Vec::new(),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .ok_or_else(|| err(path, "`type` must be a string or an array of strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(err(
                    path,
                    "`type` must be a string or a non-empty array of strings",
                ))
            }
        };
        let values = match (obj.get("enum"), obj.get("const")) {
            (Some(_), Some(_)) => {
                return Err(err(path, "`enum` beside `const` is not supported"));
            }
            (Some(Value::Array(v)), None) if !v.is_empty() => Some(v.clone()),
            (Some(_), None) => return Err(err(path, "`enum` must be a non-empty array")),
            (None, Some(c)) => Some(vec![c.clone()]),
            (None, None) => None,
        };
        if let Some(values) = values {
            let kept: Vec<Vec<u8>> = values
                .iter()
                .filter(|v| types.is_empty() || types.iter().any(|t| has_type(v, t)))
                .map(|v| serde_json::to_vec(v).expect("a JSON value serializes"))
                .collect();
            if kept.is_empty() {
                return Err(err(
                    path,
                    "no value of `enum`/`const` has the schema's `type`",
                ));
            }
            if kept.len() > MAX_CHOICES {
                return Err(err(path, format!("at most {MAX_CHOICES} values in `enum`")));
            }
            return Ok(self.push(Node::Literals(dedup(kept))));
        }
        let types = if types.is_empty() {
            if obj.contains_key("properties") || obj.contains_key("additionalProperties") {
                vec!["object"]
            } else if obj.contains_key("items") {
                vec!["array"]
            } else {
                return Ok(self.any());
            }
        } else {
            types
        };
        let mut ids = Vec::new();
        for t in types {
            let id = match t {
                "object" => self.object(obj, path)?,
                "array" => self.array(obj, path)?,
                "string" => self.push(Node::String),
                "number" => self.push(Node::Number { integer: false }),
                "integer" => self.push(Node::Number { integer: true }),
                "boolean" => self.push(literals(&["true", "false"])),
                "null" => self.push(literals(&["null"])),
                other => return Err(err(path, format!("unknown type `{other}`"))),
            };
            ids.push(id);
        }
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        self.union(ids, path)
    }

    fn object(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|r| {
                    r.as_str()
                        .ok_or_else(|| err(path, "`required` must be an array of strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err(path, "`required` must be an array of strings")),
        };
        let properties = match obj.get("properties") {
            None => None,
            Some(Value::Object(p)) if p.is_empty() => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(err(path, "`properties` must be an object")),
        };
        let Some(properties) = properties else {
            if let Some(r) = required.first() {
                return Err(err(
                    path,
                    format!("`required` names `{r}`, which is not among `properties`"),
                ));
            }
            let extra = match obj.get("additionalProperties") {
                None | Some(Value::Bool(true)) => Some(self.any()),
                Some(Value::Bool(false)) => None,
                Some(s) => Some(self.compile(s, &format!("{path}/additionalProperties"))?),
            };
            return Ok(self.push(Node::Object {
                props: Vec::new(),
                extra,
            }));
        };
        if properties.len() > MAX_CHOICES {
            return Err(err(
                path,
                format!("at most {MAX_CHOICES} properties per object"),
            ));
        }
        for r in &required {
            if !properties.contains_key(*r) {
                return Err(err(
                    path,
                    format!("`required` names `{r}`, which is not among `properties`"),
                ));
            }
        }
        // Output carries the declared properties only (in their order), whatever
        // `additionalProperties` allows: a value without extra keys is valid either way.
        let id = self.push(Node::Pending);
        let mut props = Vec::new();
        for (name, schema) in properties {
            let node = self.compile(schema, &format!("{path}/properties/{}", escape(name)))?;
            props.push(Prop {
                key: serde_json::to_vec(name).expect("a string serializes"),
                node,
                required: required.contains(&name.as_str()),
            });
        }
        self.nodes[id as usize] = Node::Object { props, extra: None };
        Ok(id)
    }

    fn array(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        let bound = |key: &str, default: u32| match obj.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n.min(u32::MAX as u64) as u32)
                .ok_or_else(|| err(path, format!("`{key}` must be a non-negative integer"))),
        };
        let (min, max) = (bound("minItems", 0)?, bound("maxItems", u32::MAX)?);
        if min > max {
            return Err(err(path, "`minItems` is above `maxItems`"));
        }
        let items = match obj.get("items") {
            None => self.any(),
            Some(s) => self.compile(s, &format!("{path}/items"))?,
        };
        Ok(self.push(Node::Array { items, min, max }))
    }

    fn union(&mut self, ids: Vec<NodeId>, path: &str) -> Result<NodeId, SchemaError> {
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        if ids.len() > MAX_CHOICES {
            return Err(err(path, format!("at most {MAX_CHOICES} branches")));
        }
        // Branches are told apart by their first byte, so they must not share one. A branch
        // still being compiled (a `$ref` cycle) is not known yet: refused to be safe.
        let mut seen = ByteSet::default();
        let mut memo = vec![None; self.nodes.len()];
        for &id in &ids {
            if !is_complete(&self.nodes, id, 0) {
                return Err(err(
                    path,
                    "a recursive `$ref` inside `anyOf` is not supported",
                ));
            }
            let set = first_bytes(&self.nodes, id, &mut memo, 0);
            if seen.intersects(&set) {
                return Err(err(
                    path,
                    "branches that can start alike (two objects, two strings, a string and a string enum) are not supported: output is held to one branch from its first byte",
                ));
            }
            seen.union(&set);
        }
        Ok(self.push(Node::Union(ids)))
    }

    fn reference(&mut self, reference: &str, path: &str) -> Result<NodeId, SchemaError> {
        if let Some(&id) = self.refs.get(reference) {
            return Ok(id);
        }
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| {
                if pointer.is_empty() {
                    Some(self.root_schema)
                } else {
                    self.root_schema.pointer(pointer)
                }
            })
            .ok_or_else(|| {
                err(
                    path,
                    format!("`$ref` `{reference}` does not point into this schema"),
                )
            })?;
        // Reserved first, so that a cycle comes back to this node.
        let id = self.push(Node::Pending);
        self.refs.insert(reference.to_string(), id);
        let inner = self.compile(target, reference)?;
        self.nodes[id as usize] = self.nodes[inner as usize].clone();
        Ok(id)
    }
}

fn literals(values: &[&str]) -> Node {
    Node::Literals(values.iter().map(|v| v.as_bytes().to_vec()).collect())
}

fn dedup(mut values: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    values.retain(|v| seen.insert(v.clone()));
    values
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// A property name as a JSON-pointer segment.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Whether `id` no longer depends on a node being compiled.
fn is_complete(nodes: &[Node], id: NodeId, depth: usize) -> bool {
    match &nodes[id as usize] {
        Node::Pending => false,
        Node::Union(ids) if depth < 64 => ids.iter().all(|&i| is_complete(nodes, i, depth + 1)),
        _ => true,
    }
}

/// The bytes a value of `id` may start with (whitespace aside).
fn first_bytes(
    nodes: &[Node],
    id: NodeId,
    memo: &mut Vec<Option<ByteSet>>,
    depth: usize,
) -> ByteSet {
    if memo.len() < nodes.len() {
        memo.resize(nodes.len(), None);
    }
    if let Some(set) = memo[id as usize] {
        return set;
    }
    let mut set = ByteSet::default();
    match &nodes[id as usize] {
        Node::Object { .. } => set.insert(b'{'),
        Node::Array { .. } => set.insert(b'['),
        Node::String => set.insert(b'"'),
        Node::Number { .. } => {
            for b in b"-0123456789" {
                set.insert(*b);
            }
        }
        Node::Literals(values) => {
            for v in values {
                set.insert(v[0]);
            }
        }
        Node::Union(ids) if depth < 64 => {
            for &i in ids {
                set.union(&first_bytes(nodes, i, memo, depth + 1));
            }
        }
        Node::Switch(cases) => {
            for case in cases {
                set.insert(case.head[0]);
            }
        }
        Node::Union(_) | Node::Pending => {}
    }
    memo[id as usize] = Some(set);
    set
}
