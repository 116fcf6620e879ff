//! Property tests: any policy that validates never makes `decide` panic, and a policy
//! written back out and read again makes the same decisions.

use proptest::prelude::*;
use safegate_policies::{decide, parse_policy, Policy, Stage, Verdict};
use safegate_shield::{Finding, Language, Severity, Shield};

fn action() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["allow", "log", "flag", "block"])
}

fn severity_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["none", "advice", "warning", "error"])
}

prop_compose! {
    fn policy_yaml()(
        taxonomy in prop::sample::select(vec!["llama-guard-2", "llama-guard-3"]),
        t_in in 0.0f64..=1.0, t_out in 0.0f64..=1.0,
        cat_t in prop::collection::btree_map(1u32..=11, 0.0f64..=1.0, 0..4),
        cat_a in prop::collection::btree_map(1u32..=11, action(), 0..4),
        disabled in prop::collection::btree_set(1u32..=11, 0..4),
        a_in in action(), a_out in action(),
        block in severity_level(), warn in severity_level(),
        customs in 0usize..3,
    ) -> String {
        let mut y = format!("name: p\ntaxonomy: {taxonomy}\n");
        y += "categories:\n";
        for c in &disabled { y += &format!("  S{c}: {{ enabled: false }}\n"); }
        if disabled.is_empty() { y += "  S1: { enabled: true }\n"; }
        y += "custom_categories:\n";
        for i in 0..customs { y += &format!("  - {{ name: custom{i} }}\n"); }
        if customs == 0 { y = y.replace("custom_categories:\n", ""); }
        for (stage, t, a) in [("input", t_in, a_in), ("output", t_out, a_out)] {
            y += &format!("{stage}:\n  threshold: {t}\n  action: {a}\n  category_thresholds:\n");
            for (c, v) in &cat_t { y += &format!("    S{c}: {v}\n"); }
            if cat_t.is_empty() { y += "    S1: 0.5\n"; }
            y += "  category_actions:\n";
            for (c, v) in &cat_a { y += &format!("    S{c}: {v}\n"); }
            if cat_a.is_empty() { y += "    S1: block\n"; }
        }
        y += &format!("shield:\n  block_severity: {block}\n  warn_severity: {warn}\n");
        y
    }
}

prop_compose! {
    fn verdict()(
        p in prop_oneof![0.0f64..=1.0, Just(f64::NAN), Just(0.5)],
        scores in prop::collection::btree_map(1u32..=16, 0.0f64..=1.0, 0..5),
        codes in prop::collection::vec(1u32..=16, 0..3),
    ) -> Verdict {
        Verdict {
            taxonomy: None,
            p_unsafe: p,
            category_scores: scores.into_iter().map(|(c, s)| (format!("S{c}"), s)).collect(),
            codes: codes.into_iter().map(|c| format!("S{c}")).collect(),
        }
    }
}

fn findings(n: usize) -> Vec<Finding> {
    let sev = [Severity::Advice, Severity::Warning, Severity::Error];
    (0..n)
        .map(|i| Finding {
            rule: "py.os-shell".into(),
            cwe: "CWE-78".into(),
            severity: sev[i % 3],
            message: String::new(),
            language: Some(Language::Python),
            line: 1,
            column: 1,
            end_line: 1,
            end_column: 2,
            start_byte: 0,
            end_byte: 1,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn valid_policies_decide_without_panicking_and_round_trip(yaml in policy_yaml(), v in verdict(), n in 0usize..4) {
        let shield = Shield::embedded();
        // The generator writes only valid policies (codes S1..S11 exist in both
        // taxonomies): every case must parse, so every case is checked.
        let p: Policy = match parse_policy("p.yaml", &yaml, shield) {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("a valid policy was refused: {e}\n{yaml}"))),
        };
        let written = serde_norway::to_string(&p).unwrap();
        let again = parse_policy("again.yaml", &written, shield).unwrap();
        prop_assert_eq!(&p, &again);
        let f = findings(n);
        for stage in [Stage::Input, Stage::Output] {
            let d1 = decide(&p, stage, Some(&v), &f);
            let d2 = decide(&again, stage, Some(&v), &f);
            prop_assert_eq!(d1.action, d2.action);
            prop_assert_eq!(d1.reasons.len(), d2.reasons.len());
        }
    }
}
