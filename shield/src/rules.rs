//! Rule packs: data files (one per language, plus language-agnostic rules), each rule with id,
//! CWE, severity, message, a tree-sitter query or a regex, and its own positive and negative
//! examples.

use std::collections::HashSet;

use serde::Deserialize;

use crate::language::Language;
use crate::ShieldError;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Advice,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Advice => "advice",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

/// One rule as written in a pack file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    pub cwe: String,
    pub severity: Severity,
    pub message: String,
    /// A tree-sitter query; the capture `@match` marks the reported span (else the whole match).
    #[serde(default)]
    pub query: Option<String>,
    /// A regex over the code; matches that start inside a comment are dropped unless
    /// `in_comments` is true. A capture group named `m` marks the reported span.
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub in_comments: bool,
    /// A regex that must also match somewhere in the same code block. `{name}` stands for
    /// the text of the main match's `name` group (regex-escaped): a def-use link such as
    /// "this stack buffer is later the destination of strcpy".
    #[serde(default)]
    pub requires: Option<String>,
    /// A regex that must not match anywhere in the block (same `{name}` substitution),
    /// e.g. an anti-forgery attribute that makes a POST handler safe.
    #[serde(default)]
    pub unless: Option<String>,
    /// For language-agnostic packs: the languages a rule applies to (empty: all text).
    #[serde(default)]
    pub languages: Vec<Language>,
    #[serde(default)]
    pub positive: Vec<String>,
    #[serde(default)]
    pub negative: Vec<String>,
}

pub enum Matcher {
    Query(Box<tree_sitter::Query>),
    Regex(fancy_regex::Regex),
}

pub struct Rule {
    pub spec: RuleSpec,
    pub matcher: Matcher,
    /// Index of the `@match` capture for queries.
    pub match_capture: Option<u32>,
}

/// A rule pack compiled into the binary: file name, the languages it applies to (empty:
/// language-agnostic), and its text.
pub struct Pack {
    pub file: &'static str,
    pub languages: &'static [Language],
    pub text: &'static str,
}

macro_rules! pack {
    ($file:literal, [$($lang:ident),*]) => {
        Pack { file: $file, languages: &[$(Language::$lang),*], text: include_str!(concat!("../rules/", $file)) }
    };
}

pub const EMBEDDED: &[Pack] = &[
    pack!("generic.toml", []),
    pack!("c_family.toml", [C, Cpp]),
    pack!("cpp.toml", [Cpp]),
    pack!("csharp.toml", [Csharp]),
    pack!("java.toml", [Java]),
    pack!("jvm.toml", [Java, Kotlin]),
    pack!("javascript.toml", [Javascript, Typescript]),
    pack!("php.toml", [Php]),
    pack!("python.toml", [Python]),
    pack!("rust.toml", [Rust]),
    pack!("go.toml", [Go]),
    pack!("ruby.toml", [Ruby]),
    pack!("kotlin.toml", [Kotlin]),
    pack!("swift.toml", [Swift]),
    pack!("bash.toml", [Bash]),
];

/// Parses and compiles one pack. Errors name the file and rule.
pub fn compile_pack(
    file: &str,
    language: Option<Language>,
    text: &str,
) -> Result<Vec<Rule>, ShieldError> {
    let pack: PackFile =
        toml::from_str(text).map_err(|e| ShieldError::Rules(format!("{file}: {e}")))?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(pack.rule.len());
    for spec in pack.rule {
        let at = format!("{file}: rule `{}`", spec.id);
        if !seen.insert(spec.id.clone()) {
            return Err(ShieldError::Rules(format!("{at}: duplicate id")));
        }
        if !spec.cwe.starts_with("CWE-") {
            return Err(ShieldError::Rules(format!(
                "{at}: cwe must look like CWE-<n>"
            )));
        }
        let (matcher, match_capture) = match (&spec.query, &spec.regex, language) {
            (Some(q), None, Some(lang)) => {
                let query = tree_sitter::Query::new(&lang.grammar(), q)
                    .map_err(|e| ShieldError::Rules(format!("{at}: bad query: {e}")))?;
                let cap = query.capture_index_for_name("match");
                (Matcher::Query(Box::new(query)), cap)
            }
            (None, Some(r), _) => {
                let re = fancy_regex::Regex::new(r)
                    .map_err(|e| ShieldError::Rules(format!("{at}: bad regex: {e}")))?;
                (Matcher::Regex(re), None)
            }
            (Some(_), None, None) => {
                return Err(ShieldError::Rules(format!(
                    "{at}: language-agnostic rules must use a regex"
                )));
            }
            _ => {
                return Err(ShieldError::Rules(format!(
                    "{at}: give exactly one of `query` or `regex`"
                )))
            }
        };
        for (what, pattern) in [("requires", &spec.requires), ("unless", &spec.unless)] {
            if let Some(p) = pattern {
                fancy_regex::Regex::new(&p.replace("{name}", "x"))
                    .map_err(|e| ShieldError::Rules(format!("{at}: bad `{what}` regex: {e}")))?;
            }
        }
        if spec.positive.is_empty() {
            return Err(ShieldError::Rules(format!(
                "{at}: needs at least one positive example"
            )));
        }
        out.push(Rule {
            spec,
            matcher,
            match_capture,
        });
    }
    Ok(out)
}

/// Checks a rule's `requires` / `unless` conditions for one match in `code`.
pub fn conditions_hold(spec: &RuleSpec, code: &str, name: Option<&str>) -> bool {
    // A pattern that fails to run (backtracking limit) counts as not matching: `requires`
    // then drops the finding, `unless` keeps it (fail towards reporting).
    let matches = |p: &str| {
        let p = p.replace("{name}", &regex::escape(name.unwrap_or("")));
        fancy_regex::Regex::new(&p)
            .ok()
            .and_then(|re| re.is_match(code).ok())
            .unwrap_or(false)
    };
    if spec.requires.as_deref().is_some_and(|r| !matches(r)) {
        return false;
    }
    !spec.unless.as_deref().is_some_and(matches)
}
