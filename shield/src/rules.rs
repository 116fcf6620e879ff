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
    /// Matches that start inside a string literal are dropped unless this is true.
    #[serde(default)]
    pub in_strings: bool,
    /// A regex that must also match somewhere in the same code block. `{name}` stands for
    /// the text of the main match's `name` group (regex-escaped): a def-use link such as
    /// "this stack buffer is later the destination of strcpy".
    #[serde(default)]
    pub requires: Option<String>,
    /// A regex that must not match anywhere in the block (same `{name}` substitution),
    /// e.g. an anti-forgery attribute that makes a POST handler safe.
    #[serde(default)]
    pub unless: Option<String>,
    /// A regex that must not match just above the match: on its own line before it or on
    /// the three lines above (a justification comment such as Rust's `// SAFETY:`).
    #[serde(default)]
    pub unless_above: Option<String>,
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
    /// For regex rules: the pattern with its lookarounds removed, which the fast regex
    /// engine can run. It matches wherever the rule could, so code it does not match is
    /// skipped without running the backtracking engine (see [`prefilter_pattern`]).
    pub prefilter: Option<String>,
    /// `prefilter`, compiled.
    pub prefilter_re: Option<regex::Regex>,
}

/// Removes lookaround groups (`(?=`, `(?!`, `(?<=`, `(?<!`) from a regex, leaving a pattern
/// that matches a superset of what the original matches; None if the result still needs
/// the backtracking engine (backreferences) or does not compile.
pub fn prefilter_pattern(pattern: &str) -> Option<String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len());
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            if chars.get(i + 1) == Some(&'k') {
                return None; // named backreference
            }
            if let Some(&n) = chars.get(i + 1) {
                if n.is_ascii_digit() && !in_class {
                    return None; // numbered backreference
                }
                if (n == 'b' || n == 'B') && !in_class {
                    // ASCII word boundaries keep the set on the fast DFA path (a Unicode
                    // `\b` sends non-ASCII haystacks to the slow PikeVM); next to the ASCII
                    // words these patterns put them, they accept at least as much.
                    out.push_str(if n == 'b' { "(?-u:\\b)" } else { "(?-u:\\B)" });
                    i += 2;
                    continue;
                }
                out.push(c);
                out.push(n);
            } else {
                out.push(c);
            }
            i += 2;
            continue;
        }
        if in_class {
            if c == ']' {
                in_class = false;
            }
            out.push(c);
            i += 1;
            continue;
        }
        if c == '[' {
            in_class = true;
            out.push(c);
            // A `]` right after `[` or `[^` is a literal.
            if chars.get(i + 1) == Some(&'^') {
                out.push('^');
                i += 1;
            }
            if chars.get(i + 1) == Some(&']') {
                out.push(']');
                i += 1;
            }
            i += 1;
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 4)].iter().collect();
        if rest.starts_with("(?=")
            || rest.starts_with("(?!")
            || rest.starts_with("(?<=")
            || rest.starts_with("(?<!")
        {
            // Skip to the matching parenthesis.
            let mut depth = 0;
            let mut j = i;
            let mut cls = false;
            while j < chars.len() {
                let d = chars[j];
                if d == '\\' {
                    j += 2;
                    continue;
                }
                if cls {
                    if d == ']' {
                        cls = false;
                    }
                } else if d == '[' {
                    cls = true;
                    if chars.get(j + 1) == Some(&'^') {
                        j += 1;
                    }
                    if chars.get(j + 1) == Some(&']') {
                        j += 1;
                    }
                } else if d == '(' {
                    depth += 1;
                } else if d == ')' {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                j += 1;
            }
            i = j + 1;
            // A quantifier left dangling after the removed group applies to nothing.
            while i < chars.len() && matches!(chars[i], '?' | '*' | '+') {
                i += 1;
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    regex::Regex::new(&out).ok().map(|_| out)
}

/// A rule pack compiled into the binary: file name, the languages it applies to (empty:
/// language-agnostic), and its text.
#[derive(Debug, Clone, Copy)]
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
        for (what, pattern) in [
            ("requires", &spec.requires),
            ("unless", &spec.unless),
            ("unless_above", &spec.unless_above),
        ] {
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
        let prefilter = spec.regex.as_deref().and_then(prefilter_pattern);
        let prefilter_re = prefilter.as_deref().and_then(|p| regex::Regex::new(p).ok());
        out.push(Rule {
            spec,
            matcher,
            match_capture,
            prefilter,
            prefilter_re,
        });
    }
    Ok(out)
}

/// Matches of a rule's regex in `code`: (start, end) of the `m` group (else the whole
/// match) and the `name` group. With a prefilter, the backtracking engine only runs in a
/// window around each place the fast engine found a candidate, so large inputs cost time in
/// proportion to their candidates, not to their size times the number of rules.
pub fn regex_matches(
    re: &fancy_regex::Regex,
    prefilter: Option<&regex::Regex>,
    code: &str,
    limit: Option<usize>,
) -> Vec<(usize, usize, Option<String>)> {
    const WINDOW: usize = 512;
    let mut out = Vec::new();
    let push = |caps: &fancy_regex::Captures, offset: usize| {
        let whole = caps.get(0).expect("group 0");
        let m = caps.name("m").unwrap_or(whole);
        let name = caps.name("name").map(|n| n.as_str().to_string());
        (
            offset + whole.start(),
            offset + whole.end(),
            (offset + m.start(), offset + m.end(), name),
        )
    };
    let Some(pre) = prefilter else {
        for caps in re.captures_iter(code).map_while(Result::ok) {
            out.push(push(&caps, 0).2);
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        return out;
    };
    // The real match starts where the fast engine's candidate starts (the patterns differ
    // only by zero-width lookarounds), so the backtracking engine runs on a small window:
    // a little text before the candidate for lookbehinds, and some after it for lookaheads.
    const BEFORE: usize = 64;
    let mut next_from = 0;
    for cand in pre.find_iter(code) {
        if cand.start() < next_from {
            continue;
        }
        let mut lo = cand.start().saturating_sub(BEFORE);
        while !code.is_char_boundary(lo) {
            lo -= 1;
        }
        let mut hi = (cand.end() + WINDOW).min(code.len());
        while !code.is_char_boundary(hi) {
            hi += 1;
        }
        let hay = &code[lo..hi];
        if let Ok(Some(caps)) = re.captures_from_pos(hay, cand.start() - lo) {
            let (start, end, found) = push(&caps, lo);
            if start <= cand.end() && start >= next_from {
                next_from = end.max(start + 1);
                out.push(found);
                if limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
            }
        }
    }
    out
}

/// Lines above a match that `unless_above` looks at.
const LINES_ABOVE: usize = 3;

/// Checks a rule's `requires` / `unless` / `unless_above` conditions for one match in
/// `code` starting at byte `at`.
pub fn conditions_hold(spec: &RuleSpec, code: &str, at: usize, name: Option<&str>) -> bool {
    // A pattern that fails to run (backtracking limit) counts as not matching: `requires`
    // then drops the finding, `unless` keeps it (fail towards reporting).
    let matches = |p: &str| {
        let p = p.replace("{name}", &regex::escape(name.unwrap_or("")));
        // The fast engine finds the candidates; the backtracking one only checks them.
        match (cached_regex(&p), cached_prefilter(&p)) {
            (Some(re), plain) => !regex_matches(&re, plain.as_deref(), code, Some(1)).is_empty(),
            (None, _) => false,
        }
    };
    if spec.requires.as_deref().is_some_and(|r| !matches(r)) {
        return false;
    }
    if let Some(above) = spec.unless_above.as_deref() {
        let before = code.get(..at).unwrap_or_default();
        let from = before
            .rmatch_indices('\n')
            .nth(LINES_ABOVE)
            .map_or(0, |(i, _)| i + 1);
        if cached_regex(above).is_some_and(|re| re.is_match(&before[from..]).unwrap_or(false)) {
            return false;
        }
    }
    !spec.unless.as_deref().is_some_and(matches)
}

/// The fast-engine prefilter of a condition pattern, compiled once per distinct text.
fn cached_prefilter(pattern: &str) -> Option<std::sync::Arc<regex::Regex>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Arc<regex::Regex>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(re) = cache.lock().ok()?.get(pattern) {
        return re.clone();
    }
    let re = prefilter_pattern(pattern)
        .and_then(|p| regex::Regex::new(&p).ok())
        .map(Arc::new);
    let mut map = cache.lock().ok()?;
    if map.len() > 4096 {
        map.clear();
    }
    map.insert(pattern.to_string(), re.clone());
    re
}

/// Condition patterns compiled once per distinct text (the `{name}` substitution makes a few
/// variants per rule); bounded so adversarial inputs cannot grow it without limit.
fn cached_regex(pattern: &str) -> Option<std::sync::Arc<fancy_regex::Regex>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<fancy_regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(re) = cache.lock().ok()?.get(pattern) {
        return Some(re.clone());
    }
    let re = Arc::new(fancy_regex::Regex::new(pattern).ok()?);
    let mut map = cache.lock().ok()?;
    if map.len() > 4096 {
        map.clear();
    }
    map.insert(pattern.to_string(), re.clone());
    Some(re)
}

#[cfg(test)]
mod tests {
    use super::prefilter_pattern;

    #[test]
    fn prefilter_strips_lookarounds_only() {
        assert_eq!(
            prefilter_pattern(r"(?<![\w.])eval\s*\((?!\))").as_deref(),
            Some(r"eval\s*\(")
        );
        assert_eq!(prefilter_pattern(r"a(?=[)(])b").as_deref(), Some("ab"));
        assert_eq!(prefilter_pattern(r"[(?!]x").as_deref(), Some(r"[(?!]x"));
        assert_eq!(prefilter_pattern(r"(?P<d>.)\k<d>"), None);
    }
}
