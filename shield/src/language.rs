//! Languages the shield knows: names and fence aliases, tree-sitter grammars, and detection
//! of the language of unlabelled code.

use std::fmt;

use tree_sitter::{Node, Parser, Tree};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    C,
    Cpp,
    Csharp,
    Java,
    Javascript,
    Typescript,
    Php,
    Python,
    Rust,
    Go,
    Ruby,
    Kotlin,
    Swift,
    Bash,
}

pub const ALL: [Language; 14] = [
    Language::C,
    Language::Cpp,
    Language::Csharp,
    Language::Java,
    Language::Javascript,
    Language::Typescript,
    Language::Php,
    Language::Python,
    Language::Rust,
    Language::Go,
    Language::Ruby,
    Language::Kotlin,
    Language::Swift,
    Language::Bash,
];

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Csharp => "csharp",
            Language::Java => "java",
            Language::Javascript => "javascript",
            Language::Typescript => "typescript",
            Language::Php => "php",
            Language::Python => "python",
            Language::Rust => "rust",
            Language::Go => "go",
            Language::Ruby => "ruby",
            Language::Kotlin => "kotlin",
            Language::Swift => "swift",
            Language::Bash => "bash",
        }
    }

    /// A fence info string or a user's name for a language (`py`, `c++`, `cs`, `sh`, ...).
    pub fn from_alias(tag: &str) -> Option<Language> {
        let t = tag.trim().to_ascii_lowercase();
        // Info strings can carry more after the language: "python title=x.py", "rust,ignore".
        let t = t
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
            .next()
            .unwrap_or("");
        Some(match t {
            "c" | "h" => Language::C,
            "cpp" | "c++" | "cc" | "cxx" | "hpp" | "hh" | "hxx" | "cplusplus" => Language::Cpp,
            "cs" | "c#" | "csharp" | "dotnet" => Language::Csharp,
            "java" => Language::Java,
            "js" | "javascript" | "jsx" | "node" | "nodejs" | "mjs" | "cjs" => Language::Javascript,
            "ts" | "typescript" | "tsx" | "mts" | "cts" => Language::Typescript,
            "php" | "php3" | "php4" | "php5" | "php7" | "php8" => Language::Php,
            "py" | "python" | "python3" | "py3" | "python2" | "ipython" | "pycon" => {
                Language::Python
            }
            "rs" | "rust" => Language::Rust,
            "go" | "golang" => Language::Go,
            "rb" | "ruby" => Language::Ruby,
            "kt" | "kts" | "kotlin" => Language::Kotlin,
            "swift" => Language::Swift,
            "sh" | "bash" | "shell" | "zsh" | "console" | "shellscript" | "ksh" => Language::Bash,
            _ => return None,
        })
    }

    pub fn grammar(self) -> tree_sitter::Language {
        match self {
            Language::C => tree_sitter_c::LANGUAGE.into(),
            Language::Cpp => tree_sitter_cpp::LANGUAGE.into(),
            Language::Csharp => tree_sitter_c_sharp::LANGUAGE.into(),
            Language::Java => tree_sitter_java::LANGUAGE.into(),
            Language::Javascript => tree_sitter_javascript::LANGUAGE.into(),
            Language::Typescript => tree_sitter_typescript::LANGUAGE_TSX.into(),
            // The PHP-only grammar: snippets often lack `<?php`, and the scanner blanks out
            // the `<?php` / `?>` tags (see `prepare_source`).
            Language::Php => tree_sitter_php::LANGUAGE_PHP_ONLY.into(),
            Language::Python => tree_sitter_python::LANGUAGE.into(),
            Language::Rust => tree_sitter_rust::LANGUAGE.into(),
            Language::Go => tree_sitter_go::LANGUAGE.into(),
            Language::Ruby => tree_sitter_ruby::LANGUAGE.into(),
            Language::Kotlin => tree_sitter_kotlin_ng::LANGUAGE.into(),
            Language::Swift => tree_sitter_swift::LANGUAGE.into(),
            Language::Bash => tree_sitter_bash::LANGUAGE.into(),
        }
    }

    /// Source as the grammar should see it, byte for byte the same length (positions hold):
    /// PHP's open and close tags become spaces, and so does the HTML around them (the text
    /// after a `?>` up to the next `<?`, and before the first opening tag when no `?>` comes
    /// first), which the PHP-only grammar would otherwise read as code and join to the
    /// statement after it. Line breaks stay, so lines and columns hold.
    pub fn prepare_source(self, code: &str) -> std::borrow::Cow<'_, str> {
        if self != Language::Php || !(code.contains("<?") || code.contains("?>")) {
            return std::borrow::Cow::Borrowed(code);
        }
        let mut bytes = code.as_bytes().to_vec();
        let blank = |bytes: &mut Vec<u8>, range: std::ops::Range<usize>| {
            for b in &mut bytes[range] {
                if *b != b'\n' {
                    *b = b' ';
                }
            }
        };
        let first_open = tag_positions(code, "<?").next();
        let first_close = tag_positions(code, "?>").next();
        if let Some(open) = first_open {
            if first_close.is_none_or(|close| open < close) {
                blank(&mut bytes, 0..open);
            }
        }
        let mut at = 0;
        while let Some(close) = tag_positions(&code[at..], "?>").next().map(|i| at + i) {
            let html_end = tag_positions(&code[close + 2..], "<?")
                .next()
                .map_or(code.len(), |i| close + 2 + i);
            blank(&mut bytes, close..html_end);
            at = html_end;
            if at >= code.len() {
                break;
            }
        }
        let mut s =
            String::from_utf8(bytes).expect("every byte of a blanked character became a space");
        s = s
            .replace("<?php", "     ")
            .replace("<?=", "   ")
            .replace("<?", "  ");
        std::borrow::Cow::Owned(s)
    }
}

/// Where `tag` (`<?` or `?>`) stands as a PHP tag in `code`: not inside a quoted string or
/// after a `//`, `#` or `*` comment marker on its line (`'<?xml ...?>'`, a docblock that
/// mentions `?>`), judged line by line since snippets start anywhere.
fn tag_positions<'a>(code: &'a str, tag: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.match_indices(tag).map(|(i, _)| i).filter(move |&i| {
        let line_start = code[..i].rfind('\n').map_or(0, |n| n + 1);
        let before = &code[line_start..i];
        let trimmed = before.trim_start();
        let in_comment = trimmed.starts_with('*')
            || trimmed.starts_with("/*")
            || before.contains("//")
            || before.contains('#');
        let quotes = |q: char| before.chars().filter(|&c| c == q).count() % 2 == 1;
        !in_comment && !quotes('\'') && !quotes('"')
    })
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Language::from_alias(s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|l| l.name()).collect();
            format!("unknown language `{s}` (known: {})", names.join(", "))
        })
    }
}

/// Cheap textual signals: (language, pattern, weight). A language's score is the sum of the
/// weights of its signals present in the code.
fn signals() -> &'static [(Language, regex::Regex, i32)] {
    use std::sync::OnceLock;
    static SIGNALS: OnceLock<Vec<(Language, regex::Regex, i32)>> = OnceLock::new();
    SIGNALS.get_or_init(|| {
        let raw: &[(Language, &str, i32)] = &[
            (Language::Php, r"<\?php|\$_(GET|POST|REQUEST|SERVER|COOKIE|SESSION|FILES)\b|\$this->", 6),
            (Language::Php, r"\$[a-zA-Z_]\w*\s*(=[^=>]|->|\[|\.=|\)|;|,)|\bfunction\s+\w+\s*\([^)]*\$|\becho\s|\barray\s*\(|=>\s*\$|\bforeach\s*\(\s*\$", 2),
            (Language::Python, r"(?m)^\s*(def\s+\w+\s*\(.*\)\s*(->.*)?:|class\s+\w+(\(.*\))?:\s*$|elif\s.*:\s*$|from\s+[\w.]+\s+import\s|import\s+[\w.]+(\s+as\s+\w+)?\s*$|with\s+.*\bas\s+\w+:\s*$|for\s+\w+(,\s*\w+)*\s+in\s+.*:\s*$|except(\s+\w+.*)?:\s*$|try:\s*$)", 4),
            (Language::Python, r"(?m):\s*$|\bself\.\w|\bNone\b|\bTrue\b|\bFalse\b|\bprint\(|\bnot\s+in\b|\bis\s+not\b|\blambda\s+\w*:|\x22\x22\x22", 1),
            (Language::Rust, r"\bfn\s+\w+(<[^>]*>)?\s*\(|\blet\s+(mut\s+)?\w+\s*(:\s*[\w<>&\[\]]+\s*)?=|\bimpl(<[^>]*>)?\s+\w|\buse\s+(std|crate|super|self)::|\bpub\s+(fn|struct|enum|mod|trait|crate)\b|\bmatch\s+[\w.&*]+\s*\{|\b(Some|Ok|Err)\(|\.unwrap\(\)|&mut\s|\w+!\(|\bunsafe\s*\{|::<|->\s*(Self|Result|Option|Vec|String|bool|u\d+|i\d+|usize)\b|\bVec<", 3),
            (Language::Go, r"(?m)^package\s+\w+\s*$|\bfunc\s+(\([^)]*\)\s*)?\w+\s*\(|\w\s*:=\s|\bfmt\.\w+\(|\bgo\s+func\b|\berr\s*!=\s*nil\b|\bdefer\s", 3),
            (Language::Java, r"\bpublic\s+(static\s+)?(final\s+)?(class|void|interface|abstract)\b|System\.out\.|\bimport\s+(java|javax|android|org|com)\.[\w.]+;|@Override|\bString\[\]|\bthrows\s+\w+|\bprivate\s+(static\s+)?(final\s+)?[A-Z]\w*(<[^>]*>)?\s+\w+\s*[;=]|\bfinal\s+[A-Z]\w*\s+\w+\s*=|\.equals\(|\bboolean\b|\bextends\s+[A-Z]|\bimplements\s+[A-Z]", 3),
            (Language::Kotlin, r"\bfun\s+\w+\s*\(|\bval\s+\w+\s*[:=]|\bvar\s+\w+\s*:\s*[A-Z]|\bimport\s+kotlin\.|\bwhen\s*\(|\?\.|!!\.", 3),
            (Language::Csharp, r"\busing\s+System(\.\w+)*;|\bnamespace\s+[\w.]+|\bvar\s+\w+\s*=|\[(HttpPost|HttpGet|Authorize|Test|TestMethod|Fact|Serializable|AllowAnonymous)[^\]]*\]|Console\.Write|\bstring\s+\w+\s*[=;,)]|\{\s*get;\s*(private\s+)?set;\s*\}|\bpublic\s+(override\s+|virtual\s+|async\s+|static\s+)*[A-Z]\w*(<[^>]*>)?\s+[A-Z]\w*\s*\(|\busing\s*\(\s*var\b|\bforeach\s*\(\s*var\b|\.Count\b|\bbool\s+\w+\s*[=;)]|\bnew\s+List<|\bout\s+\w+\b|\bawait\s|\bstring\.\w+\(", 3),
            (Language::Javascript, r"\bfunction\s*\w*\s*\(|\bconst\s+\w+\s*=|\blet\s+\w+\s*=|\bvar\s+\w+\s*=|=>|\brequire\(|\bconsole\.log\(|\bmodule\.exports\b|\bdocument\.|\bwindow\.|===|!==|\bthis\.\w+\s*=|\bundefined\b|\.prototype\.", 2),
            (Language::Typescript, r":\s*(string|number|boolean|any|void|unknown)\b|\binterface\s+\w+\s*\{|\bimport\s+.*\s+from\s+['\x22]|\btype\s+\w+\s*=|\bexport\s+(default\s+)?(class|function|const|interface)|\bprivate\s+\w+\s*:|\bas\s+(string|number|any)\b", 2),
            (Language::C, r"(?m)^\s*#\s*(include|define|ifdef|ifndef|endif|if|else|elif|pragma)\b|\b(malloc|calloc|free|printf|fprintf|sprintf|snprintf|strcpy|strcat|strlen|memcpy|memset|sizeof)\s*\(|\bint\s+main\s*\(|\b(char|int|void|unsigned|long|short|double|float|size_t|uint\d+_t|int\d+_t|struct\s+\w+)\s*\*+\s*\w|->\w+|\bNULL\b|\bstatic\s+(int|void|char|const)\b|\bstruct\s+\w+\s*\{|\btypedef\b", 2),
            (Language::Cpp, r"\bstd::|\btemplate\s*<|\bnamespace\s+\w+\s*\{|#include\s*<(iostream|vector|string|memory|map|algorithm|cstring|cstdio|cstdlib)>|\bcout\s*<<|\bnullptr\b|\bclass\s+\w+\s*(:\s*(public|private)\s+\w+)?\s*\{|\w::\w+\s*\(|\bauto\s+\w+\s*=|\bconst\s+\w+\s*&|\bvirtual\s|\boverride\b|\bdelete\s*\[?\]?\s*\w|\bpublic:|\bprivate:|\bthis->|\bnew\s+(unsigned\s+)?(char|short|int|long|float|double|bool|u?int\d+_t|u?int\d+|size_t|byte|uint8|int8|[A-Z]\w*)\s*\[|\b(static|reinterpret|const|dynamic)_cast<|\busing\s+namespace\b|\btypename\b|\b(unique_ptr|shared_ptr)<|\)\s*const\s*[{;]", 3),
            (Language::Ruby, r"(?m)^\s*(def\s+\w+[?!]?(\(.*\))?\s*$|end\s*$|require\s+['\x22]|puts\s|module\s+[A-Z]\w*\s*$)|\bdo\s*\|\w+(,\s*\w+)*\||\.each\s+do\b|\battr_(accessor|reader)\b|\belsif\b|@\w+\s*=", 3),
            (Language::Swift, r"\bfunc\s+\w+\s*\(.*\)\s*(->\s*\w+)?\s*\{|\blet\s+\w+\s*:\s*[A-Z]\w*|\bimport\s+(Foundation|UIKit|SwiftUI)\b|\bguard\s+let\b|\bvar\s+\w+\s*:\s*[A-Z]\w*|\bif\s+let\b|@IBOutlet|@objc", 3),
            (Language::Bash, r"(?m)^#!.*\b(ba|z|k)?sh\b|^\s*(echo|export|sudo|apt-get|apt|curl|wget|chmod|chown|cd|rm|mkdir|cp|mv|source|pip|npm|git|docker)\s|^\s*fi\s*$|^\s*done\s*$|\bthen\s*$|\$\(\w|\$\{\w+\}|\[\[\s", 2),
        ];
        raw.iter()
            .map(|(l, p, w)| (*l, regex::Regex::new(p).expect("signal regex"), *w))
            .collect()
    })
}

fn signal_scores(code: &str) -> Vec<(Language, i32)> {
    let mut scores: Vec<(Language, i32)> = ALL.iter().map(|&l| (l, 0)).collect();
    for (lang, re, weight) in signals() {
        let hits = re.find_iter(code).take(8).count() as i32;
        if hits > 0 {
            let slot = scores
                .iter_mut()
                .find(|(l, _)| l == lang)
                .expect("every language");
            slot.1 += weight * hits;
        }
    }
    // C constructs are C++ too: C++ scores its own signals on top of C's, so that C++ wins
    // whenever it shows any sign of its own and both grammars parse about as well (ties keep
    // C, which comes first).
    let c = scores
        .iter()
        .find(|(l, _)| *l == Language::C)
        .map_or(0, |(_, s)| *s);
    if let Some(cpp) = scores.iter_mut().find(|(l, _)| *l == Language::Cpp) {
        if cpp.1 > 0 {
            cpp.1 += c;
        }
    }
    scores.sort_by_key(|&(_, score)| std::cmp::Reverse(score));
    scores
}

/// A fragment cut from inside a docstring has an odd number of triple quotes: every quote
/// after the first then pairs the wrong way, and no grammar parses it. Detection starts
/// after the line that closes the docstring.
fn after_open_docstring(code: &str) -> &str {
    for quotes in ["\"\"\"", "'''"] {
        if code.matches(quotes).count() % 2 == 1 {
            if let Some(at) = code.find(quotes) {
                let rest = &code[at + 3..];
                let next_line = rest.find('\n').map_or(rest.len(), |i| i + 1);
                let rest = &rest[next_line..];
                if !rest.trim().is_empty() {
                    return rest;
                }
            }
        }
    }
    code
}

/// The first `max` bytes of `s`, cut at a line end when possible.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    match s[..end].rfind('\n') {
        Some(nl) if nl > 0 => &s[..nl],
        _ => &s[..end],
    }
}

/// Removes the indentation common to all non-blank lines.
pub fn dedent(s: &str) -> String {
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
        .min()
        .unwrap_or(0);
    s.lines()
        .map(|l| l.get(indent..).unwrap_or(l.trim_start_matches([' ', '\t'])))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Share of the code's tokens that tree-sitter could not place (tokens directly under an
/// ERROR node, and MISSING tokens). Counting tokens rather than bytes keeps one stray brace
/// at the start of a fragment from condemning everything that follows it.
pub fn error_rate(parser: &mut Parser, lang: Language, code: &str) -> f64 {
    parse_and_rate(parser, lang, code).0
}

/// [`error_rate`], with the tree it was measured on.
fn parse_and_rate(parser: &mut Parser, lang: Language, code: &str) -> (f64, Option<Tree>) {
    let code = &*lang.prepare_source(code);
    if parser.set_language(&lang.grammar()).is_err() || code.is_empty() {
        return (1.0, None);
    }
    let Some(tree) = parser.parse(code, None) else {
        return (1.0, None);
    };
    let (mut leaves, mut bad) = (0usize, 0usize);
    let mut stack: Vec<(Node, bool)> = vec![(tree.root_node(), false)];
    while let Some((node, under_error)) = stack.pop() {
        if node.child_count() == 0 {
            leaves += 1;
            if under_error || node.is_missing() || node.is_error() {
                bad += 1;
            }
            continue;
        }
        let is_error = node.is_error();
        let mut cursor = node.walk();
        stack.extend(node.children(&mut cursor).map(|c| (c, is_error)));
    }
    if leaves == 0 {
        return (1.0, Some(tree));
    }
    (bad as f64 / leaves as f64, Some(tree))
}

/// For a block whose fence names `tagged`: the language it really is when the tagged
/// grammar cannot parse it (a share of misplaced tokens above 0.2) and detection finds
/// another. A wrong tag (Python under ```javascript) must not hide code from the rules
/// of its real language.
pub fn mislabelled(parser: &mut Parser, tagged: Language, code: &str) -> Option<Language> {
    let sample = dedent(prefix(code, 1536));
    if error_rate(parser, tagged, &sample) <= 0.2 {
        return None;
    }
    detect(code).filter(|&d| d != tagged)
}

/// Language of unlabelled code, or None when it does not look like code. The textual
/// signals shortlist up to three candidates; tree-sitter decides by error rate.
pub fn detect(code: &str) -> Option<Language> {
    detect_with_tree(code).map(|(l, _)| l)
}

/// [`detect`], and when the parsed sample was the whole code (short, not indented, not cut
/// from a docstring), the winning grammar's tree of it, so that the scan need not parse the
/// same text again. The tree is of `code` without its trailing newlines.
pub fn detect_with_tree(code: &str) -> Option<(Language, Option<Tree>)> {
    // Fragments cut from the middle of a file keep their indentation, which alone makes
    // indentation-sensitive grammars fail; a prefix is enough to decide.
    let sample = dedent(prefix(after_open_docstring(code), 1536));
    let whole = sample == code.trim_end_matches('\n');
    let code = sample.as_str();
    let scores = signal_scores(code);
    let score_of = |l: Language| scores.iter().find(|(x, _)| *x == l).map_or(0, |(_, s)| *s);
    let mut candidates: Vec<Language> = scores
        .iter()
        .filter(|(_, s)| *s >= 2)
        .take(3)
        .map(|(l, _)| *l)
        .collect();
    // Weak signals (fragments of a function, say): let the grammars of the common
    // languages compete too.
    if scores.first().map_or(0, |(_, s)| *s) < 8 {
        for l in [
            Language::Python,
            Language::Javascript,
            Language::Java,
            Language::C,
            Language::Cpp,
            Language::Csharp,
            Language::Php,
            Language::Rust,
            Language::Go,
        ] {
            if candidates.len() >= 4 {
                break;
            }
            if !candidates.contains(&l) {
                candidates.push(l);
            }
        }
    }
    let mut parser = Parser::new();
    let mut best: Option<(Language, f64, f64)> = None;
    let mut best_tree: Option<Tree> = None;
    for lang in candidates {
        let score = score_of(lang);
        // A grammar that placed every token would score `-0.02 * score`: when that cannot
        // beat the best so far (ties keep the earlier one), the parse is skipped. The result
        // is the same as parsing every candidate.
        let best_possible = -0.02 * f64::from(score.min(40));
        if best.is_some_and(|(_, p, _)| p <= best_possible) {
            continue;
        }
        let (rate, tree) = parse_and_rate(&mut parser, lang, code);
        // Signals lower the penalty: among grammars that parse about as well, the one the
        // text looks like wins.
        let penalty = rate - 0.02 * f64::from(score.min(40));
        if best.is_none_or(|(_, p, _)| penalty < p) {
            best = Some((lang, penalty, rate));
            best_tree = tree;
        }
    }
    best.filter(|&(l, _, rate)| rate < 0.5 && (score_of(l) >= 2 || rate < 0.05))
        .map(|(l, _, _)| (l, best_tree.filter(|_| whole)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_tags_and_the_html_around_them_are_blanked_for_the_parser() {
        let template = "<p>hi</p>\n<?php echo md5($x); ?>\n<b>x</b>";
        let prepared = Language::Php.prepare_source(template);
        assert_eq!(prepared.len(), template.len());
        assert_eq!(prepared, "         \n      echo md5($x);   \n        ");
        // A snippet cut mid-PHP: the text before its first `?>` is code.
        let cut = "$a = 1;\n?>\n<i>t</i>";
        assert!(Language::Php.prepare_source(cut).starts_with("$a = 1;\n"));
        // `?>` inside a string or a comment is no tag.
        let quoted = "$x = '<?xml version=\"1.0\"?>';\n// ends with ?>\n$y = md5($x);";
        assert_eq!(
            Language::Php.prepare_source(quoted),
            quoted.replace("<?", "  ")
        );
        assert_eq!(
            Language::Javascript.prepare_source("a ?> b"),
            "a ?> b",
            "PHP only"
        );
    }

    #[test]
    fn aliases() {
        assert_eq!(Language::from_alias("py"), Some(Language::Python));
        assert_eq!(Language::from_alias("C++"), Some(Language::Cpp));
        assert_eq!(Language::from_alias("cs"), Some(Language::Csharp));
        assert_eq!(Language::from_alias("sh"), Some(Language::Bash));
        assert_eq!(Language::from_alias("rust,ignore"), Some(Language::Rust));
        assert_eq!(
            Language::from_alias("python title=x.py"),
            Some(Language::Python)
        );
        assert_eq!(Language::from_alias("text"), None);
    }

    #[test]
    fn detects_common_languages() {
        let cases = [
            ("import os\n\ndef run(cmd):\n    os.system(cmd)\n", Language::Python),
            ("#include <stdio.h>\nint main(void) {\n  char buf[8];\n  strcpy(buf, argv[1]);\n  return 0;\n}\n", Language::C),
            ("#include <iostream>\nint main() {\n  std::cout << \"hi\";\n}\n", Language::Cpp),
            ("fn main() {\n    let mut v = Vec::new();\n    v.push(1);\n}\n", Language::Rust),
            ("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tx := 1\n\tfmt.Println(x)\n}\n", Language::Go),
            ("public class A {\n  public static void main(String[] args) {\n    System.out.println(1);\n  }\n}\n", Language::Java),
            ("const fs = require('fs');\nfunction f(x) {\n  return fs.readFileSync(x);\n}\n", Language::Javascript),
            ("<?php\n$name = $_GET['name'];\necho $name;\n", Language::Php),
            ("using System;\nnamespace A {\n  class B {\n    public static void Main() { Console.WriteLine(1); }\n  }\n}\n", Language::Csharp),
            // A C++ fragment written mostly in C's vocabulary: one `new T[...]` decides.
            ("    if (w > 0 && h > 0) {\n        memset(src, 0, sizeof(double) * n);\n        *dest = new double[w * h];\n        if (dest == NULL) return -1;\n    }\n", Language::Cpp),
            // A Python fragment cut from inside a docstring.
            ("    Perform a curl to etcd, returning the JSON decoded response. It doesn't retry:\n    a caller that wants retries (and most do) wraps it.\n    :param path:  The key path to query\n    :param options:  Additional options to include in the curl\n    :param recursive:  Whether we want a recursive query or not\n    :return:  The JSON decoded response.\n    \"\"\"\n    url = BASE + path\n    out = check_output(['curl', '-s', url])\n    return json.loads(out)\n", Language::Python),
            // The same fragment in C stays C.
            ("    if (w > 0 && h > 0) {\n        memset(src, 0, sizeof(double) * n);\n        *dest = malloc(sizeof(double) * w * h);\n        if (dest == NULL) return -1;\n    }\n", Language::C),
        ];
        for (code, want) in cases {
            assert_eq!(detect(code), Some(want), "{code}");
        }
    }

    #[test]
    fn prose_is_not_code() {
        assert_eq!(
            detect("The capital of France is Paris. It is a lovely city."),
            None
        );
    }
}
