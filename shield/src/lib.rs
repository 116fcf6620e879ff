//! safegate's shield: finds insecure code in text (model output, or anything sent to
//! `/v1/shield/scan`). Pure functions, no I/O: text in, findings out. What to do about a
//! finding (block, warn, annotate) is the policy's business, not the shield's.
//!
//! - [`extract`]: code blocks in text (fenced, indented, whole input);
//! - [`language`]: languages, fence aliases, detection;
//! - [`rules`]: rule packs (data files under `shield/rules/`);
//! - [`Shield::scan`] and [`StreamScanner`]: one-shot and incremental scanning.

pub mod extract;
pub mod language;
pub mod rules;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tree_sitter::{Parser, QueryCursor, StreamingIterator};

pub use extract::{extract_blocks, BlockKind, CodeBlock, Extractor};
pub use language::Language;
pub use rules::{Rule, Severity};

#[derive(Debug, thiserror::Error)]
pub enum ShieldError {
    #[error("input is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("rule packs: {0}")]
    Rules(String),
}

/// One insecure pattern found. Lines and columns are 1-based, in the scanned text; columns
/// count characters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub rule: String,
    pub cwe: String,
    pub severity: Severity,
    pub message: String,
    pub language: Option<Language>,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    #[serde(skip)]
    pub start_byte: usize,
    #[serde(skip)]
    pub end_byte: usize,
}

/// A code block as reported: where it is and which language it was scanned as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockReport {
    pub language: Option<Language>,
    pub language_source: LanguageSource,
    pub kind: BlockKind,
    pub tag: Option<String>,
    pub start_line: usize,
    pub end_line: usize,
    /// True when parsing hit the time limit and only regex rules ran on this block.
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LanguageSource {
    Forced,
    FenceTag,
    Detected,
    Unknown,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub blocks: Vec<BlockReport>,
}

impl Report {
    pub fn max_severity(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Scan every block (and unfenced text) as this language.
    pub language: Option<Language>,
    /// Languages to scan; others are skipped (empty: all).
    pub languages: Vec<Language>,
    /// Rule ids not to run.
    pub disabled_rules: Vec<String>,
    /// Larger inputs are refused with [`ShieldError::TooLarge`].
    pub max_bytes: usize,
    /// Parse time budget per block; past it the block gets regex rules only.
    pub parse_timeout: Duration,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            language: None,
            languages: Vec::new(),
            disabled_rules: Vec::new(),
            max_bytes: 4 * 1024 * 1024,
            parse_timeout: Duration::from_millis(200),
        }
    }
}

/// The compiled rule packs. Build once ([`Shield::embedded`]) and share. A language's
/// rules are compiled the first time text in that language is scanned (a one-file scan
/// from the command line compiles one language, not all of them).
pub struct Shield {
    packs: Vec<rules::Pack>,
    by_language: HashMap<Language, OnceLock<LanguageRules>>,
    agnostic: OnceLock<LanguageRules>,
}

/// One language's rules (or the language-agnostic ones), compiled, and one set of all
/// their prefilters: one fast pass over the code says which rules can match at all.
struct LanguageRules {
    rules: Vec<Rule>,
    prefilters: Prefilters,
}

/// Compiles the rules every pack has for `language` (None: the agnostic packs).
fn compile_language(
    packs: &[rules::Pack],
    language: Option<Language>,
) -> Result<LanguageRules, ShieldError> {
    let mut rules = Vec::new();
    for pack in packs {
        let applies = match language {
            None => pack.languages.is_empty(),
            Some(l) => pack.languages.contains(&l),
        };
        if applies {
            // Queries are compiled once per grammar.
            rules.extend(rules::compile_pack(pack.file, language, pack.text)?);
        }
    }
    let mut ids = std::collections::HashSet::new();
    if let Some(dup) = rules.iter().find(|r| !ids.insert(&r.spec.id)) {
        return Err(ShieldError::Rules(format!(
            "rule id `{}` appears twice for {}",
            dup.spec.id,
            language.map_or("all languages", Language::name)
        )));
    }
    let prefilters = Prefilters::new(&rules);
    Ok(LanguageRules { rules, prefilters })
}

struct Prefilters {
    set: regex::RegexSet,
    /// For each rule (by index in its list), its slot in `set`, if it has a prefilter.
    slots: Vec<Option<usize>>,
}

impl Prefilters {
    fn new(rules: &[Rule]) -> Prefilters {
        let mut patterns = Vec::new();
        let slots = rules
            .iter()
            .map(|r| {
                r.prefilter.as_ref().map(|p| {
                    patterns.push(p.clone());
                    patterns.len() - 1
                })
            })
            .collect();
        // A generous lazy-DFA cache keeps the set on the DFA path (the PikeVM fallback is
        // several times slower on the Unicode classes these patterns use).
        let set = regex::RegexSetBuilder::new(&patterns)
            .size_limit(64 << 20)
            .dfa_size_limit(64 << 20)
            .build()
            .unwrap_or_else(|_| regex::RegexSet::empty());
        Prefilters { set, slots }
    }

    /// Which rules may match `code`.
    fn candidates(&self, code: &str) -> Vec<bool> {
        let hits = self.set.matches(code);
        self.slots
            .iter()
            .map(|slot| slot.is_none_or(|s| hits.matched(s)))
            .collect()
    }
}

/// Maps byte offsets of the scanned text to 1-based (line, character column).
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    fn position(&self, byte: usize) -> (usize, usize) {
        let byte = byte.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= byte) - 1;
        let col = self
            .text
            .get(self.starts[line]..byte)
            .map_or(0, |s| s.chars().count());
        (line + 1, col + 1)
    }
}

/// Node kinds that are string literals in the supported grammars.
const STRING_KINDS: &[&str] = &[
    "string",
    "string_literal",
    "raw_string_literal",
    "interpreted_string_literal",
    "char_literal",
    "character_literal",
    "template_string",
    "encapsed_string",
    "heredoc",
    "heredoc_body",
    "nowdoc",
    "verbatim_string_literal",
    "line_string_literal",
    "multi_line_string_literal",
    "text_block",
];

/// Byte ranges of comments and of string literals in a parsed tree.
/// Byte ranges `[start, end)` in the scanned code.
type Ranges = Vec<(usize, usize)>;

fn literal_ranges(tree: &tree_sitter::Tree) -> (Ranges, Ranges) {
    let (mut comments, mut strings) = (Vec::new(), Vec::new());
    let tree_has_error = tree.root_node().has_error();
    let mut cursor = tree.walk();
    let mut descend = true;
    loop {
        let node = cursor.node();
        if descend {
            let kind = node.kind();
            if kind.contains("comment") {
                comments.push((node.start_byte(), node.end_byte()));
                descend = false;
            } else if STRING_KINDS.contains(&kind) {
                // A fragment that starts inside a string (a snippet cut mid-literal) flips
                // every quote after it: the "strings" the parser then finds hold the code.
                // A literal over several lines in a tree with parse errors is not trusted.
                if !(tree_has_error && node.start_position().row != node.end_position().row) {
                    strings.push((node.start_byte(), node.end_byte()));
                }
                descend = false;
            }
        }
        if descend && cursor.goto_first_child() {
            continue;
        }
        if cursor.goto_next_sibling() {
            descend = true;
            continue;
        }
        loop {
            if !cursor.goto_parent() {
                return (comments, strings);
            }
            if cursor.goto_next_sibling() {
                descend = true;
                break;
            }
        }
    }
}

/// How many lines above a match its statement may start and still be where the finding
/// starts: enough for a call whose receiver chain, attributes or opening tag are on earlier
/// lines; a statement that starts further up (a long builder chain, a JSX tree) keeps the
/// finding at the match.
const STATEMENT_LINES_UP: usize = 5;

/// Whether a tree-sitter node kind is a statement, declaration or element: the unit a
/// reviewer reads a finding in. Blocks are not (they hold statements).
fn is_statement_kind(kind: &str) -> bool {
    (kind.ends_with("_statement")
        || kind.ends_with("_declaration")
        || kind.ends_with("_definition")
        || kind.ends_with("_item")
        || matches!(
            kind,
            "declaration" | "jsx_opening_element" | "jsx_self_closing_element"
        ))
        && !matches!(
            kind,
            "compound_statement" | "statement_block" | "attribute_item" | "inner_attribute_item"
        )
}

/// Where a finding whose match starts at `at` starts: the start of the statement holding the
/// match when that is at most [`STATEMENT_LINES_UP`] lines above (`cursor.execute(` with the
/// formatted SQL on the next line, an action's first attribute above `[HttpPost]`, the `<div`
/// that carries `dangerouslySetInnerHTML`), else the match itself. Semgrep-based tools report
/// the statement's first line too, so findings line up with theirs.
fn statement_start(tree: &tree_sitter::Tree, code: &str, at: usize) -> usize {
    let mut node = tree
        .root_node()
        .descendant_for_byte_range(at, (at + 1).min(code.len()));
    while let Some(n) = node.filter(|n| !is_statement_kind(n.kind())) {
        // Inside an error-recovered part of the tree (a fragment cut mid-block, a template's
        // stray `}`) the enclosing "statement" can be anything: keep the match.
        if n.is_error() {
            return at;
        }
        node = n.parent();
    }
    let Some(start) = node.map(|n| n.start_byte()) else {
        return at;
    };
    if start < at && code[start..at].matches('\n').count() <= STATEMENT_LINES_UP {
        start
    } else {
        at
    }
}

/// Where a finding whose match starts at `at` starts: its statement (when the block parsed),
/// then the first of the attribute lines it is in.
fn finding_start(
    tree: Option<&tree_sitter::Tree>,
    language: Language,
    code: &str,
    at: usize,
) -> usize {
    let at = tree.map_or(at, |t| statement_start(t, code, at));
    attribute_run_start(language, code, at)
}

/// Attributes and annotations belong to the declaration under them: a finding on one
/// (`[HttpPost]`, `@RequestMapping`) starts at the first of the run of attribute lines it is
/// in. Textual, because code cut out of a class often parses as an error and the tree then
/// no longer links the attributes to their method.
fn attribute_run_start(language: Language, code: &str, at: usize) -> usize {
    let marker = match language {
        Language::Csharp => "[",
        Language::Java | Language::Kotlin | Language::Typescript | Language::Python => "@",
        Language::Rust => "#[",
        _ => return at,
    };
    let is_attribute_line = |line: &str| {
        let line = line.trim();
        line.starts_with(marker) && (marker != "[" || line.ends_with(']'))
    };
    let mut line_start = code[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = code[at..].find('\n').map_or(code.len(), |i| at + i);
    if !is_attribute_line(&code[line_start..line_end]) {
        return at;
    }
    let mut start = at;
    for _ in 0..STATEMENT_LINES_UP {
        if line_start == 0 {
            break;
        }
        let previous_start = code[..line_start - 1].rfind('\n').map_or(0, |i| i + 1);
        let previous = &code[previous_start..line_start - 1];
        if !is_attribute_line(previous) {
            break;
        }
        start = previous_start + (previous.len() - previous.trim_start().len());
        line_start = previous_start;
    }
    start
}

/// Whether the line holding `at` starts like a comment (`#`, `//`, `*`, `/*`, `--`, `;`):
/// the language-agnostic rules run on text whose language may be unknown.
fn on_comment_line(text: &str, at: usize) -> bool {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].trim_start();
    ["#", "//", "*", "/*", "--", ";", "<!--"]
        .iter()
        .any(|p| line.starts_with(p))
        && !line.starts_with("#!")
}

fn in_ranges(ranges: &[(usize, usize)], at: usize) -> bool {
    ranges.iter().any(|&(s, e)| s <= at && at < e)
}

/// Comment ranges found without a parse (regex only; used when no grammar ran).
fn lexical_comments(code: &str) -> Vec<(usize, usize)> {
    static LINE: OnceLock<regex::Regex> = OnceLock::new();
    let re = LINE.get_or_init(|| {
        regex::Regex::new(r"(?m)^\s*(//|#(?:[^!\[]|$)|--\s|\*|/\*).*$").expect("regex")
    });
    re.find_iter(code).map(|m| (m.start(), m.end())).collect()
}

impl Shield {
    /// The rule packs compiled into the binary.
    pub fn embedded() -> &'static Shield {
        static SHIELD: OnceLock<Shield> = OnceLock::new();
        SHIELD.get_or_init(|| Shield::lazy(rules::EMBEDDED))
    }

    /// A shield whose languages compile on first use (for packs known to compile: the
    /// embedded ones are, by their tests).
    fn lazy(packs: &[rules::Pack]) -> Shield {
        let by_language = packs
            .iter()
            .flat_map(|p| p.languages.iter().copied())
            .map(|l| (l, OnceLock::new()))
            .collect();
        Shield {
            packs: packs.to_vec(),
            by_language,
            agnostic: OnceLock::new(),
        }
    }

    /// Compiles every pack now: an error in any of them is returned here.
    pub fn from_packs(packs: &[rules::Pack]) -> Result<Shield, ShieldError> {
        let shield = Shield::lazy(packs);
        for (&lang, cell) in &shield.by_language {
            let _ = cell.set(compile_language(packs, Some(lang))?);
        }
        let _ = shield.agnostic.set(compile_language(packs, None)?);
        Ok(shield)
    }

    /// A language's compiled rules (None: the agnostic ones); None for a language no pack
    /// covers.
    fn compiled(&self, language: Option<Language>) -> Option<&LanguageRules> {
        let cell = match language {
            Some(l) => self.by_language.get(&l)?,
            None => &self.agnostic,
        };
        Some(cell.get_or_init(|| {
            compile_language(&self.packs, language)
                .expect("rule packs given to Shield::lazy compile (embedded packs are tested)")
        }))
    }

    /// Every rule, for listing and validation (`policies` checks rule ids against it).
    pub fn rules(&self) -> impl Iterator<Item = (Option<Language>, &Rule)> {
        self.by_language
            .keys()
            .map(|&l| Some(l))
            .chain(std::iter::once(None))
            .flat_map(move |l| {
                self.compiled(l)
                    .into_iter()
                    .flat_map(move |c| c.rules.iter().map(move |r| (l, r)))
            })
    }

    pub fn has_rule(&self, id: &str) -> bool {
        self.rules().any(|(_, r)| r.spec.id == id)
    }

    /// Scans a whole text.
    pub fn scan(&self, text: &str, options: &ScanOptions) -> Result<Report, ShieldError> {
        let mut s = StreamScanner::one_shot(self, options.clone());
        s.push(text)?;
        s.finish()
    }

    /// Runs one language's rules over `code`, whose lines start at `line_starts` in the text.
    #[allow(clippy::too_many_arguments)]
    fn scan_code(
        &self,
        code: &str,
        line_starts: &[usize],
        language: Language,
        options: &ScanOptions,
        parser: &mut Parser,
        parsed: Option<tree_sitter::Tree>,
        out: &mut Vec<RawFinding>,
    ) -> bool {
        let Some(compiled) = self.compiled(Some(language)) else {
            return false;
        };
        let rules = &compiled.rules;
        let source = language.prepare_source(code);
        let tree = if parsed.is_some() {
            // Detection already parsed this very text with this grammar.
            parsed
        } else if parser.set_language(&language.grammar()).is_ok() {
            let deadline = Instant::now() + options.parse_timeout;
            let mut progress = |_: &tree_sitter::ParseState| {
                if Instant::now() > deadline {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let bytes = source.as_bytes();
            let mut read =
                |at: usize, _: tree_sitter::Point| -> &[u8] { bytes.get(at..).unwrap_or_default() };
            let opts = tree_sitter::ParseOptions::new().progress_callback(&mut progress);
            let tree = parser.parse_with_options(&mut read, None, Some(opts));
            parser.reset();
            tree
        } else {
            None
        };
        let truncated = tree.is_none();
        let (comments, strings) = match &tree {
            Some(t) => literal_ranges(t),
            None => (lexical_comments(code), Vec::new()),
        };
        // Matches that start inside a comment or a string literal are not code.
        let outside_code = |at: usize, spec: &rules::RuleSpec| {
            (!spec.in_comments && in_ranges(&comments, at))
                || (!spec.in_strings && in_ranges(&strings, at))
        };
        // Map a byte offset inside the (possibly dedented) block back to the text.
        let code_line_starts: Vec<usize> = std::iter::once(0)
            .chain(code.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let to_text = |at: usize| -> usize {
            let line = code_line_starts.partition_point(|&s| s <= at) - 1;
            match line_starts.get(line) {
                Some(&start) => start + (at - code_line_starts[line]),
                None => {
                    line_starts.last().copied().unwrap_or(0)
                        + (at - code_line_starts[line.min(code_line_starts.len() - 1)])
                }
            }
        };
        let may_match = compiled.prefilters.candidates(code);
        for (rule, _) in rules.iter().zip(&may_match).filter(|(_, m)| **m) {
            if options.disabled_rules.iter().any(|d| d == &rule.spec.id) {
                continue;
            }
            match (&rule.matcher, &tree) {
                (rules::Matcher::Regex(re), _) => {
                    for (start, end, name) in
                        rules::regex_matches(re, rule.prefilter_re.as_ref(), code, None)
                    {
                        if outside_code(start, &rule.spec) {
                            continue;
                        }
                        if !rules::conditions_hold(&rule.spec, code, start, name.as_deref()) {
                            continue;
                        }
                        let start = finding_start(tree.as_ref(), language, code, start);
                        out.push(RawFinding::new(
                            rule,
                            Some(language),
                            to_text(start),
                            to_text(end),
                        ));
                    }
                }
                (rules::Matcher::Query(query), Some(tree)) => {
                    let mut cursor = QueryCursor::new();
                    cursor.set_match_limit(256);
                    let mut matches = cursor.matches(query, tree.root_node(), source.as_bytes());
                    while let Some(m) = matches.next() {
                        let node = match rule.match_capture {
                            Some(ci) => m.captures().iter().find(|c| c.index == ci).map(|c| c.node),
                            None => m.captures().first().map(|c| c.node),
                        };
                        if let Some(node) = node {
                            if outside_code(node.start_byte(), &rule.spec) {
                                continue;
                            }
                            let name = query
                                .capture_index_for_name("name")
                                .and_then(|ci| m.captures().iter().find(|c| c.index == ci))
                                .and_then(|c| c.node.utf8_text(source.as_bytes()).ok());
                            if !rules::conditions_hold(&rule.spec, code, node.start_byte(), name) {
                                continue;
                            }
                            out.push(RawFinding::new(
                                rule,
                                Some(language),
                                to_text(finding_start(
                                    Some(tree),
                                    language,
                                    code,
                                    node.start_byte(),
                                )),
                                to_text(node.end_byte()),
                            ));
                        }
                    }
                }
                (rules::Matcher::Query(_), None) => {}
            }
        }
        truncated
    }

    fn scan_agnostic(
        &self,
        text: &str,
        base: usize,
        language: Option<Language>,
        options: &ScanOptions,
        out: &mut Vec<RawFinding>,
    ) {
        let Some(agnostic) = self.compiled(None) else {
            return;
        };
        let may_match = agnostic.prefilters.candidates(text);
        for (rule, _) in agnostic.rules.iter().zip(&may_match).filter(|(_, m)| **m) {
            if options.disabled_rules.iter().any(|d| d == &rule.spec.id) {
                continue;
            }
            if !rule.spec.languages.is_empty()
                && !language.is_some_and(|l| rule.spec.languages.contains(&l))
            {
                continue;
            }
            if let rules::Matcher::Regex(re) = &rule.matcher {
                for caps in re.captures_iter(text).map_while(Result::ok) {
                    let m = caps.name("m").or_else(|| caps.get(0)).expect("group 0");
                    if !rule.spec.in_comments && on_comment_line(text, m.start()) {
                        continue;
                    }
                    out.push(RawFinding::new(
                        rule,
                        language,
                        base + m.start(),
                        base + m.end(),
                    ));
                }
            }
        }
    }
}

struct RawFinding {
    rule: String,
    cwe: String,
    severity: Severity,
    message: String,
    language: Option<Language>,
    start: usize,
    end: usize,
}

impl RawFinding {
    fn new(rule: &Rule, language: Option<Language>, start: usize, end: usize) -> Self {
        Self {
            rule: rule.spec.id.clone(),
            cwe: rule.spec.cwe.clone(),
            severity: rule.spec.severity,
            message: rule.spec.message.clone(),
            language,
            start,
            end,
        }
    }
}

/// Incremental scanning for streams: feed chunks as they arrive; each code block is scanned
/// as soon as its closing fence arrives, and the rest at [`StreamScanner::finish`].
/// Positions are always in the whole text fed so far.
/// Where a run of unfenced code begins: byte offset and 0-based line.
#[derive(Debug, Clone, Copy)]
struct RunStart {
    byte: usize,
    line: usize,
}

pub struct StreamScanner<'s> {
    shield: &'s Shield,
    options: ScanOptions,
    text: String,
    /// Bytes of `text` already fed to the extractor (whole lines).
    consumed: usize,
    /// Bytes of `text` already scanned by the language-agnostic rules (whole lines).
    agnostic_done: usize,
    extractor: Extractor,
    parser: Parser,
    report: Report,
    reported: usize,
    /// Where the current run of code-like lines outside any block starts: code without a
    /// fence is code too, so such lines are held until the run ends (a line of prose, a
    /// fence, or the end) and has been scanned.
    unfenced_run: Option<RunStart>,
    /// Lines fed to the extractor so far (the next line's 0-based index).
    lines_fed: usize,
    /// Streaming: runs are scanned as they end, to know what may be released. One-shot
    /// (`Shield::scan`): they are only scanned at the end, when needed.
    scan_runs_early: bool,
    /// Runs that ended, not scanned yet (one-shot).
    runs: Vec<(RunStart, usize)>,
    /// Findings and blocks of runs scanned early, kept out of the report until the end:
    /// without a fence anywhere the whole text is scanned as code instead (as one-shot
    /// does), so the two agree.
    run_findings: Vec<RawFinding>,
    run_blocks: Vec<BlockReport>,
    /// The start of the first run with findings: held from there until the end.
    held_from: Option<usize>,
}

/// A line with the marks of code even when it reads like a sentence (`def clean(path):`,
/// `return os.system(cmd)`): a call's bracket right after a name, operators and brackets
/// that prose does not use, or a statement keyword first.
fn code_like(line: &str) -> bool {
    // Statement keywords, and shell commands in lower case as typed.
    const KEYWORDS: &[&str] = &[
        "import",
        "from",
        "def",
        "class",
        "return",
        "if",
        "elif",
        "else",
        "for",
        "while",
        "try",
        "except",
        "with",
        "let",
        "const",
        "var",
        "fn",
        "pub",
        "use",
        "func",
        "package",
        "public",
        "private",
        "static",
        "void",
        "int",
        "char",
        "async",
        "await",
        "using",
        "namespace",
        "echo",
        "sudo",
        "exec",
        "eval",
        "require",
        "include",
        "rm",
        "chmod",
        "chown",
        "curl",
        "wget",
        "sh",
        "bash",
        "python",
        "python3",
        "node",
        "nc",
        "dd",
        "mkfs",
        "kill",
        "pip",
        "npm",
        "apt",
        "git",
        "cd",
        "cp",
        "mv",
        "cat",
        "export",
        "set",
        "ssh",
        "scp",
        "docker",
        "kubectl",
    ];
    let called = line
        .char_indices()
        .any(|(i, c)| c == '(' && line[..i].ends_with(|p: char| p.is_alphanumeric() || p == '_'));
    let operators = line.contains(['=', ';', '{', '}', '[', ']', '<', '>', '$', '`', '|'])
        || line.contains("::")
        || line.contains("->");
    let first = line.split_whitespace().next().unwrap_or("");
    let keyword = KEYWORDS.contains(&first) || first.starts_with("#include");
    called || operators || keyword
}

/// Words of `text` with a letter in them.
fn word_count(text: &str) -> usize {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphabetic))
        .count()
}

/// Every dot ends a word: it is followed by one of `followers` (or ends the text, when
/// `at_end`), never joins two names (`os.system`).
fn dots_end_words(text: &str, followers: &[char], at_end: bool) -> bool {
    text.match_indices('.').all(|(i, _)| {
        let rest = &text[i + 1..];
        (at_end && rest.is_empty()) || rest.starts_with(followers)
    })
}

/// A complete line of ordinary writing (a line of a poem ends with a comma, a list item
/// with a colon): at least three words, nothing but letters, digits, spaces and sentence
/// punctuation, dots only ending words.
fn sentence_like(line: &str) -> bool {
    let chars_ok = line.chars().all(|c| {
        c.is_alphanumeric()
            || c.is_whitespace()
            || ",.!?;:'\"()-\u{2013}\u{2014}\u{2019}".contains(c)
    });
    word_count(line) >= 3 && chars_ok && dots_end_words(line, &[' ', '.', '"', '\''], true)
}

/// An incomplete line that can only be prose so far: it starts with a letter, holds at
/// least three words, and has nothing but letters, digits, spaces and sentence punctuation
/// (no brackets, operators, quotes of code, dots inside words or line-leading indentation).
fn plain_prose(partial: &str) -> bool {
    let chars_ok = partial
        .chars()
        .all(|c| c.is_alphanumeric() || " ,!?'.".contains(c));
    partial.starts_with(char::is_alphabetic)
        && word_count(partial) >= 3
        && chars_ok
        && dots_end_words(partial, &[' '], false)
}

impl<'s> StreamScanner<'s> {
    pub fn new(shield: &'s Shield, options: ScanOptions) -> Self {
        Self {
            shield,
            options,
            text: String::new(),
            consumed: 0,
            agnostic_done: 0,
            extractor: Extractor::default(),
            parser: Parser::new(),
            report: Report::default(),
            reported: 0,
            unfenced_run: None,
            lines_fed: 0,
            scan_runs_early: true,
            runs: Vec::new(),
            run_findings: Vec::new(),
            run_blocks: Vec::new(),
            held_from: None,
        }
    }

    /// A scanner for a text given whole (push once, then finish): runs of unfenced code are
    /// scanned at the end only, and only when a fence elsewhere keeps the whole text from
    /// being scanned as code.
    fn one_shot(shield: &'s Shield, options: ScanOptions) -> Self {
        Self {
            scan_runs_early: false,
            ..Self::new(shield, options)
        }
    }

    /// The text fed so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte offset from which text should be held back from a reader because it may belong
    /// to code not yet scanned: the start of a run of code-like lines outside any block
    /// (held until the run ends and is scanned, and to the end if the scan found something),
    /// else the start of the open block; else the start of the incomplete last line unless
    /// it is plain prose so far (words and sentence punctuation only: `os.system(` must not
    /// go out a character at a time); else the end of the text.
    pub fn unscanned_from(&self) -> usize {
        if let Some(start) = self.held_from.or(self.unfenced_run.map(|r| r.byte)) {
            return start.min(self.consumed);
        }
        if let Some(start) = self.extractor.open_block_start() {
            return start.min(self.consumed);
        }
        if plain_prose(&self.text[self.consumed..]) {
            self.text.len()
        } else {
            self.consumed
        }
    }

    /// Adds a chunk; returns the findings of blocks that closed in it.
    pub fn push(&mut self, chunk: &str) -> Result<Vec<Finding>, ShieldError> {
        if self.text.len() + chunk.len() > self.options.max_bytes {
            return Err(ShieldError::TooLarge {
                size: self.text.len() + chunk.len(),
                limit: self.options.max_bytes,
            });
        }
        self.text.push_str(chunk);
        let mut raw = Vec::new();
        while let Some(nl) = self.text[self.consumed..].find('\n') {
            let end = self.consumed + nl + 1;
            self.feed_line(end, &mut raw);
        }
        // Language-agnostic rules (secrets, keys) run on whole lines as they complete.
        if self.consumed > self.agnostic_done {
            let (from, to) = (self.agnostic_done, self.consumed);
            let part = self.text[from..to].to_string();
            self.shield
                .scan_agnostic(&part, from, self.options.language, &self.options, &mut raw);
            self.agnostic_done = to;
        }
        Ok(self.record(raw))
    }

    /// Feeds the line from `self.consumed` to `end` to the extractor and to the tracking of
    /// unfenced code runs.
    fn feed_line(&mut self, end: usize, raw: &mut Vec<RawFinding>) {
        let start = self.consumed;
        let line = self.text[start..end].to_string();
        self.consumed = end;
        let in_block = self.extractor.open_block_start().is_some();
        let block = self.extractor.push_line(&line);
        let outside = !in_block && block.is_none() && self.extractor.open_block_start().is_none();
        let content = line.trim();
        // Comments belong to the code around them (a `// SAFETY:` note, a docstring's `#`
        // lines), whatever their words.
        let comment = ["//", "#", "/*", "*", "--", "<!--"]
            .iter()
            .any(|m| content.starts_with(m));
        let prose =
            !code_like(content) && (extract::looks_like_prose(content) || sentence_like(content));
        if outside && !content.is_empty() && (comment || !prose) {
            // A code-like line outside any block: held with its run.
            let at = RunStart {
                byte: start,
                line: self.lines_fed,
            };
            self.unfenced_run.get_or_insert(at);
        } else if !(outside && content.is_empty()) {
            // Prose, or a block opening or closing: the run (if any) is complete.
            self.end_unfenced_run(start);
        }
        self.lines_fed += 1;
        if let Some(block) = block {
            self.scan_block(block, raw);
        }
    }

    /// The open run of unfenced code ends at `end`: scanned now (streaming; findings hold
    /// the text from the run on until the end) or remembered (one-shot).
    fn end_unfenced_run(&mut self, end: usize) {
        let Some(start) = self.unfenced_run.take() else {
            return;
        };
        if !self.scan_runs_early {
            self.runs.push((start, end));
            return;
        }
        let blocks_before = self.report.blocks.len();
        let mut found = Vec::new();
        self.scan_unfenced_run(start, end, &mut found);
        self.run_blocks
            .extend(self.report.blocks.drain(blocks_before..));
        if !found.is_empty() {
            self.held_from.get_or_insert(start.byte);
            self.run_findings.extend(found);
        }
    }

    /// Scans the text from `start` to `end` (a run of code-like lines outside blocks) as code
    /// of the language detected in it.
    fn scan_unfenced_run(&mut self, start: RunStart, end: usize, raw: &mut Vec<RawFinding>) {
        let code = self.text[start.byte..end].to_string();
        // Only what reads as code in some language is a block: a closing "Done." or a
        // heading is not.
        let Some(detected) = language::detect_with_tree(&code) else {
            return;
        };
        let line_starts = std::iter::once(start.byte)
            .chain(
                code.match_indices('\n')
                    .map(|(i, _)| start.byte + i + 1)
                    .filter(|&i| i < end),
            )
            .collect();
        let block = CodeBlock {
            tag: None,
            kind: BlockKind::Whole,
            start_byte: start.byte,
            start_line: start.line,
            line_starts,
            code,
            closed: true,
        };
        let detected = self.options.language.is_none().then_some(detected);
        self.scan_block_as(block, detected, raw);
    }

    fn scan_block(&mut self, block: CodeBlock, raw: &mut Vec<RawFinding>) {
        let detected = match (
            self.options.language,
            block.tag.as_deref().and_then(Language::from_alias),
        ) {
            (None, None) => language::detect_with_tree(&block.code),
            _ => None,
        };
        self.scan_block_as(block, detected, raw);
    }

    /// Scans a block; `detected` is the detection result when neither the caller nor the
    /// fence named the language (so detection runs once per block).
    fn scan_block_as(
        &mut self,
        block: CodeBlock,
        detected: Option<(Language, Option<tree_sitter::Tree>)>,
        raw: &mut Vec<RawFinding>,
    ) {
        let (detected, mut parsed) = match detected {
            Some((l, tree)) => (Some(l), tree),
            None => (None, None),
        };
        let (language, source) = match (
            self.options.language,
            block.tag.as_deref().and_then(Language::from_alias),
        ) {
            (Some(l), _) => (Some(l), LanguageSource::Forced),
            (None, Some(l)) => (Some(l), LanguageSource::FenceTag),
            (None, None) => match detected {
                Some(l) => (Some(l), LanguageSource::Detected),
                None => (None, LanguageSource::Unknown),
            },
        };
        let wanted =
            |l: Language| self.options.languages.is_empty() || self.options.languages.contains(&l);
        let mut truncated = false;
        if let Some(lang) = language.filter(|l| wanted(*l)) {
            truncated = self.shield.scan_code(
                &block.code,
                &block.line_starts,
                lang,
                &self.options,
                &mut self.parser,
                parsed.take().filter(|_| source == LanguageSource::Detected),
                raw,
            );
        }
        // A fence tag that does not fit the code: its real language's rules run as well.
        if let (LanguageSource::FenceTag, Some(tagged)) = (source, language) {
            if let Some(real) =
                language::mislabelled(&mut self.parser, tagged, &block.code).filter(|l| wanted(*l))
            {
                truncated |= self.shield.scan_code(
                    &block.code,
                    &block.line_starts,
                    real,
                    &self.options,
                    &mut self.parser,
                    None,
                    raw,
                );
            }
        }
        let lines = block.code.lines().count().max(1);
        self.report.blocks.push(BlockReport {
            language,
            language_source: source,
            kind: block.kind,
            tag: block.tag,
            start_line: block.start_line + 1,
            end_line: block.start_line + lines,
            truncated,
        });
    }

    fn record(&mut self, raw: Vec<RawFinding>) -> Vec<Finding> {
        // Most pushes find nothing: indexing the whole text each time would make a stream
        // quadratic in its length.
        if raw.is_empty() {
            return Vec::new();
        }
        let index = LineIndex::new(&self.text);
        for r in raw {
            // The same match seen in two scans of the same code (an indented part, then the
            // whole file) ends at the same byte; its start may differ, as the statement it
            // extends to can be cut off in the part.
            let dup = self
                .report
                .findings
                .iter()
                .any(|f| f.rule == r.rule && f.end_byte == r.end);
            if dup {
                continue;
            }
            let (line, column) = index.position(r.start);
            let (end_line, end_column) = index.position(r.end);
            self.report.findings.push(Finding {
                rule: r.rule,
                cwe: r.cwe,
                severity: r.severity,
                message: r.message,
                language: r.language,
                line,
                column,
                end_line,
                end_column,
                start_byte: r.start,
                end_byte: r.end,
            });
        }
        let new = self.report.findings[self.reported..].to_vec();
        self.reported = self.report.findings.len();
        new
    }

    /// Ends the stream: scans an unterminated last line, an unclosed block, and, when the
    /// text had no fenced blocks, the whole text if it is code (indented-looking parts of a
    /// code file are then scanned in context; duplicate findings are merged). Returns the
    /// full report.
    pub fn finish(mut self) -> Result<Report, ShieldError> {
        let mut raw = Vec::new();
        if self.consumed < self.text.len() {
            let (from, end) = (self.consumed, self.text.len());
            self.feed_line(end, &mut raw);
            let line = self.text[from..end].to_string();
            let from = self.agnostic_done;
            self.shield
                .scan_agnostic(&line, from, self.options.language, &self.options, &mut raw);
            self.agnostic_done = self.text.len();
        }
        if let Some(block) = self.extractor.finish() {
            self.scan_block(block, &mut raw);
        }
        let end = self.text.len();
        self.end_unfenced_run(end);
        if self.extractor.fenced_seen() > 0 {
            // Fenced code was scanned block by block; code outside the fences is code too.
            raw.append(&mut self.run_findings);
            self.report.blocks.append(&mut self.run_blocks);
            for (start, end) in std::mem::take(&mut self.runs) {
                self.scan_unfenced_run(start, end, &mut raw);
            }
        } else if !self.text.trim().is_empty() {
            let line_starts = std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect();
            let whole = CodeBlock {
                tag: None,
                kind: BlockKind::Whole,
                start_byte: 0,
                start_line: 0,
                line_starts,
                code: self.text.clone(),
                closed: true,
            };
            let detected = match self.options.language {
                Some(_) => None,
                None => language::detect_with_tree(&whole.code),
            };
            if self.options.language.is_some() || detected.is_some() {
                self.scan_block_as(whole, detected, &mut raw);
            }
        }
        self.record(raw);
        self.report
            .findings
            .sort_by_key(|f| (f.start_byte, f.end_byte));
        Ok(self.report)
    }
}
