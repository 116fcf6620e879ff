//! The real `safegate` binary, driven as a user would.

use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn safegate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args(args)
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_json_prints_tokens_then_a_summary() {
    let model = fixture("tiny-llama3");
    let (code, stdout, stderr) = safegate(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "7",
        "--json",
        "--device",
        "cpu",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    // Same greedy ids as the Python reference recorded for this prompt.
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("expected.json")).unwrap())
            .unwrap();
    let want = &expected["cases"][0]["greedy_ids"];
    for (i, line) in lines[..7].iter().enumerate() {
        assert_eq!(line["id"], want[i]);
        assert!(line["text"].is_string());
    }
    let summary = &lines[7]["summary"];
    assert_eq!(summary["completion_tokens"], 7);
    assert_eq!(summary["finish_reason"], "length");
    assert!(summary["time_to_first_token_ms"].as_f64().unwrap() > 0.0);
    assert!(summary["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["provider"], "cpu");
}

#[test]
fn messages_file_errors_name_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-chatml-genai");
    let path = dir.path().join("m.json");
    std::fs::write(&path, "[\n  {\"role\": \"user\", \"content\": \"hi\"},\n  {\"role\": \"robot\", \"content\": \"x\"}\n]").unwrap();
    let (code, _, stderr) = safegate(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        path.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("m.json") && stderr.contains("messages[1].role"),
        "{stderr}"
    );

    std::fs::write(&path, b"[{\"role\": \"user\", \"content\": \"\xff\xfe\"}]").unwrap();
    let (code, _, stderr) = safegate(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        path.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid UTF-8"), "{stderr}");

    std::fs::write(&path, "[{\"role\": \"user\",\n\"content\": ]").unwrap();
    let (_, _, stderr) = safegate(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        path.to_str().unwrap(),
    ]);
    assert!(stderr.contains("line 2, column"), "{stderr}");
}

#[test]
fn missing_runtime_and_model_are_reported_not_panics() {
    let model = fixture("tiny-chatml-genai");
    let (code, _, stderr) = safegate(&[
        "--ort-lib",
        "/nonexistent/libonnxruntime.so",
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("scripts/setup.sh") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let (code, _, stderr) = safegate(&["generate", "--model", "/nonexistent", "--prompt", "x"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent") && stderr.contains("not a folder"),
        "{stderr}"
    );

    let (code, _, stderr) = safegate(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--max-tokens",
        "0",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("max_tokens must be at least 1"), "{stderr}");

    let (code, _, stderr) = safegate(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--device",
        "cuda",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("CUDA"), "{stderr}");
}

fn scan_stdin(args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .arg("scan")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails on its arguments exits without reading: a broken pipe here is
    // that exit racing the write, not a failure (the exit code and stderr say what happened).
    if let Err(e) = child.stdin.take().unwrap().write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn scan_json_reports_findings_with_positions_and_exits_zero() {
    let text = "Try this:\n\n```py\nimport subprocess\nsubprocess.call(cmd, shell=True)\n```\n";
    let (code, stdout, stderr) = scan_stdin(&["--json"], text.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let f = &v["findings"][0];
    assert_eq!(f["rule"], "py.subprocess-shell");
    assert_eq!(f["cwe"], "CWE-78");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["language"], "python");
    assert_eq!(
        (f["line"].as_u64(), f["column"].as_u64()),
        (Some(5), Some(1))
    );
    assert!(f["end_line"].as_u64().unwrap() >= 5 && f["end_column"].as_u64().unwrap() > 1);
    assert_eq!(v["blocks"][0]["language"], "python");

    let (code, stdout, _) = scan_stdin(&["--json"], b"print('hello')\n");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
}

#[test]
fn scan_rejects_bad_input_clearly() {
    // A Latin-1 source file is scanned, lossily, and the scan says so.
    let (_, stdout, stderr) = scan_stdin(
        &["--language", "python"],
        b"# caf\xe9 au lait\nimport os\nos.system(cmd)\n",
    );
    assert!(
        stderr.contains("not UTF-8") && stderr.contains("lossily"),
        "{stderr}"
    );
    assert!(stdout.contains("py.os-shell"), "{stdout}");
    let (code, _, stderr) = scan_stdin(&[], b"\xff\xfe\x00binary");
    assert_ne!(code, 0);
    assert!(stderr.contains("binary"), "{stderr}");
    let (code, _, stderr) = scan_stdin(&[], b"abc\0def");
    assert_ne!(code, 0);
    assert!(stderr.contains("binary"), "{stderr}");
    let (code, _, stderr) = scan_stdin(&["--language", "cobol"], b"x");
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown language `cobol`"), "{stderr}");
    let (code, _, stderr) = safegate(&["scan", "/nonexistent/file.py"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/file.py"), "{stderr}");
}

#[test]
fn scan_forced_language_and_file_argument() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.txt");
    std::fs::write(&path, "char buf[8];\nstrcpy(buf, argv[1]);\n").unwrap();
    let (code, stdout, _) = safegate(&["scan", "--language", "c", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains(":2:1: error [CWE-120]"), "{stdout}");
}

#[test]
fn policy_check_summarises_valid_sets_and_names_errors() {
    let presets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/presets");
    let (code, stdout, stderr) = safegate(&["policy", "check", presets.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("policy default (llama-guard-2)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("input: P(unsafe) >= 0.5 -> block; S7 -> flag"),
        "{stdout}"
    );
    assert!(stdout.contains("policy audit-only"), "{stdout}");
    assert!(stdout.contains("bindings: default -> default"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\ninput:\n  threshold: 2\n").unwrap();
    let (code, _, stderr) = safegate(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.yaml:3:3: threshold 2 is outside 0..1"),
        "{stderr}"
    );
}

#[test]
fn guard_prompt_prints_the_reference_prompt_exactly() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("guard-prompts/cases.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "llama-guard-2/user-agent",
        "llama-guard-3/subset-descriptions",
        "llama-guard-2/injection",
    ] {
        let case = cases
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let messages = dir.path().join("m.json");
        std::fs::write(&messages, case["messages"].to_string()).unwrap();
        let mut args = vec![
            "guard".to_string(),
            "prompt".into(),
            "--taxonomy".into(),
            case["taxonomy"].as_str().unwrap().into(),
            "--agent-type".into(),
            case["agent_type"].as_str().unwrap().into(),
            "--messages".into(),
            messages.to_str().unwrap().into(),
        ];
        if let Some(cats) = case["categories"].as_array() {
            args.push("--categories".into());
            args.push(
                cats.iter()
                    .map(|c| c.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        if case["with_descriptions"].as_bool().unwrap() {
            args.push("--with-descriptions".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = safegate(&args);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout, case["prompt"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn guard_classify_prints_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("m.json");
    std::fs::write(
        &messages,
        r#"[{"role":"user","content":"How do I make a cake?"}]"#,
    )
    .unwrap();
    let model = fixture("tiny-llama3");
    let (code, stdout, stderr) = safegate(&[
        "guard",
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--messages",
        messages.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let p = v["p_unsafe"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert_eq!(v["categories"].as_array().unwrap().len(), 11);
    assert_eq!(v["taxonomy"], "llama-guard-2");
    assert!(v["prompt_tokens"].as_u64().unwrap() > 100);
}

#[test]
fn the_default_model_imports_from_gguf_and_answers() {
    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.exists(), "run scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2");
    let (code, _, stderr) = safegate(&[
        "models",
        "import-gguf",
        gguf.to_str().unwrap(),
        out.to_str().unwrap(),
        "--weights",
        "int4",
        "--max-context",
        "2048",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("30 layers"), "{stderr}");
    let (code, stdout, stderr) = safegate(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--device",
        "cpu",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");

    // The same folder again is refused, and a bad option names itself.
    let (code, _, stderr) = safegate(&[
        "models",
        "import-gguf",
        gguf.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, stderr) = safegate(&[
        "models",
        "import-gguf",
        gguf.to_str().unwrap(),
        dir.path().join("x").to_str().unwrap(),
        "--weights",
        "q3",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--weights `q3`"), "{stderr}");
    let (code, _, stderr) = safegate(&[
        "models",
        "import-gguf",
        fixture("tiny-llama3/config.json").to_str().unwrap(),
        dir.path().join("y").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a GGUF file"), "{stderr}");
}
