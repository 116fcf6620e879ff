//! Every example of every rule: positives must be flagged by that rule, negatives must not.

use safegate_shield::rules::EMBEDDED;
use safegate_shield::{Language, ScanOptions, Shield};

#[test]
fn every_rule_example_behaves() {
    let shield = Shield::embedded();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (_, lang, rule) in shield.rules().map(|(l, r)| ((), l, r)) {
        let language = lang.or_else(|| rule.spec.languages.first().copied());
        let options = ScanOptions {
            language,
            ..Default::default()
        };
        for (expect, examples) in [(true, &rule.spec.positive), (false, &rule.spec.negative)] {
            for ex in examples {
                checked += 1;
                let report = shield.scan(ex, &options).unwrap();
                let hit = report.findings.iter().any(|f| f.rule == rule.spec.id);
                if hit != expect {
                    failures.push(format!(
                        "{} ({}): {} example not {}: {ex:?}",
                        rule.spec.id,
                        language.map_or("any", Language::name),
                        if expect { "positive" } else { "negative" },
                        if expect { "flagged" } else { "clean" }
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} examples failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 100, "only {checked} examples");
}

#[test]
fn packs_are_well_formed() {
    for pack in EMBEDDED {
        for lang in pack
            .languages
            .iter()
            .map(|l| Some(*l))
            .chain(pack.languages.is_empty().then_some(None))
        {
            safegate_shield::rules::compile_pack(pack.file, lang, pack.text)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
