//! Category names and descriptions as the Llama Guard prompts write them: data files in
//! `guard/taxonomies/`, made from Meta's reference builder by
//! `scripts/guard/make_reference_data.py`.

use std::sync::OnceLock;

use safegate_verdict::Taxonomy;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Category {
    pub code: String,
    /// As the prompt writes it, trailing ". " included ("Violent Crimes. ").
    pub name: String,
    pub description: String,
}

#[derive(Debug, Deserialize)]
struct TaxonomyFile {
    categories: Vec<Category>,
}

fn parse(text: &str) -> Vec<Category> {
    serde_json::from_str::<TaxonomyFile>(text)
        .expect("embedded taxonomy files are valid (tested)")
        .categories
}

/// The categories of a taxonomy, in code order.
pub fn categories(taxonomy: Taxonomy) -> &'static [Category] {
    static LG2: OnceLock<Vec<Category>> = OnceLock::new();
    static LG3: OnceLock<Vec<Category>> = OnceLock::new();
    match taxonomy {
        Taxonomy::LlamaGuard2 => {
            LG2.get_or_init(|| parse(include_str!("../taxonomies/llama-guard-2.json")))
        }
        Taxonomy::LlamaGuard3 => {
            LG3.get_or_init(|| parse(include_str!("../taxonomies/llama-guard-3.json")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_files_agree_with_the_policy_taxonomies() {
        for t in [Taxonomy::LlamaGuard2, Taxonomy::LlamaGuard3] {
            let cats = categories(t);
            assert_eq!(cats.len(), t.categories().len());
            for (c, (code, name)) in cats.iter().zip(t.categories()) {
                assert_eq!(&c.code, code);
                assert_eq!(c.name.trim_end().trim_end_matches('.'), *name, "{t} {code}");
            }
        }
        assert_eq!(categories(Taxonomy::LlamaGuard3)[4].name, "Defamation. ");
    }
}
