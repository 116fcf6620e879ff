//! The small contracts the gateway relies on: label names, defaults, boundaries and
//! messages (each written to kill a mutant `cargo mutants -p safegate-policies` found
//! surviving).

use std::collections::BTreeMap;

use safegate_policies::{
    decide, parse_policy, Action, OnError, Policy, PolicyError, PolicyErrors, Reason, Stage,
    Verdict,
};
use safegate_shield::Shield;

fn policy(yaml: &str) -> Policy {
    parse_policy("test.yaml", yaml, Shield::embedded()).unwrap_or_else(|e| panic!("{e}"))
}

fn verdict(p: f64, scores: &[(&str, f64)]) -> Verdict {
    Verdict {
        taxonomy: None,
        p_unsafe: p,
        category_scores: scores
            .iter()
            .map(|(c, s)| (c.to_string(), *s))
            .collect::<BTreeMap<_, _>>(),
        codes: Vec::new(),
    }
}

#[test]
fn label_names_are_the_policy_file_names() {
    for a in [Action::Allow, Action::Log, Action::Flag, Action::Block] {
        assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
    }
    for o in [OnError::FailClosed, OnError::FailOpen] {
        assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
    }
    for s in [Stage::Input, Stage::Output] {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
}

#[test]
fn blocked_means_the_block_action() {
    let p = policy("name: p\ninput: { threshold: 0.5, action: block }\noutput: { threshold: 0.5, action: flag }\n");
    let v = verdict(0.9, &[]);
    assert!(decide(&p, Stage::Input, Some(&v), &[]).blocked());
    let flagged = decide(&p, Stage::Output, Some(&v), &[]);
    assert_eq!(flagged.action, Action::Flag);
    assert!(!flagged.blocked());
    assert!(!decide(&p, Stage::Input, Some(&verdict(0.1, &[])), &[]).blocked());
}

#[test]
fn a_disabled_category_is_reported_only_when_it_would_have_counted() {
    let p = policy("name: p\ncategories:\n  S1: { enabled: false }\ninput: { threshold: 0.5 }\n");
    let disabled = |v: &Verdict| {
        decide(&p, Stage::Input, Some(v), &[])
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::DisabledCategory { code, .. } if code == "S1"))
    };
    // Its own score over the threshold, overall safe: reported (and not acted on).
    assert!(disabled(&verdict(0.1, &[("S1", 0.9)])));
    // Overall unsafe, its own score low: reported (it might be why).
    assert!(disabled(&verdict(0.9, &[("S1", 0.1)])));
    // Neither: not reported.
    assert!(!disabled(&verdict(0.1, &[("S1", 0.1)])));
}

#[test]
fn category_settings_default_to_enabled() {
    let p = policy("name: p\ncategories:\n  S1: {}\n");
    assert!(p.category_enabled("S1"));
}

#[test]
fn the_release_threshold_defaults_to_half_the_block_threshold_and_may_equal_it() {
    assert_eq!(
        policy("name: p\noutput: { threshold: 0.6 }\n").release_threshold(),
        0.3
    );
    let p = policy("name: p\noutput: { threshold: 0.6 }\nstreaming: { release_threshold: 0.2 }\n");
    assert_eq!(p.release_threshold(), 0.2);
    // Equal to the block threshold: allowed; above it: refused.
    policy("name: p\noutput: { threshold: 0.6 }\nstreaming: { release_threshold: 0.6 }\n");
    let e = parse_policy(
        "t.yaml",
        "name: p\noutput: { threshold: 0.6 }\nstreaming: { release_threshold: 0.7 }\n",
        Shield::embedded(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("release_threshold"), "{e}");
}

#[test]
fn several_errors_read_one_per_line() {
    let e = |line| PolicyError {
        file: "p.yaml".into(),
        line,
        column: 1,
        message: format!("problem {line}"),
    };
    let all = PolicyErrors(vec![e(1), e(2), e(3)]);
    assert_eq!(
        all.to_string(),
        "p.yaml:1:1: problem 1\np.yaml:2:1: problem 2\np.yaml:3:1: problem 3"
    );
    assert_eq!(
        PolicyErrors(vec![e(4)]).to_string(),
        "p.yaml:4:1: problem 4"
    );
}
