//! `safegate policy check`: validates a set of policy files and prints what it means.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use safegate_policies::{Action, Policy, PolicySet};
use safegate_shield::Shield;

use crate::cli::PolicyCommand;

/// Reads the files (a folder: its .yaml/.yml files, sorted) as (name, text).
pub fn read_policy_files(paths: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read folder {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            entries.sort();
            for e in entries {
                out.push(read_one(&e)?);
            }
        } else {
            out.push(read_one(path)?);
        }
    }
    Ok(out)
}

fn read_one(path: &Path) -> Result<(String, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}:1:1: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok((path.display().to_string(), text))
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Log => "log",
        Action::Flag => "flag",
        Action::Block => "block",
    }
}

fn summary(p: &Policy) -> String {
    let mut s = format!("policy {} ({})\n", p.name, p.taxonomy);
    let enabled: Vec<&str> = p
        .taxonomy
        .codes()
        .filter(|c| p.category_enabled(c))
        .collect();
    let disabled: Vec<&str> = p
        .taxonomy
        .codes()
        .filter(|c| !p.category_enabled(c))
        .collect();
    s += &format!("  categories enabled: {}\n", enabled.join(" "));
    if !disabled.is_empty() {
        s += &format!("  categories disabled: {}\n", disabled.join(" "));
    }
    for (code, c) in p.custom_codes().iter().zip(&p.custom_categories) {
        s += &format!("  custom {code}: {}\n", c.name);
    }
    for (name, st) in [("input", &p.input), ("output", &p.output)] {
        if !st.enabled {
            s += &format!("  {name}: guard off\n");
            continue;
        }
        s += &format!(
            "  {name}: P(unsafe) >= {} -> {}",
            st.threshold,
            action(st.action)
        );
        for (c, t) in &st.category_thresholds {
            s += &format!("; {c} >= {t}");
        }
        for (c, a) in &st.category_actions {
            s += &format!("; {c} -> {}", action(*a));
        }
        s += &format!("; timeout {} ms\n", st.timeout_ms);
    }
    s += &format!(
        "  streaming: re-score every {} tokens, hold back {}, release while P(unsafe) < {}\n",
        p.streaming.rescore_every_tokens,
        p.streaming.hold_back_tokens,
        p.release_threshold()
    );
    let sh = &p.shield;
    if sh.enabled {
        s += &format!(
            "  shield: block at {:?}, warn at {:?}",
            sh.block_severity, sh.warn_severity
        )
        .to_lowercase();
        if !sh.languages.is_empty() {
            let l: Vec<&str> = sh.languages.iter().map(|l| l.name()).collect();
            s += &format!("; languages {}", l.join(" "));
        }
        if !sh.disabled_rules.is_empty() {
            s += &format!("; rules off: {}", sh.disabled_rules.join(" "));
        }
        s += "\n";
    } else {
        s += "  shield: off\n";
    }
    let pa = &p.prompt_attack;
    if pa.enabled {
        s += &format!(
            "  prompt attacks: {} at P >= {} in {} turns\n",
            pa.action.as_str(),
            pa.threshold,
            pa.judge.join(" and ")
        );
    } else {
        s += "  prompt attacks: off\n";
    }
    let t = &p.tools;
    if !t.allow.is_empty() || !t.deny.is_empty() || !t.code.is_empty() {
        s += &format!(
            "  tools: allow {}; deny {}; code {}; {} others\n",
            if t.allow.is_empty() {
                "any".to_string()
            } else {
                t.allow.join(" ")
            },
            if t.deny.is_empty() {
                "none".to_string()
            } else {
                t.deny.join(" ")
            },
            if t.code.is_empty() {
                "none".to_string()
            } else {
                t.code.join(" ")
            },
            t.action.as_str()
        );
    }
    s += &format!(
        "  on error: {}\n",
        if p.on_error == safegate_policies::OnError::FailClosed {
            "fail closed"
        } else {
            "fail open"
        }
    );
    s
}

pub fn run(cmd: &PolicyCommand) -> Result<()> {
    let PolicyCommand::Check { files } = cmd;
    let texts = read_policy_files(files)?;
    let set = PolicySet::from_files(&texts, Shield::embedded()).map_err(|e| anyhow!("{e}"))?;
    for p in set.policies.values() {
        print!("{}", summary(p));
    }
    print!("bindings: default -> {}", set.bindings.default);
    for (g, p) in &set.bindings.groups {
        print!("; {g} -> {p}");
    }
    println!();
    eprintln!("{} policies valid", set.policies.len());
    Ok(())
}
