//! deploy/: alert rules (promtool), the Grafana dashboard and the alerts against a live
//! /metrics scrape, Kubernetes manifests against the Kubernetes schemas, and the config and
//! policies the manifests carry against safegate itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let rules = deploy("prometheus/alerts.yaml");
    let out = run_ok("promtool", &["check", "rules", rules.to_str().unwrap()]);
    assert!(out.contains("SUCCESS: 9 rules found"), "{out}");
    run_ok(
        "promtool",
        &[
            "test",
            "rules",
            deploy("prometheus/alerts_test.yaml").to_str().unwrap(),
        ],
    );
}

/// Metric names (histogram series reduced to their family) in PromQL expressions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("safegate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if family.len() > "safegate_".len() {
            names.push(family.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    // Traffic that makes every family appear: an input guard that flags, generation, an
    // output guard that times out (fail_open), shield findings, a policy reload.
    let policies = policy_dir(
        "name: default\ninput: { threshold: 0.0, action: flag }\noutput: { timeout_ms: 1 }\non_error: fail_open\n",
    );
    let admin_key = policies.path().join("admin.key");
    std::fs::write(&admin_key, "admin-secret\n").unwrap();
    // Upstream models: one that is down (a retry, then its fallback answers).
    let answering = serve_raw(|_, _| Some(sse_response(&[delta("Hello")])));
    let config = policies.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"down\"\nupstream = \"http://127.0.0.1:{}/v1\"\nretries = 1\nretry_backoff_ms = 10\nfallbacks = [\"up\"]\n\n\
             [[models]]\nname = \"up\"\nupstream = \"{answering}/v1\"\n",
            free_port()
        ),
    )
    .unwrap();
    let s = start_guarded(
        &policies,
        &[
            "--admin-key-file",
            admin_key.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "down", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            .to_string(),
    );
    assert_eq!(code, 200, "{v}");
    post(
        &s.base,
        "/v1/shield/scan",
        r#"{"text": "eval(x)", "language": "python"}"#,
    );
    ureq::post(&format!("{}/admin/policies/reload", s.base))
        .set("authorization", "Bearer admin-secret")
        .call()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let scrape = metrics(&s.base);
    let exported: Vec<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/safegate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yaml")).unwrap();
    queried.extend(metric_names(&rules));
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<_> = queried
        .iter()
        .filter(|m| !exported.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{scrape}"
    );
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let validator =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "run scripts/setup.sh (it installs kubernetes-validate)"
    );
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["k8s/base", "k8s/overlays/gpu"] {
        for entry in std::fs::read_dir(deploy(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // Kustomizations and the Prometheus Operator's CRD have no Kubernetes schema.
            if name != "kustomization.yaml" && name != "servicemonitor.yaml" {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 9, "{files:?}");
    let args: Vec<&str> = std::iter::once("--strict")
        .chain(files.iter().map(|f| f.to_str().unwrap()))
        .collect();
    run_ok(validator.to_str().unwrap(), &args);
    // The kustomizations as kubectl renders them: kubectl is required (the CI machine has
    // it); a missing kubectl fails here rather than skipping the GPU overlay's checks.
    let kubectl = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output();
    assert!(
        kubectl.is_ok_and(|o| o.status.success()),
        "kubectl is needed to render the kustomizations (https://kubernetes.io/docs/tasks/tools/)"
    );
    {
        let dir = tempfile::tempdir().unwrap();
        for overlay in ["k8s/base", "k8s/overlays/gpu"] {
            let out = Command::new("kubectl")
                .args(["kustomize", deploy(overlay).to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rendered = String::from_utf8(out.stdout).unwrap();
            // Replicas share their limits on the Redis beside them, and audit to stdout.
            assert!(rendered.contains("name: safegate-redis"), "{overlay}");
            assert!(rendered.contains("audit_log = \"stdout\""), "{overlay}");
            if overlay.ends_with("gpu") {
                assert!(
                    rendered.contains("nvidia.com/gpu: 1")
                        && rendered.contains("image: safegate:cuda")
                );
                assert!(
                    rendered.contains("readOnlyRootFilesystem: true"),
                    "base settings kept"
                );
            }
            let file = dir.path().join(overlay.replace('/', "-") + ".yaml");
            std::fs::write(&file, rendered).unwrap();
            run_ok(
                validator.to_str().unwrap(),
                &["--strict", file.to_str().unwrap()],
            );
        }
    }
    // The validator does catch mistakes.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(deploy("k8s/base/deployment.yaml"))
        .unwrap()
        .replace("replicas: 2", "replicas: two");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(&validator)
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Every resource the kustomizations name exists.
    for dir in ["k8s/base", "k8s/overlays/gpu"] {
        let k = std::fs::read_to_string(deploy(dir).join("kustomization.yaml")).unwrap();
        for line in k.lines() {
            let item = line
                .trim()
                .trim_start_matches("- ")
                .trim_start_matches("path: ");
            if item.ends_with(".yaml") || item.starts_with("../") {
                assert!(deploy(dir).join(item).exists(), "{dir}: {item}");
            }
        }
    }
}

/// The policies in the ConfigMap and the config in the Secret are ones safegate accepts.
#[test]
fn the_manifests_policies_and_config_are_accepted_by_safegate() {
    let dir = tempfile::tempdir().unwrap();
    let extract = |manifest: &str, key: &str, to: &Path| {
        let text = std::fs::read_to_string(deploy(manifest)).unwrap();
        let at = text.find(&format!("  {key}: |")).expect(key);
        let body: Vec<&str> = text[at..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
            .map(|l| l.get(4..).unwrap_or(""))
            .collect();
        std::fs::write(to, body.join("\n") + "\n").unwrap();
    };
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for key in ["default.yaml", "code-assistant.yaml", "bindings.yaml"] {
        extract("k8s/base/configmap.yaml", key, &policies.join(key));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_safegate"))
        .args(["policy", "check", policies.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.path().join("safegate.toml");
    extract("k8s/base/secret.yaml", "safegate.toml", &config);
    let s = start(&[
        "--config",
        config.to_str().unwrap(),
        "--policies",
        policies.to_str().unwrap(),
        "--audit-log",
        "off",
    ]);
    let models = ureq::get(&format!("{}/v1/models", s.base))
        .set("authorization", "Bearer sg-demo-key-change-me")
        .call()
        .unwrap()
        .into_json::<Value>()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "llama-3-8b-instruct", "{models}");
    // Compose: every file it mounts exists.
    let compose = std::fs::read_to_string(deploy("compose/compose.yaml")).unwrap();
    for line in compose
        .lines()
        .filter(|l| l.trim_start().starts_with("- ./") || l.trim_start().starts_with("- ../"))
    {
        let path = line
            .trim()
            .trim_start_matches("- ")
            .split(':')
            .next()
            .unwrap();
        // models/ is made by scripts/run.sh (the imported default model), as the file says.
        if path.ends_with("/models") {
            continue;
        }
        assert!(
            deploy("compose").join(path).exists(),
            "compose mounts {path}"
        );
    }
}

/// Every script and data file the README and docs/ name is in the repository, nothing they
/// or the scripts run reads from outside it, and every download setup.sh makes is pinned.
#[test]
fn documented_commands_use_files_of_the_repository_and_pinned_downloads() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut docs = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        docs.push(e.unwrap().path());
    }
    let mut named = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for (i, _) in text.match_indices("scripts/") {
            // `scripts/dir/name.sh` (or .py) as written in a command.
            if i > 0 && text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '/' || c == '.') {
                continue;
            }
            let path: String = text[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || "/_.-".contains(*c))
                .collect();
            let path = path.trim_end_matches('.');
            if path.ends_with(".sh") || path.ends_with(".py") {
                assert!(
                    root.join(path).is_file(),
                    "{} names {path}, which is missing",
                    doc.display()
                );
                named += 1;
            }
        }
        assert!(
            !text.contains("../shared/eval"),
            "{} points outside the repository",
            doc.display()
        );
    }
    assert!(named > 10, "only {named} script paths found");
    for dir in ["scripts/shield", "scripts/gpu", "scripts/bench"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                !text.contains("../shared/"),
                "{} reads outside the repository",
                p.display()
            );
        }
    }
    let setup = std::fs::read_to_string(root.join("scripts/setup.sh")).unwrap();
    let sums: Vec<&str> = setup
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ORT_SUM="))
        .collect();
    assert_eq!(sums.len(), 2, "{sums:?}");
    for s in sums {
        assert!(
            s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
            "unpinned: {s}"
        );
    }
    assert!(root.join("shield/eval/shield-dev.jsonl").is_file());
}
