"""Builds a shield evaluation set from any source tree, labelled by Meta's Insecure Code Detector
the way CyberSecEval's instruct set was: every line ICD flags becomes one 20-line snippet (ten
lines before the labelled line, the line, nine after), in shield/eval/shield-dev.jsonl's format.

    .cache/csenv/bin/python scripts/shield/label_wild.py LANG OUT.jsonl DIR... [--max-per-file N]

Use it on code from repositories the shield's rules were never written against, to measure
recall on unseen code (`cargo run --release -p safegate-shield --example eval -- OUT.jsonl`).
The sets it makes hold third-party code: keep them under .cache/, out of the repository.
"""

import json
import os
import random
import re
import subprocess
import sys
import tempfile

from codeshield.insecure_code_detector import insecure_code_detector as icd
from codeshield.insecure_code_detector import insecure_patterns, oss
from codeshield.insecure_code_detector.analyzers import Analyzer
from codeshield.insecure_code_detector.languages import Language
from codeshield.insecure_code_detector.usecases import UseCase

LANGS = {"c": (Language.C, (".c",)), "cpp": (Language.CPP, (".cpp", ".cc", ".cxx")),
         "csharp": (Language.CSHARP, (".cs",)), "java": (Language.JAVA, (".java",)),
         "javascript": (Language.JAVASCRIPT, (".js",)), "php": (Language.PHP, (".php",)),
         "python": (Language.PYTHON, (".py",)), "rust": (Language.RUST, (".rs",))}


STACK_COPY = re.compile(r"\b(?:memcpy|memmove|strcpy|strcat|sprintf)\s*\(\s*(?:\([^()]*\)\s*)?&?\s*([A-Za-z_]\w*)")


def labelled_line(issue, lines):
    """The line CyberSecEval's dataset labels. Its ICD put the stack-buffer-copy finding (CWE-121)
    on the buffer's declaration (all 29 such labels of the dev half); today's ICD puts it on
    the copy. Move it back up to the declaration, when there is one in the file."""
    n = issue.line
    if issue.cwe_id != "CWE-121" or not n or n > len(lines):
        return n
    m = STACK_COPY.search(lines[n - 1])
    if not m:
        return n
    decl = re.compile(r"^\s*[A-Za-z_][\w\s\*]*\b" + re.escape(m.group(1)) + r"\s*\[[^\]]+\]")
    for k in range(n - 1, 0, -1):
        if decl.search(lines[k - 1]):
            return k
    return n


def windows(lang_name, path, code, issues, max_per_file, rng):
    """One 20-line snippet per flagged line (ten lines before it, nine after)."""
    lines = code.split("\n")
    rows, seen = [], set()
    for issue in issues:
        n = labelled_line(issue, lines)
        if not n or n in seen or n > len(lines) or not lines[n - 1].strip():
            continue
        seen.add(n)
        start = max(0, n - 11)
        rows.append({"language": lang_name, "cwe_identifier": issue.cwe_id,
                     "pattern_desc": issue.description, "line_text": lines[n - 1].strip(),
                     "origin_code": "\n".join(lines[start:n + 9]), "repo": path})
    rng.shuffle(rows)
    return rows[:max_per_file]


def read_source(path):
    try:
        code = open(path, encoding="utf-8").read()
    except (UnicodeDecodeError, OSError):
        return None
    return None if len(code) > 400_000 or "\0" in code else code


def parseable_config(config):
    """The rule file without the rules this semgrep cannot parse (one bad rule fails them all:
    with semgrep 1.185, Java's ssrf_insecure_patterns)."""
    rules = json.load(open(config))["rules"]
    probe = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    probe.write("x\n")
    probe.close()
    while True:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as tmp:
            json.dump({"rules": rules}, tmp)
        out = subprocess.run(oss.SEMGREP_COMMAND + [tmp.name, os.path.relpath(probe.name)],
                             capture_output=True, text=True).stdout
        bad = {e.get("rule_id", "").rsplit(".", 1)[-1]
               for e in json.loads(out[out.find("{"):]).get("errors", [])
               if e.get("type") == "Rule parse error"}
        if not bad:
            return tmp.name
        print(f"dropping rules semgrep cannot parse: {sorted(bad)}", file=sys.stderr)
        rules = [r for r in rules if r["id"] not in bad]


def semgrep_issues(language, paths):
    """ICD's semgrep pass, run once per batch of files instead of once per file. Relative
    paths: semgrep 1.185 scans nothing under the `--project-root /` that ICD passes with the
    absolute paths of its temporary files."""
    if Analyzer.SEMGREP not in icd.LANGUAGE_ANALYZER_MAP.get(language, []):
        return {}
    config = parseable_config(
        oss.SEMGREP_RULE_REPO_PATH / "_generated_" / f"{language.value}_{UseCase.CYBERSECEVAL.value}.json")
    found = {}
    for i in range(0, len(paths), 200):
        batch = [os.path.relpath(p) for p in paths[i:i + 200]]
        out = subprocess.run(oss.SEMGREP_COMMAND + [str(config)] + batch,
                             capture_output=True, text=True).stdout
        for issue in icd._parse_semgrep_issues(out):
            found.setdefault(os.path.abspath(issue.path), []).append(issue)
    return found


def main():
    args = sys.argv[1:]
    max_per_file = 3
    if "--max-per-file" in args:
        i = args.index("--max-per-file")
        max_per_file = int(args[i + 1])
        del args[i:i + 2]
    lang_name, out, dirs = args[0], args[1], args[2:]
    language, exts = LANGS[lang_name]
    rng = random.Random(20261130)
    files = sorted(os.path.abspath(os.path.join(root, f)) for d in dirs for root, _, fs in os.walk(d)
                   for f in fs if f.endswith(exts))
    sources = {p: c for p in files if (c := read_source(p)) is not None}
    patterns = insecure_patterns.load(language, Analyzer.REGEX, UseCase.CYBERSECEVAL)
    from_semgrep = semgrep_issues(language, list(sources))
    total = 0
    with open(out, "w") as sink:
        for path, code in sources.items():
            issues = icd._run_regex(code, patterns) + from_semgrep.get(path, [])
            for row in windows(lang_name, path, code, issues, max_per_file, rng):
                sink.write(json.dumps(row) + "\n")
                total += 1
    print(f"{lang_name}: {len(sources)} files, {total} labelled snippets -> {out}", file=sys.stderr)


main()
