//! Languages the shield knows: names and fence aliases, tree-sitter grammars, and detection
//! of the language of unlabelled code.

use std::fmt;

use tree_sitter::{Node, Parser};

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
    /// PHP's open and close tags become spaces.
    pub fn prepare_source(self, code: &str) -> std::borrow::Cow<'_, str> {
        if self == Language::Php && (code.contains("<?") || code.contains("?>")) {
            let mut s = code
                .replace("<?php", "     ")
                .replace("<?=", "   ")
                .replace("?>", "  ");
            s = s.replace("<?", "  ");
            std::borrow::Cow::Owned(s)
        } else {
            std::borrow::Cow::Borrowed(code)
        }
    }
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
            (Language::Php, r"<\?php|\$_(GET|POST|REQUEST|SERVER|COOKIE|SESSION)\b", 6),
            (Language::Php, r"(?m)^\s*\$[a-zA-Z_]\w*\s*=|->\w+\(|\bfunction\s+\w+\s*\(\s*\$|\becho\s", 2),
            (Language::Python, r"(?m)^\s*(def\s+\w+\s*\(.*\)\s*(->.*)?:|class\s+\w+(\(.*\))?:|elif\s|from\s+[\w.]+\s+import\s|import\s+\w+(\s+as\s+\w+)?\s*$)", 4),
            (Language::Python, r"(?m):\s*$|\bself\.|\bNone\b|\bTrue\b|\bprint\(", 1),
            (Language::Rust, r"\bfn\s+\w+(<[^>]*>)?\s*\(|\blet\s+mut\s|\bimpl(<[^>]*>)?\s+\w|\buse\s+(std|crate|super)::|\bpub\s+(fn|struct|enum|mod)\b|\bmatch\s+\w+\s*\{|::new\(|println!", 3),
            (Language::Go, r"(?m)^package\s+\w+\s*$|\bfunc\s+(\([^)]*\)\s*)?\w+\s*\(|:=|\bfmt\.\w+\(|\bgo\s+func\b", 3),
            (Language::Java, r"\bpublic\s+(static\s+)?(final\s+)?(class|void|interface)\b|System\.out\.|\bimport\s+java\.|@Override|\bnew\s+\w+(<[^>]*>)?\(|\bString\[\]", 3),
            (Language::Kotlin, r"\bfun\s+\w+\s*\(|\bval\s+\w+\s*[:=]|\bvar\s+\w+\s*:|\bimport\s+kotlin\.", 3),
            (Language::Csharp, r"\busing\s+System(\.\w+)*;|\bnamespace\s+[\w.]+|\bpublic\s+(static\s+)?(async\s+)?\w+(<[^>]*>)?\s+\w+\s*\(|\bvar\s+\w+\s*=\s*new\b|\[\w+(\(.*\))?\]\s*$|Console\.Write|\bstring\s+\w+\s*=", 3),
            (Language::Javascript, r"\bfunction\s*\w*\s*\(|\bconst\s+\w+\s*=|\blet\s+\w+\s*=|=>|\brequire\(|\bconsole\.log\(|\bmodule\.exports\b|\bdocument\.|\bwindow\.", 2),
            (Language::Typescript, r":\s*(string|number|boolean|any|void)\b|\binterface\s+\w+\s*\{|\bimport\s+.*\s+from\s+['\x22]|\btype\s+\w+\s*=|\bexport\s+(default\s+)?(class|function|const|interface)", 2),
            (Language::C, r"(?m)^\s*#\s*(include|define|ifdef|ifndef|endif)\b|\b(malloc|free|printf|sprintf|strcpy|memcpy|sizeof)\s*\(|\bint\s+main\s*\(|\bchar\s*\*|->\w+", 2),
            (Language::Cpp, r"\bstd::|\btemplate\s*<|\bnamespace\s+\w+\s*\{|#include\s*<(iostream|vector|string|memory|map)>|\bcout\s*<<|\bnullptr\b|\bclass\s+\w+\s*(:\s*public\s+\w+)?\s*\{|::\w+\(", 3),
            (Language::Ruby, r"(?m)^\s*(def\s+\w+[?!]?(\(.*\))?\s*$|end\s*$|require\s+['\x22]|puts\s)|\bdo\s*\|\w+\||\.each\s+do\b", 3),
            (Language::Swift, r"\bfunc\s+\w+\s*\(.*\)\s*(->\s*\w+)?\s*\{|\blet\s+\w+\s*:\s*\w+|\bimport\s+(Foundation|UIKit|SwiftUI)\b|\bguard\s+let\b|\bvar\s+\w+\s*:\s*\w+", 3),
            (Language::Bash, r"(?m)^#!.*\b(ba|z|k)?sh\b|^\s*(echo|export|sudo|apt-get|curl|wget|chmod|cd|rm|mkdir)\s|\$\{?\w+\}?|\bfi\s*$|\bthen\s*$|\bdone\s*$", 2),
        ];
        raw.iter()
            .map(|(l, p, w)| (*l, regex::Regex::new(p).expect("signal regex"), *w))
            .collect()
    })
}

fn signal_scores(code: &str) -> Vec<(Language, i32)> {
    let mut scores: Vec<(Language, i32)> = ALL.iter().map(|&l| (l, 0)).collect();
    for (lang, re, weight) in signals() {
        let hits = re.find_iter(code).take(4).count() as i32;
        if hits > 0 {
            let slot = scores
                .iter_mut()
                .find(|(l, _)| l == lang)
                .expect("every language");
            slot.1 += weight * hits;
        }
    }
    scores.sort_by(|a, b| b.1.cmp(&a.1));
    scores
}

/// Share of the code's bytes that tree-sitter could not parse (ERROR or MISSING nodes).
pub fn error_rate(parser: &mut Parser, lang: Language, code: &str) -> f64 {
    let code = &*lang.prepare_source(code);
    if parser.set_language(&lang.grammar()).is_err() || code.is_empty() {
        return 1.0;
    }
    let Some(tree) = parser.parse(code, None) else {
        return 1.0;
    };
    let mut bad = 0usize;
    let mut stack: Vec<Node> = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.is_error() || node.is_missing() {
            bad += (node.end_byte() - node.start_byte()).max(1);
            continue;
        }
        if node.has_error() {
            let mut cursor = node.walk();
            stack.extend(node.children(&mut cursor));
        }
    }
    bad as f64 / code.len() as f64
}

/// Language of unlabelled code, or None when it does not look like code. The textual
/// signals shortlist up to three candidates; tree-sitter decides by error rate.
pub fn detect(code: &str) -> Option<Language> {
    let scores = signal_scores(code);
    let candidates: Vec<(Language, i32)> = scores
        .into_iter()
        .filter(|(_, s)| *s >= 2)
        .take(3)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let mut parser = Parser::new();
    let mut best: Option<(Language, f64)> = None;
    let top = candidates[0].1;
    for (lang, score) in candidates {
        let rate = error_rate(&mut parser, lang, code);
        // Weigh signals in: a weaker signal must parse clearly better to win.
        let penalty = rate + 0.02 * f64::from(top - score).min(10.0);
        if best.is_none_or(|(_, b)| penalty < b) {
            best = Some((lang, penalty));
        }
    }
    best.filter(|(_, p)| *p < 0.35).map(|(l, _)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

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
