//! The hazard taxonomies (they live in `safegate-verdict`, shared with the guard).

pub use safegate_verdict::Taxonomy;
