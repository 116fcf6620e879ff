//! Policy files: errors name the file, line and column; presets are valid; reload is
//! all-or-nothing.

use safegate_policies::{presets, Action, PolicySet, PolicyStore, Stage, Verdict};
use safegate_shield::Shield;

fn errors(yaml: &str) -> Vec<String> {
    match safegate_policies::parse_policy("p.yaml", yaml, Shield::embedded()) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn semantic_errors_point_at_the_offending_key() {
    let yaml = "name: t\ntaxonomy: llama-guard-2\ncategories:\n  S1: { enabled: true }\n  S14: { enabled: false }\ninput:\n  threshold: 1.5\n  category_thresholds:\n    S3: -0.1\nshield:\n  disabled_rules:\n    - py.os-shell\n    - no.such-rule\n";
    let e = errors(yaml);
    assert!(
        e.iter()
            .any(|m| m.starts_with("p.yaml:5:3: unknown category code `S14`")
                && m.contains("llama-guard-2")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("p.yaml:7:3: threshold 1.5 is outside 0..1")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("p.yaml:9:5: threshold -0.1 is outside 0..1")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("p.yaml:13:7: unknown shield rule id `no.such-rule`")),
        "{e:?}"
    );
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn llama_guard_3_codes_differ() {
    assert!(
        errors("name: t\ntaxonomy: llama-guard-3\ncategories: { S14: { enabled: false } }\n")
            .is_empty()
    );
    assert!(
        !errors("name: t\ntaxonomy: llama-guard-2\ncategories: { S14: { enabled: false } }\n")
            .is_empty()
    );
}

#[test]
fn type_and_syntax_errors_have_positions() {
    let e = errors("name: t\ninput:\n  action: destroy\n");
    assert!(e[0].starts_with("p.yaml:3:"), "{e:?}");
    assert!(e[0].contains("unknown variant `destroy`"), "{e:?}");
    let e = errors("name: t\ninput:\n  treshold: 0.5\n");
    assert!(
        e[0].starts_with("p.yaml:3:") && e[0].contains("unknown field `treshold`"),
        "{e:?}"
    );
    let e = errors("name: t\ninput: [unclosed\n");
    assert!(e[0].starts_with("p.yaml:"), "{e:?}");
    let e = errors("taxonomy: llama-guard-9\nname: x\n");
    assert!(e[0].starts_with("p.yaml:1:"), "{e:?}");
    let e = errors("name: t\nstreaming: { rescore_every_tokens: 0 }\n");
    assert!(
        e[0].contains("rescore_every_tokens must be at least 1"),
        "{e:?}"
    );
    // Releasing text scored above the block threshold would defeat the hold.
    let e = errors("name: t\noutput: { threshold: 0.4 }\nstreaming: { release_threshold: 0.6 }\n");
    assert!(
        e[0].starts_with("p.yaml:3:") && e[0].contains("above output.threshold"),
        "{e:?}"
    );
    let e = errors("name: t\nstreaming: { release_threshold: 1.5 }\n");
    assert!(e[0].contains("outside 0..1"), "{e:?}");
}

#[test]
fn presets_are_valid_and_behave_as_named() {
    let set = PolicySet::presets(Shield::embedded());
    assert_eq!(set.policies.len(), presets().len());
    let unsafe_v = Verdict {
        p_unsafe: 0.9,
        category_scores: [("S1".to_string(), 0.9)].into(),
        ..Default::default()
    };
    let decide = |name: &str| {
        safegate_policies::decide(&set.policies[name], Stage::Input, Some(&unsafe_v), &[]).action
    };
    assert_eq!(decide("default"), Action::Block);
    assert_eq!(decide("strict"), Action::Block);
    assert_eq!(decide("audit-only"), Action::Log);
    assert_eq!(decide("code-assistant"), Action::Block);
    assert_eq!(set.for_group(None).name, "default");
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn bindings_are_checked_against_the_set() {
    let shield = Shield::embedded();
    let ok = files(&[
        ("a.yaml", "name: base\n"),
        ("b.yaml", "name: tight\ninput: { threshold: 0.2 }\n"),
        (
            "bindings.yaml",
            "default: base\ngroups:\n  partners: tight\n",
        ),
    ]);
    let set = PolicySet::from_files(&ok, shield).unwrap();
    assert_eq!(set.for_group(Some("partners")).name, "tight");
    assert_eq!(set.for_group(Some("unknown-group")).name, "base");

    let bad = files(&[
        ("a.yaml", "name: base\n"),
        (
            "bindings.yaml",
            "default: base\ngroups:\n  partners: missing\n",
        ),
    ]);
    let e = PolicySet::from_files(&bad, shield).unwrap_err().to_string();
    assert!(
        e.contains("bindings.yaml:3:3: binding to unknown policy `missing`"),
        "{e}"
    );

    let dup = files(&[
        ("a.yaml", "name: base\n"),
        (
            "bindings.yaml",
            "default: base\ngroups:\n  p: base\n  p: base\n",
        ),
    ]);
    let e = PolicySet::from_files(&dup, shield).unwrap_err().to_string();
    assert!(
        e.contains("bindings.yaml:4:") && e.contains("duplicate"),
        "{e}"
    );

    let twice = files(&[("a.yaml", "name: default\n"), ("b.yaml", "name: default\n")]);
    let e = PolicySet::from_files(&twice, shield)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("b.yaml:1:1: duplicate policy name `default` (also defined in a.yaml)"),
        "{e}"
    );
}

#[test]
fn reload_is_all_or_nothing_and_in_flight_requests_keep_their_policy() {
    let shield = Shield::embedded();
    let store = PolicyStore::new(
        PolicySet::from_files(&files(&[("d.yaml", "name: default\n")]), shield).unwrap(),
    );
    let in_flight = store.current().for_group(None);
    assert_eq!(in_flight.input.threshold, 0.5);

    let invalid = files(&[("d.yaml", "name: default\ninput: { threshold: 7 }\n")]);
    assert!(store.reload(&invalid, shield).is_err());
    assert_eq!(
        store.current().version,
        1,
        "an invalid set is not put in force"
    );

    let v = store
        .reload(
            &files(&[("d.yaml", "name: default\ninput: { threshold: 0.2 }\n")]),
            shield,
        )
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(store.current().for_group(None).input.threshold, 0.2);
    assert_eq!(
        in_flight.input.threshold, 0.5,
        "a request keeps the policy it started with"
    );
}
