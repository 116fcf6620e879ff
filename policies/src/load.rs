//! Reading policy files: YAML in, a validated [`Policy`] or errors that each name the file,
//! line and column and say what was expected. Text in, values out: reading the files is
//! the caller's job.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use safegate_shield::Shield;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::schema::{Bindings, Policy};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for PolicyError {}

/// Errors of a whole set, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Where each key of a YAML document is: dotted path (`input.category_thresholds.S3`,
/// `shield.disabled_rules.2`) -> 1-based (line, column).
#[derive(Default)]
struct Positions {
    map: HashMap<String, (usize, usize)>,
    stack: Vec<Frame>,
    /// Keys given twice in one mapping: (dotted path, position of the repeat). YAML's data
    /// model forbids them, and the typed parse would silently keep the last one.
    duplicates: Vec<(String, (usize, usize))>,
}

enum Frame {
    Mapping {
        path: String,
        key: Option<String>,
        seen: std::collections::HashSet<String>,
    },
    Sequence {
        path: String,
        index: usize,
    },
}

impl Positions {
    fn child_path(&mut self) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Mapping { path, key, .. } => key.take().map(|k| join(path, &k)),
            Frame::Sequence { path, index } => {
                let p = join(path, &index.to_string());
                *index += 1;
                Some(p)
            }
        }
    }

    fn lookup(&self, path: &str) -> (usize, usize) {
        let mut p = path.to_string();
        loop {
            if let Some(&pos) = self.map.get(&p) {
                return pos;
            }
            match p.rfind('.') {
                Some(i) => p.truncate(i),
                None => return self.map.get("").copied().unwrap_or((1, 1)),
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Positions {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = if self.stack.is_empty() {
                    Some(String::new())
                } else {
                    self.child_path()
                };
                let path = path.unwrap_or_default();
                self.map.entry(path.clone()).or_insert(pos);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Mapping {
                        path,
                        key: None,
                        seen: Default::default(),
                    }
                } else {
                    Frame::Sequence { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(value, ..) => match self.stack.last_mut() {
                Some(Frame::Mapping { path, key, seen }) if key.is_none() => {
                    // A key: remember where it is; the next node is its value.
                    let p = join(path, &value);
                    if !seen.insert(value.clone()) {
                        self.duplicates.push((p.clone(), pos));
                    }
                    self.map.entry(p).or_insert(pos);
                    *key = Some(value);
                }
                Some(_) => {
                    if let Some(p) = self.child_path() {
                        self.map.entry(p).or_insert(pos);
                    }
                }
                None => {}
            },
            _ => {}
        }
    }
}

fn positions(text: &str) -> Positions {
    let mut p = Positions::default();
    // Syntax errors are reported by the typed parse below, with their own location.
    let _ = Parser::new_from_str(text).load(&mut p, false);
    p
}

struct Checker<'a> {
    file: &'a str,
    pos: Positions,
    errors: Vec<PolicyError>,
}

impl Checker<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let (line, column) = self.pos.lookup(path);
        self.errors.push(PolicyError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }
}

fn duplicate_errors(file: &str, pos: &Positions, what: &str, out: &mut Vec<PolicyError>) {
    for (path, (line, column)) in &pos.duplicates {
        out.push(PolicyError {
            file: file.to_string(),
            line: *line,
            column: *column,
            message: format!("duplicate {what} `{path}`"),
        });
    }
}

fn serde_error(file: &str, e: &serde_norway::Error) -> PolicyError {
    let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
    // serde's message repeats the position ("at line 3 column 5"); keep ours only.
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    PolicyError {
        file: file.to_string(),
        line,
        column,
        message,
    }
}

/// Parses and validates one policy file. `shield` provides the rule ids that
/// `shield.disabled_rules` may name.
pub fn parse_policy(file: &str, text: &str, shield: &Shield) -> Result<Policy, PolicyErrors> {
    let policy: Policy =
        serde_norway::from_str(text).map_err(|e| PolicyErrors(vec![serde_error(file, &e)]))?;
    let mut c = Checker {
        file,
        pos: positions(text),
        errors: Vec::new(),
    };
    duplicate_errors(file, &c.pos, "key", &mut c.errors);
    validate(&policy, shield, &mut c);
    if c.errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyErrors(c.errors))
    }
}

fn validate(p: &Policy, shield: &Shield, c: &mut Checker) {
    if p.name.trim().is_empty() {
        c.error("name", "`name` must not be empty");
    }
    let known = |code: &str| p.knows_code(code);
    let codes_hint = {
        let all: Vec<String> = p
            .taxonomy
            .codes()
            .map(str::to_string)
            .chain(p.custom_codes())
            .collect();
        format!("{} for {}", all.join(", "), p.taxonomy)
    };
    for code in p.categories.keys() {
        if !known(code) {
            c.error(
                &format!("categories.{code}"),
                format!("unknown category code `{code}`: expected one of {codes_hint}"),
            );
        }
    }
    for (i, cat) in p.custom_categories.iter().enumerate() {
        if cat.name.trim().is_empty() {
            c.error(
                &format!("custom_categories.{i}"),
                "a custom category needs a `name`",
            );
        }
    }
    for (stage, sp) in [("input", &p.input), ("output", &p.output)] {
        if !(0.0..=1.0).contains(&sp.threshold) {
            c.error(
                &format!("{stage}.threshold"),
                format!("threshold {} is outside 0..1", sp.threshold),
            );
        }
        for (code, t) in &sp.category_thresholds {
            let path = format!("{stage}.category_thresholds.{code}");
            if !known(code) {
                c.error(
                    &path,
                    format!("unknown category code `{code}`: expected one of {codes_hint}"),
                );
            } else if !(0.0..=1.0).contains(t) {
                c.error(&path, format!("threshold {t} is outside 0..1"));
            }
        }
        for code in sp.category_actions.keys() {
            if !known(code) {
                c.error(
                    &format!("{stage}.category_actions.{code}"),
                    format!("unknown category code `{code}`: expected one of {codes_hint}"),
                );
            }
        }
        if sp.timeout_ms == 0 {
            c.error(
                &format!("{stage}.timeout_ms"),
                "timeout_ms must be at least 1",
            );
        }
    }
    if p.output.overlap_generation {
        c.error(
            "output.overlap_generation",
            "overlap_generation applies to the input stage only",
        );
    }
    if let Some(t) = p.streaming.release_threshold {
        if !(0.0..=1.0).contains(&t) {
            c.error(
                "streaming.release_threshold",
                format!("release_threshold {t} is outside 0..1"),
            );
        } else if t > p.output.threshold {
            c.error(
                "streaming.release_threshold",
                format!(
                    "release_threshold {t} is above output.threshold {}: text scored unsafe enough to block would be released",
                    p.output.threshold
                ),
            );
        }
    }
    if p.streaming.rescore_every_tokens == 0 {
        c.error(
            "streaming.rescore_every_tokens",
            "rescore_every_tokens must be at least 1",
        );
    }
    for (i, rule) in p.shield.disabled_rules.iter().enumerate() {
        if !shield.has_rule(rule) {
            c.error(
                &format!("shield.disabled_rules.{i}"),
                format!("unknown shield rule id `{rule}`"),
            );
        }
    }
    if p.shield.timeout_ms == 0 {
        c.error("shield.timeout_ms", "timeout_ms must be at least 1");
    }
}

/// Where each binding is written: group name (or `default`) -> (line, column).
pub type KeyPositions = BTreeMap<String, (usize, usize)>;

/// Parses a bindings file (which policy applies to which key group).
pub fn parse_bindings(file: &str, text: &str) -> Result<(Bindings, KeyPositions), PolicyErrors> {
    let b: Bindings =
        serde_norway::from_str(text).map_err(|e| PolicyErrors(vec![serde_error(file, &e)]))?;
    let pos = positions(text);
    let mut dups = Vec::new();
    duplicate_errors(file, &pos, "binding", &mut dups);
    if !dups.is_empty() {
        return Err(PolicyErrors(dups));
    }
    let mut at = BTreeMap::new();
    at.insert("default".to_string(), pos.lookup("default"));
    for g in b.groups.keys() {
        at.insert(g.clone(), pos.lookup(&format!("groups.{g}")));
    }
    Ok((b, at))
}
