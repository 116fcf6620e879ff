//! The hazard taxonomies policies speak in. Codes are never assumed stable across versions:
//! everything keys on (taxonomy, code).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Taxonomy {
    #[serde(rename = "llama-guard-2")]
    LlamaGuard2,
    #[serde(rename = "llama-guard-3")]
    LlamaGuard3,
}

/// (code, name as the model's prompt writes it).
const LLAMA_GUARD_2: &[(&str, &str)] = &[
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Exploitation"),
    ("S5", "Specialized Advice"),
    ("S6", "Privacy"),
    ("S7", "Intellectual Property"),
    ("S8", "Indiscriminate Weapons"),
    ("S9", "Hate"),
    ("S10", "Self-Harm"),
    ("S11", "Sexual Content"),
];

const LLAMA_GUARD_3: &[(&str, &str)] = &[
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
    ("S14", "Code Interpreter Abuse"),
];

impl Taxonomy {
    pub fn name(self) -> &'static str {
        match self {
            Taxonomy::LlamaGuard2 => "llama-guard-2",
            Taxonomy::LlamaGuard3 => "llama-guard-3",
        }
    }

    pub fn categories(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Taxonomy::LlamaGuard2 => LLAMA_GUARD_2,
            Taxonomy::LlamaGuard3 => LLAMA_GUARD_3,
        }
    }

    pub fn has_code(self, code: &str) -> bool {
        self.categories().iter().any(|(c, _)| *c == code)
    }

    pub fn category_name(self, code: &str) -> Option<&'static str> {
        self.categories()
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, n)| *n)
    }

    pub fn codes(self) -> impl Iterator<Item = &'static str> {
        self.categories().iter().map(|(c, _)| *c)
    }
}

impl fmt::Display for Taxonomy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Taxonomy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "llama-guard-2" => Ok(Taxonomy::LlamaGuard2),
            "llama-guard-3" => Ok(Taxonomy::LlamaGuard3),
            _ => Err(format!(
                "unknown taxonomy `{s}`: expected llama-guard-2 or llama-guard-3"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_codes_are_per_version() {
        for t in [Taxonomy::LlamaGuard2, Taxonomy::LlamaGuard3] {
            assert_eq!(t.name().parse::<Taxonomy>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
        assert_eq!(Taxonomy::LlamaGuard2.codes().count(), 11);
        assert_eq!(Taxonomy::LlamaGuard3.codes().count(), 14);
        assert_eq!(Taxonomy::LlamaGuard2.category_name("S9"), Some("Hate"));
        assert_eq!(
            Taxonomy::LlamaGuard3.category_name("S9"),
            Some("Indiscriminate Weapons")
        );
        assert!(!Taxonomy::LlamaGuard2.has_code("S14"));
        assert!("llama-guard-4".parse::<Taxonomy>().is_err());
    }
}
