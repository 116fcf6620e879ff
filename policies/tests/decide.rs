//! Table-driven tests of the decision function, boundaries included.

use std::collections::BTreeMap;

use safegate_policies::{decide, parse_policy, Action, Policy, Reason, Stage, Verdict};
use safegate_shield::{Finding, Language, Severity, Shield};

fn policy(yaml: &str) -> Policy {
    parse_policy("test.yaml", yaml, Shield::embedded()).unwrap_or_else(|e| panic!("{e}"))
}

fn verdict(p: f64, scores: &[(&str, f64)], codes: &[&str]) -> Verdict {
    Verdict {
        taxonomy: None,
        p_unsafe: p,
        category_scores: scores
            .iter()
            .map(|(c, s)| (c.to_string(), *s))
            .collect::<BTreeMap<_, _>>(),
        codes: codes.iter().map(|c| c.to_string()).collect(),
    }
}

fn finding(rule: &str, severity: Severity, language: Language) -> Finding {
    Finding {
        rule: rule.into(),
        cwe: "CWE-78".into(),
        severity,
        message: "m".into(),
        language: Some(language),
        line: 3,
        column: 1,
        end_line: 3,
        end_column: 9,
        start_byte: 0,
        end_byte: 0,
    }
}

const BASE: &str = "
name: t
input:
  threshold: 0.5
  category_thresholds: { S4: 0.1 }
  category_actions: { S7: flag, S6: log }
categories:
  S11: { enabled: false }
shield:
  block_severity: error
  warn_severity: warning
  disabled_rules: [py.weak-hash]
";

#[test]
fn guard_decisions_table() {
    let p = policy(BASE);
    // (case, verdict, expected action)
    let cases: Vec<(&str, Verdict, Action)> = vec![
        ("safe", verdict(0.1, &[], &[]), Action::Allow),
        (
            "exactly at the stage threshold, no categories",
            verdict(0.5, &[], &[]),
            Action::Block,
        ),
        (
            "just below the threshold",
            verdict(0.4999, &[], &[]),
            Action::Allow,
        ),
        (
            "category over its threshold",
            verdict(0.9, &[("S1", 0.8)], &[]),
            Action::Block,
        ),
        (
            "category exactly at the stage threshold",
            verdict(0.2, &[("S1", 0.5)], &[]),
            Action::Block,
        ),
        (
            "strict category threshold below the stage's",
            verdict(0.2, &[("S4", 0.1)], &[]),
            Action::Block,
        ),
        (
            "strict category just below",
            verdict(0.2, &[("S4", 0.0999)], &[]),
            Action::Allow,
        ),
        (
            "category action flag",
            verdict(0.9, &[("S7", 0.9)], &[]),
            Action::Flag,
        ),
        (
            "category action log",
            verdict(0.9, &[("S6", 0.9)], &[]),
            Action::Log,
        ),
        (
            "worst action wins",
            verdict(0.9, &[("S7", 0.9), ("S1", 0.6)], &[]),
            Action::Block,
        ),
        (
            "disabled category reported by the model",
            verdict(0.95, &[("S11", 0.95)], &[]),
            Action::Allow,
        ),
        (
            "unsafe, categories spread thin: the likeliest decides",
            verdict(0.9, &[("S1", 0.3), ("S2", 0.25)], &[]),
            Action::Block,
        ),
        (
            "unsafe, likeliest is disabled",
            verdict(0.9, &[("S11", 0.4), ("S1", 0.2)], &[]),
            Action::Allow,
        ),
        (
            "decoded code without scores",
            verdict(0.8, &[], &["S7"]),
            Action::Flag,
        ),
        (
            "unknown code only: the stage action",
            verdict(0.8, &[], &["S99"]),
            Action::Block,
        ),
        (
            "unknown code, safe overall",
            verdict(0.1, &[], &["S99"]),
            Action::Allow,
        ),
        (
            "NaN fails closed",
            verdict(f64::NAN, &[], &[]),
            Action::Block,
        ),
    ];
    for (name, v, want) in cases {
        let d = decide(&p, Stage::Input, Some(&v), &[]);
        assert_eq!(d.action, want, "{name}: {:?}", d.reasons);
        assert_eq!(d.message.is_some(), want == Action::Block, "{name}");
    }
}

#[test]
fn reasons_say_why() {
    let p = policy(BASE);
    let d = decide(
        &p,
        Stage::Input,
        Some(&verdict(0.95, &[("S11", 0.95), ("S42", 0.9)], &[])),
        &[],
    );
    assert_eq!(d.action, Action::Allow);
    assert!(d.reasons.contains(&Reason::DisabledCategory {
        code: "S11".into(),
        score: 0.95
    }));
    assert!(d
        .reasons
        .contains(&Reason::UnknownCategory { code: "S42".into() }));
    let d = decide(
        &p,
        Stage::Input,
        Some(&verdict(0.9, &[("S1", 0.8)], &[])),
        &[],
    );
    match &d.reasons[0] {
        Reason::Category {
            code,
            name,
            score,
            threshold,
            action,
        } => {
            assert_eq!(
                (code.as_str(), name.as_deref(), *score, *threshold, *action),
                ("S1", Some("Violent Crimes"), 0.8, 0.5, Action::Block)
            );
        }
        other => panic!("{other:?}"),
    }
    // Unsafe overall, no category over the threshold: the reason names the score that
    // crossed (P(unsafe) against the stage threshold) and the likeliest category with its
    // own, lower score; never a category score presented as if it had crossed.
    let d = decide(
        &p,
        Stage::Input,
        Some(&verdict(0.7, &[("S9", 0.136), ("S1", 0.1)], &[])),
        &[],
    );
    assert_eq!(d.action, Action::Block);
    assert_eq!(
        d.reasons,
        vec![Reason::Unsafe {
            p_unsafe: 0.7,
            threshold: 0.5,
            action: Action::Block,
            top_category: Some("S9".into()),
            name: Some("Hate".into()),
            top_category_score: Some(0.136),
        }]
    );
    assert!(!d
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::Category { score, threshold, .. } if score < threshold)));
}

#[test]
fn stages_are_independent() {
    let p =
        policy("name: t\ninput: { threshold: 0.9 }\noutput: { threshold: 0.2, action: flag }\n");
    let v = verdict(0.5, &[], &[]);
    assert_eq!(
        decide(&p, Stage::Input, Some(&v), &[]).action,
        Action::Allow
    );
    assert_eq!(
        decide(&p, Stage::Output, Some(&v), &[]).action,
        Action::Flag
    );
    let off = policy("name: t\noutput: { enabled: false }\n");
    assert_eq!(
        decide(&off, Stage::Output, Some(&verdict(1.0, &[], &[])), &[]).action,
        Action::Allow
    );
}

#[test]
fn shield_decisions_table() {
    let p = policy(BASE);
    let cases: Vec<(&str, Vec<Finding>, Action, bool)> = vec![
        ("no findings", vec![], Action::Allow, false),
        (
            "error blocks",
            vec![finding("py.os-shell", Severity::Error, Language::Python)],
            Action::Block,
            false,
        ),
        (
            "warning warns with a note",
            vec![finding("py.yaml-load", Severity::Warning, Language::Python)],
            Action::Flag,
            true,
        ),
        (
            "advice below warn level",
            vec![finding("rust.temp-dir", Severity::Advice, Language::Rust)],
            Action::Allow,
            false,
        ),
        (
            "disabled rule",
            vec![finding("py.weak-hash", Severity::Warning, Language::Python)],
            Action::Allow,
            false,
        ),
        (
            "block beats warn, no note",
            vec![
                finding("py.yaml-load", Severity::Warning, Language::Python),
                finding("py.os-shell", Severity::Error, Language::Python),
            ],
            Action::Block,
            false,
        ),
    ];
    for (name, findings, want, note) in cases {
        let d = decide(&p, Stage::Output, None, &findings);
        assert_eq!(d.action, want, "{name}");
        assert_eq!(d.note.is_some(), note, "{name}");
    }
    let only_c = policy("name: t\nshield: { languages: [c] }\n");
    assert_eq!(
        decide(
            &only_c,
            Stage::Output,
            None,
            &[finding("py.os-shell", Severity::Error, Language::Python)]
        )
        .action,
        Action::Allow
    );
    let off = policy("name: t\nshield: { enabled: false }\n");
    assert_eq!(
        decide(
            &off,
            Stage::Output,
            None,
            &[finding("py.os-shell", Severity::Error, Language::Python)]
        )
        .action,
        Action::Allow
    );
}

#[test]
fn custom_categories_are_numbered_after_the_builtin_ones() {
    let p = policy("name: t\ncustom_categories:\n  - name: Competitors\n    description: Mentions of competitors\ninput: { category_actions: { S12: flag } }\n");
    assert_eq!(p.custom_codes(), vec!["S12".to_string()]);
    assert_eq!(
        decide(
            &p,
            Stage::Input,
            Some(&verdict(0.9, &[("S12", 0.9)], &[])),
            &[]
        )
        .action,
        Action::Flag
    );
}

#[test]
fn a_prompt_attack_escalates_the_input_decision_at_its_threshold() {
    let p = policy("name: p\nprompt_attack: { threshold: 0.6, action: block }\n");
    let calm = verdict(0.01, &[], &[]);
    let mut d = decide(&p, Stage::Input, Some(&calm), &[]);
    d.apply_prompt_attack(&p, Some(0.59));
    assert_eq!(d.action, Action::Allow);
    d.apply_prompt_attack(&p, None);
    assert_eq!(d.action, Action::Allow);
    d.apply_prompt_attack(&p, Some(0.6));
    assert_eq!(
        d.action,
        Action::Block,
        "a score exactly at the threshold counts"
    );
    assert!(d.message.as_deref().unwrap().contains("override"));
    assert!(matches!(
        d.reasons.last(),
        Some(Reason::PromptAttack { score, threshold, action: Action::Block }) if *score == 0.6 && *threshold == 0.6
    ));
    // A flag never weakens a block the guard already made.
    let p = policy("name: p\nprompt_attack: { action: flag }\n");
    let mut d = decide(
        &p,
        Stage::Input,
        Some(&verdict(0.99, &[("S1", 0.9)], &[])),
        &[],
    );
    assert_eq!(d.action, Action::Block);
    d.apply_prompt_attack(&p, Some(0.99));
    assert_eq!(d.action, Action::Block);
    // Off: nothing happens.
    let p = policy("name: p\nprompt_attack: { enabled: false }\n");
    let mut d = decide(&p, Stage::Input, Some(&calm), &[]);
    d.apply_prompt_attack(&p, Some(1.0));
    assert_eq!(d.action, Action::Allow);
    assert!(d.reasons.is_empty());
}

#[test]
fn tools_the_policy_lists() {
    let p = policy("name: p\ntools: { allow: [a, b], deny: [b] }\n");
    assert!(p.tools.allows("a"));
    assert!(!p.tools.allows("b"), "deny wins");
    assert!(!p.tools.allows("c"), "not in allow");
    let p = policy("name: p\n");
    assert!(p.tools.allows("anything"));
    assert_eq!(p.tools.action, Action::Block);
}
