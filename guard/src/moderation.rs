//! OpenAI's 13 moderation categories from a Llama Guard verdict (for `/v1/moderations`):
//! each OpenAI category scores the highest of the Llama Guard categories that feed it. The
//! mapping is data: `guard/taxonomies/openai-moderation.json`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use safegate_verdict::{Taxonomy, Verdict};
use serde_json::Value;

fn table() -> &'static Value {
    static TABLE: OnceLock<Value> = OnceLock::new();
    TABLE.get_or_init(|| {
        serde_json::from_str(include_str!("../taxonomies/openai-moderation.json"))
            .expect("valid mapping (tested)")
    })
}

/// The 13 category names, in OpenAI's order.
pub fn openai_categories() -> Vec<&'static str> {
    table()["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// The OpenAI categories a taxonomy code feeds.
pub fn openai_targets(taxonomy: Taxonomy, code: &str) -> Vec<&'static str> {
    table()[taxonomy.name()][code]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Scores for all 13 OpenAI categories (0 where nothing feeds one).
pub fn openai_scores(taxonomy: Taxonomy, verdict: &Verdict) -> BTreeMap<&'static str, f64> {
    let mut out: BTreeMap<&'static str, f64> =
        openai_categories().into_iter().map(|c| (c, 0.0)).collect();
    for (code, score) in &verdict.category_scores {
        for target in openai_targets(taxonomy, code) {
            let slot = out.entry(target).or_insert(0.0);
            *slot = slot.max(*score);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_mapped_to_known_categories() {
        let known = openai_categories();
        assert_eq!(known.len(), 13);
        for t in [Taxonomy::LlamaGuard2, Taxonomy::LlamaGuard3] {
            for code in t.codes() {
                assert!(table()[t.name()][code].is_array(), "{t} {code} missing");
                for target in openai_targets(t, code) {
                    assert!(known.contains(&target), "{t} {code} -> {target}");
                }
            }
        }
    }

    #[test]
    fn scores_take_the_highest_feeding_category() {
        let v = Verdict {
            p_unsafe: 0.9,
            category_scores: [
                ("S1".to_string(), 0.2),
                ("S8".to_string(), 0.7),
                ("S10".to_string(), 0.4),
            ]
            .into(),
            ..Default::default()
        };
        let s = openai_scores(Taxonomy::LlamaGuard2, &v);
        assert_eq!(s["violence"], 0.7);
        assert_eq!(s["illicit/violent"], 0.7);
        assert_eq!(s["self-harm/intent"], 0.4);
        assert_eq!(s["hate"], 0.0);
        assert_eq!(s.len(), 13);
        // Codes are never assumed stable across versions: S10 is Hate in Llama Guard 3.
        let s3 = openai_scores(Taxonomy::LlamaGuard3, &v);
        assert_eq!(s3["hate"], 0.4);
        assert_eq!(s3["self-harm"], 0.0);
    }
}
