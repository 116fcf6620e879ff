//! safegate's policies: what is allowed, as files security people can read, review and
//! change without a rebuild.
//!
//! - [`schema`]: the policy file (YAML) and its defaults;
//! - [`load`]: parsing and validation with file:line:column errors;
//! - [`decide`]: the pure decision function;
//! - [`PolicySet`]: policies plus bindings, validated as a whole; [`PolicyStore`]: the
//!   set in force, swapped atomically on reload;
//! - [`presets`]: the policies shipped in `policies/presets/`.

pub mod decide;
pub mod load;
pub mod schema;
pub mod taxonomy;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub use decide::{decide, Decision, Reason, Verdict};
pub use load::{parse_bindings, parse_policy, PolicyError, PolicyErrors};
pub use schema::{
    Action, Bindings, OnError, Policy, PromptAttackPolicy, SeverityLevel, Stage, ToolsPolicy,
};
pub use taxonomy::Taxonomy;

use safegate_shield::Shield;

/// The presets shipped with safegate: (file name, YAML).
pub fn presets() -> &'static [(&'static str, &'static str)] {
    &[
        ("default.yaml", include_str!("../presets/default.yaml")),
        ("strict.yaml", include_str!("../presets/strict.yaml")),
        (
            "audit-only.yaml",
            include_str!("../presets/audit-only.yaml"),
        ),
        (
            "code-assistant.yaml",
            include_str!("../presets/code-assistant.yaml"),
        ),
    ]
}

/// Policies by name, and which applies to which key group. Immutable once built; a reload
/// builds a new one.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub policies: BTreeMap<String, Arc<Policy>>,
    pub bindings: Bindings,
    /// Increases with every set that goes into force (see [`PolicyStore`]).
    pub version: u64,
}

impl PolicySet {
    /// Builds a set from files (name, text). A file named `bindings.yaml` (or `.yml`)
    /// holds the bindings; without one, the policy named `default` applies to everyone.
    /// Everything is validated together: duplicate names, bindings to unknown policies.
    pub fn from_files(
        files: &[(String, String)],
        shield: &Shield,
    ) -> Result<PolicySet, PolicyErrors> {
        let mut errors = Vec::new();
        let mut policies: BTreeMap<String, Arc<Policy>> = BTreeMap::new();
        let mut where_defined: BTreeMap<String, String> = BTreeMap::new();
        let mut bindings = None;
        for (file, text) in files {
            let base = std::path::Path::new(file)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(file);
            if base == "bindings.yaml" || base == "bindings.yml" {
                match parse_bindings(file, text) {
                    Ok(b) => bindings = Some((file.clone(), b)),
                    Err(e) => errors.extend(e.0),
                }
                continue;
            }
            match parse_policy(file, text, shield) {
                Ok(p) => {
                    if let Some(first) = where_defined.get(&p.name) {
                        errors.push(PolicyError {
                            file: file.clone(),
                            line: 1,
                            column: 1,
                            message: format!(
                                "duplicate policy name `{}` (also defined in {first})",
                                p.name
                            ),
                        });
                    } else {
                        where_defined.insert(p.name.clone(), file.clone());
                        policies.insert(p.name.clone(), Arc::new(p));
                    }
                }
                Err(e) => errors.extend(e.0),
            }
        }
        let bindings = match bindings {
            Some((file, (b, at))) => {
                let mut check = |policy: &str, key: &str| {
                    if !policies.contains_key(policy) {
                        let (line, column) = at.get(key).copied().unwrap_or((1, 1));
                        let known: Vec<&str> = policies.keys().map(String::as_str).collect();
                        errors.push(PolicyError {
                            file: file.clone(),
                            line,
                            column,
                            message: format!(
                                "binding to unknown policy `{policy}` (known: {})",
                                known.join(", ")
                            ),
                        });
                    }
                };
                check(&b.default, "default");
                for (group, policy) in &b.groups {
                    check(policy, group);
                }
                b
            }
            None => {
                if !policies.contains_key("default") && errors.is_empty() {
                    errors.push(PolicyError {
                        file: files.first().map(|f| f.0.clone()).unwrap_or_else(|| "(no files)".into()),
                        line: 1,
                        column: 1,
                        message: "no bindings.yaml and no policy named `default`: requests would have no policy".into(),
                    });
                }
                Bindings {
                    default: "default".into(),
                    groups: BTreeMap::new(),
                }
            }
        };
        if errors.is_empty() {
            Ok(PolicySet {
                policies,
                bindings,
                version: 0,
            })
        } else {
            Err(PolicyErrors(errors))
        }
    }

    /// The shipped presets, `default` bound for everyone.
    pub fn presets(shield: &Shield) -> PolicySet {
        let files: Vec<(String, String)> = presets()
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        PolicySet::from_files(&files, shield).expect("shipped presets are valid (tested)")
    }

    /// The policy for a key group (None: the default).
    pub fn for_group(&self, group: Option<&str>) -> Arc<Policy> {
        let name = group
            .and_then(|g| self.bindings.groups.get(g))
            .unwrap_or(&self.bindings.default);
        self.policies[name].clone()
    }
}

/// The policy set in force. Readers take an `Arc` and keep it for their whole request, so
/// a reload never changes the policy of a request already under way; a reload either
/// swaps in a complete, valid set or leaves the old one in force.
pub struct PolicyStore {
    current: RwLock<Arc<PolicySet>>,
}

impl PolicyStore {
    pub fn new(mut set: PolicySet) -> Self {
        set.version = 1;
        Self {
            current: RwLock::new(Arc::new(set)),
        }
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Validates `files` as a whole and, if valid, puts them in force. Returns the new
    /// version, or the errors (the old set stays in force).
    pub fn reload(&self, files: &[(String, String)], shield: &Shield) -> Result<u64, PolicyErrors> {
        let mut set = PolicySet::from_files(files, shield)?;
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        set.version = guard.version + 1;
        *guard = Arc::new(set);
        Ok(guard.version)
    }
}
