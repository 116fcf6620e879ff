//! What a safety classifier says about a conversation (`Verdict`) and the hazard
//! taxonomies it speaks in (`Taxonomy`, with each version's S-codes and names), plus the
//! custom categories a policy may add. The guard produces these and the policies decide on
//! them; neither depends on the other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod taxonomy;

pub use taxonomy::Taxonomy;

/// What the guard said about one stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub taxonomy: Option<Taxonomy>,
    /// P(the first generated token is `unsafe`).
    pub p_unsafe: f64,
    /// Per-category scores (code -> probability), when the guard computed them.
    pub category_scores: BTreeMap<String, f64>,
    /// Codes the model wrote after `unsafe`, when it decoded them.
    pub codes: Vec<String>,
}

/// A category of a policy's own, rendered into the guard prompt after the built-in ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomCategory {
    pub name: String,
    #[serde(default)]
    pub description: String,
}
