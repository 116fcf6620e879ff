//! The scanner as a user of the library sees it: code found in markdown, positions in the
//! original text, streaming equal to one-shot scanning, limits and options.

use safegate_shield::{
    BlockKind, Finding, Language, LanguageSource, ScanOptions, Shield, ShieldError, StreamScanner,
};

const ANSWER: &str = "Sure! Here is a script:\n\n```python\nimport os\n\ndef run(name):\n    os.system(\"convert \" + name)\n```\n\nAnd the C version:\n\n```c\nvoid f(char *s) {\n  char buf[16];\n  strcpy(buf, s);\n}\n```\nDone.\n";

#[test]
fn findings_point_into_the_original_text() {
    let report = Shield::embedded()
        .scan(ANSWER, &ScanOptions::default())
        .unwrap();
    assert_eq!(report.blocks.len(), 2);
    assert_eq!(report.blocks[0].language, Some(Language::Python));
    assert_eq!(report.blocks[0].language_source, LanguageSource::FenceTag);
    assert_eq!(
        (report.blocks[0].start_line, report.blocks[0].end_line),
        (4, 7)
    );
    let os = report
        .findings
        .iter()
        .find(|f| f.rule == "py.os-shell")
        .expect("os.system found");
    assert_eq!((os.line, os.column), (7, 5));
    assert_eq!(
        &ANSWER.lines().nth(6).unwrap()[os.column - 1..os.column + 8],
        "os.system"
    );
    let strcpy = report
        .findings
        .iter()
        .find(|f| f.rule == "c.unbounded-string-copy")
        .unwrap();
    assert_eq!((strcpy.line, strcpy.column), (15, 3));
    assert!(report
        .findings
        .iter()
        .any(|f| f.rule == "c.stack-buffer-copy" && f.line == 14));
    assert_eq!(os.cwe, "CWE-78");
}

#[test]
fn streaming_reports_each_block_when_it_closes_and_equals_one_shot() {
    let shield = Shield::embedded();
    let one_shot = shield.scan(ANSWER, &ScanOptions::default()).unwrap();
    let mut stream = StreamScanner::new(shield, ScanOptions::default());
    let close_of_first = ANSWER.find("```\n\nAnd").unwrap();
    let mut seen_before_close = 0;
    let mut seen_at = None;
    for (i, ch) in ANSWER.char_indices() {
        let new = stream.push(&ch.to_string()).unwrap();
        if i < close_of_first {
            seen_before_close += new.len();
        }
        if !new.is_empty() && seen_at.is_none() {
            seen_at = Some(i);
        }
    }
    let report = stream.finish().unwrap();
    assert_eq!(
        seen_before_close, 0,
        "nothing is reported before the block closes"
    );
    assert_eq!(
        seen_at,
        Some(close_of_first + 3),
        "reported as soon as the closing fence line ends"
    );
    assert_eq!(report.findings, one_shot.findings);
}

/// Code without a fence is code too: streamed a character at a time, no byte of an unfenced
/// run of code is released before the run has ended and been scanned, an insecure line is
/// never released, and the final report equals the one-shot scan of the same text, with
/// or without a fence elsewhere in the reply.
#[test]
fn unfenced_code_is_held_until_scanned_and_streaming_equals_one_shot() {
    let shield = Shield::embedded();
    let script = "import os\nimport sys\n\ndef clean(path):\n    os.system(\"rm -rf \" + path)\n\nclean(sys.argv[1])\n";
    let fenced = "```python\nprint('hello')\n```\n";
    for text in [
        format!("Here is the script you asked for.\n{script}That is all you need to run.\n"),
        script.to_string(),
        format!("First a warm-up:\n{fenced}Then the real one.\n{script}Run it as root.\n"),
    ] {
        let insecure = text.find("os.system").unwrap();
        let run_start = text.find("import os").unwrap();
        let one_shot = shield.scan(&text, &ScanOptions::default()).unwrap();
        assert!(
            one_shot.findings.iter().any(|f| f.rule == "py.os-shell"),
            "one-shot misses the unfenced os.system in {text:?}: {:?}",
            one_shot.findings
        );
        let mut stream = StreamScanner::new(shield, ScanOptions::default());
        for (i, ch) in text.char_indices() {
            stream.push(&ch.to_string()).unwrap();
            let released = stream.unscanned_from();
            assert!(
                released <= insecure,
                "released up to {released} with the insecure line at {insecure}, after byte {i} of {text:?}"
            );
            if i >= run_start {
                // The run has findings: held from its start until the end.
                assert!(
                    released <= run_start,
                    "code released before the end: {released} after byte {i} of {text:?}"
                );
            }
        }
        let report = stream.finish().unwrap();
        assert_eq!(report.findings, one_shot.findings, "{text:?}");
    }
    // Verse is prose: lines ending in commas go out as they complete.
    let poem = "In the heart of the night, a moon that shines,\nA moment of purest beauty, a moment of peace,\n";
    let mut stream = StreamScanner::new(shield, ScanOptions::default());
    stream.push(poem).unwrap();
    assert_eq!(stream.unscanned_from(), poem.len());
    // A run without findings is released once it has ended (prose after it).
    let text = "Sure.\nx = 1\ny = x + 2\nprint(y)\nThat prints three, as expected.\n";
    let mut stream = StreamScanner::new(shield, ScanOptions::default());
    stream.push(text).unwrap();
    assert_eq!(stream.unscanned_from(), text.len());
}

#[test]
fn an_unclosed_fence_is_scanned_at_the_end() {
    let text = "```js\nconst cp = require('child_process');\ncp.exec('rm -rf ' + dir);";
    let report = Shield::embedded()
        .scan(text, &ScanOptions::default())
        .unwrap();
    assert!(report
        .findings
        .iter()
        .any(|f| f.rule == "js.child-process" && f.line == 3));
}

#[test]
fn unfenced_code_is_detected_and_scanned() {
    let text = "import pickle\n\ndef load(blob):\n    return pickle.loads(blob)\n";
    let report = Shield::embedded()
        .scan(text, &ScanOptions::default())
        .unwrap();
    assert_eq!(report.blocks[0].kind, BlockKind::Whole);
    assert_eq!(report.blocks[0].language, Some(Language::Python));
    assert!(report
        .findings
        .iter()
        .any(|f| f.rule == "py.unsafe-deserialization" && f.line == 4));
}

#[test]
fn prose_mentioning_dangerous_functions_is_not_flagged() {
    let text = "Avoid strcpy and os.system in your code; prefer bounded copies and subprocess with a list.";
    let report = Shield::embedded()
        .scan(text, &ScanOptions::default())
        .unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn comments_do_not_trigger_rules() {
    let code = "# os.system(cmd) would be unsafe here\nsubprocess.run([\"ls\", d])\n";
    let report = Shield::embedded()
        .scan(
            code,
            &ScanOptions {
                language: Some(Language::Python),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn the_language_can_be_forced_and_rules_disabled() {
    let code = "eval(user_input)";
    let shield = Shield::embedded();
    let as_js = shield
        .scan(
            code,
            &ScanOptions {
                language: Some(Language::Javascript),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(as_js.findings.iter().any(|f| f.rule == "js.eval"));
    let disabled = ScanOptions {
        language: Some(Language::Javascript),
        disabled_rules: vec!["js.eval".into()],
        ..Default::default()
    };
    assert!(shield.scan(code, &disabled).unwrap().findings.is_empty());
    let only_python = ScanOptions {
        languages: vec![Language::Python],
        ..Default::default()
    };
    let text = "```js\neval(user_input)\n```\n";
    assert!(shield.scan(text, &only_python).unwrap().findings.is_empty());
}

#[test]
fn secrets_are_found_in_prose_too() {
    let text = "Use the key AKIAIOSFODNN7EXAMPLE with your account.";
    let report = Shield::embedded()
        .scan(text, &ScanOptions::default())
        .unwrap();
    assert!(report
        .findings
        .iter()
        .any(|f| f.rule == "secret.aws-access-key"));
}

#[test]
fn oversized_input_is_refused() {
    let options = ScanOptions {
        max_bytes: 1000,
        ..Default::default()
    };
    let err = Shield::embedded()
        .scan(&"x".repeat(1001), &options)
        .unwrap_err();
    assert!(matches!(
        err,
        ShieldError::TooLarge {
            size: 1001,
            limit: 1000
        }
    ));
}

#[test]
fn pathological_input_finishes() {
    // Deep nesting and a long line: the parser's time budget and the regex engines' limits
    // keep this bounded; the regex rules still run.
    let deep = format!(
        "x = {}1{}\nos.system(cmd)\n",
        "(".repeat(50_000),
        ")".repeat(50_000)
    );
    let report = Shield::embedded()
        .scan(
            &deep,
            &ScanOptions {
                language: Some(Language::Python),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(report.findings.iter().any(|f| f.rule == "py.os-shell"));
    let long_line = "a".repeat(200_000);
    Shield::embedded()
        .scan(&long_line, &ScanOptions::default())
        .unwrap();
}

#[test]
fn indented_blocks_after_prose_are_code() {
    let text = "Run this:\n\n    import yaml\n    cfg = yaml.load(open(p))\n\nThat is all.\n";
    let report = Shield::embedded()
        .scan(text, &ScanOptions::default())
        .unwrap();
    let f = report
        .findings
        .iter()
        .find(|f| f.rule == "py.yaml-load")
        .expect("found");
    // The finding starts at its statement (`cfg = ...`), in the text's columns: the block
    // was dedented for parsing.
    assert_eq!((f.line, f.column), (4, 5));
    assert_eq!((f.end_line, f.end_column), (4, 20));
}

#[test]
fn code_of_an_open_block_is_never_marked_releasable_before_it_is_scanned() {
    let shield = Shield::embedded();
    let findings = shield
        .scan(ANSWER, &ScanOptions::default())
        .unwrap()
        .findings;
    assert!(!findings.is_empty());
    let mut stream = StreamScanner::new(shield, ScanOptions::default());
    let mut reported = Vec::new();
    for ch in ANSWER.chars() {
        reported.extend(stream.push(&ch.to_string()).unwrap());
        let from = stream.unscanned_from();
        assert!(from <= stream.text().len());
        for f in &findings {
            let seen = reported.iter().any(|r| r.start_byte == f.start_byte);
            assert!(
                seen || from <= f.start_byte,
                "{} at byte {} releasable (up to {from}) before it was reported",
                f.rule,
                f.start_byte
            );
        }
    }
    // Prose outside blocks is released as it arrives.
    let mut prose = StreamScanner::new(shield, ScanOptions::default());
    prose
        .push("Here is a long sentence without a line break")
        .unwrap();
    assert_eq!(prose.unscanned_from(), prose.text().len());
    prose.push("\n``").unwrap();
    assert!(
        prose.unscanned_from() < prose.text().len(),
        "a possible fence is held"
    );
}

/// Ways a response can try to slip code past the shield.
#[test]
fn evasions_are_still_scanned() {
    let rules = |text: &str| -> Vec<String> {
        Shield::embedded()
            .scan(text, &ScanOptions::default())
            .unwrap()
            .findings
            .iter()
            .map(|f| format!("{}@{}", f.rule, f.line))
            .collect()
    };
    // The import in one block, the call in the next.
    let split =
        "First:\n```python\nimport os\n```\nthen:\n```python\nos.system(\"ping \" + host)\n```\n";
    assert_eq!(rules(split), ["py.os-shell@7"]);
    // No fences at all.
    let bare = "import os\nimport sys\n\nhost = sys.argv[1]\nos.system(\"ping -c 1 \" + host)\n";
    assert_eq!(rules(bare), ["py.os-shell@5"]);
    // A wrong fence tag.
    let mislabelled = "```javascript\nimport os\nimport sys\nhost = sys.argv[1]\nos.system(\"ping -c 1 \" + host)\n```\n";
    assert_eq!(rules(mislabelled), ["py.os-shell@5"]);
    let text_tag = "```text\nimport subprocess\ncmd = \"rm -rf \" + path\nsubprocess.call(cmd, shell=True)\n```\n";
    assert_eq!(rules(text_tag), ["py.subprocess-shell@4"]);
    // A shell command built up by concatenation before the call.
    let concat = "```python\nimport subprocess\nbase = \"tar czf backup.tgz \"\ncmd = base + user_dir\nsubprocess.Popen(cmd, shell=True)\n```\n";
    assert_eq!(rules(concat), ["py.subprocess-shell@5"]);
    let js = "```js\nconst { exec } = require('child_process');\nconst cmd = 'ls ' + req.query.dir;\nexec(cmd);\n```\n";
    assert_eq!(rules(js), ["js.child-process@4"]);
    // A correct tag is not second-guessed.
    let right = "```javascript\nconst x = require('fs');\nx.readFileSync(p);\n```\n";
    let report = Shield::embedded()
        .scan(right, &ScanOptions::default())
        .unwrap();
    assert!(report
        .findings
        .iter()
        .all(|f| f.language == Some(Language::Javascript)));
}

#[test]
fn a_fragment_cut_inside_a_string_is_still_scanned() {
    // The fragment opens mid-literal: every quote after it pairs the wrong way, and the
    // parser sees the code below as the inside of strings (with parse errors).
    let fragment = "9704}}\"#, test_pool_ip);\n\nfn write_file(name: &str) -> String {\n    let out = std::process::Command::new(\"sh\").arg(\"-c\").arg(format!(\"cat {}\", name)).output().unwrap();\n    String::from_utf8(out.stdout).unwrap()\n}\n";
    let options = ScanOptions {
        language: Some(Language::Rust),
        ..Default::default()
    };
    let report = Shield::embedded().scan(fragment, &options).unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.rule == "rust.command-from-input" && f.line == 4),
        "{:?}",
        report.findings
    );
    // A well-formed file keeps the rule: text inside a real string literal is not code.
    let quoted = "fn main() {\n    let doc = \"\n    Command::new(\\\"sh\\\").arg(\\\"-c\\\").arg(format!(\\\"x {}\\\", y))\n    \";\n    println!(\"{doc}\");\n}\n";
    let report = Shield::embedded().scan(quoted, &options).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// Findings of a one-shot scan, with the language forced or (None) detected.
fn scan_as(text: &str, language: Option<&str>) -> Vec<Finding> {
    let options = ScanOptions {
        language: language.map(|l| l.parse().unwrap()),
        ..Default::default()
    };
    Shield::embedded().scan(text, &options).unwrap().findings
}

fn first_of(findings: &[Finding], rule: &str) -> Finding {
    findings
        .iter()
        .find(|f| f.rule == rule)
        .cloned()
        .unwrap_or_else(|| panic!("{rule} not found"))
}

#[test]
fn findings_start_at_their_statement_or_attribute_run() {
    // The formatted SQL is on the line after the call: the finding starts at the call.
    let py = "def save(cur, book):\n    cur.execute(\n        'DELETE FROM t WHERE id = %d' % book.id)\n";
    let sql = first_of(&scan_as(py, Some("python")), "py.sql-injection");
    assert_eq!((sql.line, sql.column), (2, 5));
    assert_eq!(sql.end_line, 3);
    // An action's attributes are one unit: the finding on [HttpPost] starts at the first.
    let cs = "        [AllowAnonymous]\n        [Route(\"Register\")]\n        [HttpPost]\n        public IActionResult Register(UserModel m)\n        {\n";
    let csrf = first_of(&scan_as(cs, Some("csharp")), "cs.csrf-missing-antiforgery");
    assert_eq!((csrf.line, csrf.column, csrf.end_line), (1, 9, 3));
    // A statement that starts far above the match (a long chain) keeps the finding on the
    // match's own line.
    let long = format!(
        "x = (builder\n{}     .run(eval(data)))\n",
        "     .step()\n".repeat(8)
    );
    let eval = first_of(&scan_as(&long, Some("python")), "py.eval-exec");
    assert_eq!(eval.line, 10);
}

#[test]
fn detected_language_scans_find_what_forced_ones_do() {
    // Detection's parse is reused for short unindented code; indented code is parsed again.
    let samples = [
        ("import os, subprocess\n\ndef run(cmd):\n    os.system(cmd)\n    subprocess.call(cmd, shell=True)\n", "python"),
        ("    import yaml\n    cfg = yaml.load(open(p))\n    eval(cfg['expr'])\n", "python"),
        ("#include <string.h>\nvoid f(const char *s) {\n  char buf[16];\n  strcpy(buf, s);\n  printf(s);\n}\n", "c"),
    ];
    for (code, language) in samples {
        let positions = |language: Option<&str>| {
            let mut found: Vec<(String, usize, usize, usize, usize)> = scan_as(code, language)
                .iter()
                .map(|f| (f.rule.clone(), f.line, f.column, f.end_line, f.end_column))
                .collect();
            found.sort();
            found
        };
        let (detected, forced) = (positions(None), positions(Some(language)));
        assert!(!forced.is_empty(), "{code}");
        assert_eq!(detected, forced, "{code}");
    }
}
