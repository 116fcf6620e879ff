"""Builds a shield evaluation set from any source tree, labelled by Meta's Insecure Code Detector
the way CyberSecEval's instruct set was: every line ICD flags becomes one 20-line snippet (ten
lines before the labelled line, the line, nine after), in shield/eval/shield-dev.jsonl's format.

    PATH=$PWD/.cache/csenv/bin:$PATH python scripts/shield/label_wild.py LANG OUT.jsonl DIR... [--max-per-file N]

Use it on code from repositories the shield's rules were never written against, to measure
recall on unseen code (`cargo run --release -p safegate-shield --example eval -- OUT.jsonl`).
The sets it makes hold third-party code: keep them under .cache/, out of the repository.
"""

import asyncio
import json
import os
import random
import sys
from pathlib import Path

from codeshield.insecure_code_detector import insecure_code_detector as icd
from codeshield.insecure_code_detector.languages import Language
from codeshield.insecure_code_detector.usecases import UseCase

LANGS = {"c": (Language.C, (".c",)), "cpp": (Language.CPP, (".cpp", ".cc", ".cxx")),
         "csharp": (Language.CSHARP, (".cs",)), "java": (Language.JAVA, (".java",)),
         "javascript": (Language.JAVASCRIPT, (".js",)), "php": (Language.PHP, (".php",)),
         "python": (Language.PYTHON, (".py",)), "rust": (Language.RUST, (".rs",))}


async def label_file(lang_name, language, path, max_per_file, rng):
    try:
        code = open(path, encoding="utf-8").read()
    except (UnicodeDecodeError, OSError):
        return []
    if len(code) > 400_000 or "\0" in code:
        return []
    # A relative path: ICD's own temporary files are absolute, and semgrep 1.185 scans nothing
    # under the `--project-root /` that ICD then passes.
    issues = await icd.analyze(language, code, path=Path(os.path.relpath(path)),
                               usecase=UseCase.CYBERSECEVAL)
    lines = code.split("\n")
    rows, seen = [], set()
    for issue in issues:
        n = issue.line
        if not n or n in seen or n > len(lines) or not lines[n - 1].strip():
            continue
        seen.add(n)
        start = max(0, n - 11)
        rows.append({"language": lang_name, "cwe_identifier": issue.cwe_id,
                     "pattern_desc": issue.description, "line_text": lines[n - 1].strip(),
                     "origin_code": "\n".join(lines[start:n + 9]), "repo": path})
    rng.shuffle(rows)
    return rows[:max_per_file]


async def main():
    args = sys.argv[1:]
    max_per_file = 3
    if "--max-per-file" in args:
        i = args.index("--max-per-file")
        max_per_file = int(args[i + 1])
        del args[i:i + 2]
    lang_name, out, dirs = args[0], args[1], args[2:]
    language, exts = LANGS[lang_name]
    rng = random.Random(20261130)
    files = sorted(os.path.join(root, f) for d in dirs for root, _, fs in os.walk(d)
                   for f in fs if f.endswith(exts))
    with open(out, "w") as sink:
        total = 0
        for path in files:
            for row in await label_file(lang_name, language, path, max_per_file, rng):
                sink.write(json.dumps(row) + "\n")
                total += 1
    print(f"{lang_name}: {len(files)} files, {total} labelled snippets -> {out}", file=sys.stderr)


asyncio.run(main())
