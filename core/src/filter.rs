//! Which registries and repositories this node serves and advertises.
//!
//! `--mirrored-registries` (empty = all) and `--registry-filters` (regexes over
//! `registry/repository[:tag]`) apply to both serving and advertising: a filtered image is
//! neither served to peers nor announced to them. (Spegel applies them to serving only.)

/// Why a filter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A `--registry-filters` pattern is not a valid regular expression.
    #[error("--registry-filters: invalid regular expression {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// The regex engine's complaint (first line).
        reason: String,
    },
    /// A `--mirrored-registries` entry is not a registry URL or host.
    #[error("--mirrored-registries: {0:?} is not a registry URL (like https://docker.io)")]
    BadRegistry(String),
}

/// The serving and advertising filter.
#[derive(Debug, Clone, Default)]
pub struct RegistryFilter {
    mirrored: Vec<String>,
    patterns: Vec<regex::Regex>,
}

/// Reduces a registry URL or host to the `host[:port]` form used in image names and `ns`.
pub fn registry_host(entry: &str) -> Option<String> {
    let rest = entry
        .strip_prefix("https://")
        .or_else(|| entry.strip_prefix("http://"))
        .unwrap_or(entry);
    let host = rest.trim_end_matches('/');
    if host.is_empty()
        || host.contains('/')
        || host.contains(char::is_whitespace)
        || host.len() > 255
    {
        return None;
    }
    let host = host.to_ascii_lowercase();
    Some(match host.as_str() {
        "registry-1.docker.io" | "index.docker.io" => "docker.io".to_owned(),
        _ => host,
    })
}

impl RegistryFilter {
    /// Builds the filter from the flag values.
    pub fn new<S: AsRef<str>>(mirrored: &[S], patterns: &[S]) -> Result<Self, FilterError> {
        let mirrored = mirrored
            .iter()
            .map(|m| {
                registry_host(m.as_ref())
                    .ok_or_else(|| FilterError::BadRegistry(m.as_ref().to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let patterns = patterns
            .iter()
            .map(|p| {
                regex::RegexBuilder::new(p.as_ref())
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| FilterError::BadPattern {
                        pattern: p.as_ref().to_owned(),
                        reason: e
                            .to_string()
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RegistryFilter { mirrored, patterns })
    }

    /// Whether `registry` is one of the mirrored registries (always, when none are named).
    pub fn mirrors_registry(&self, registry: &str) -> bool {
        self.mirrored.is_empty() || self.mirrored.iter().any(|m| m == registry)
    }

    /// Whether `registry/repository[:tag]` may be served and advertised.
    pub fn allows(&self, registry: &str, repository: &str, tag: Option<&str>) -> bool {
        if !self.mirrors_registry(registry) {
            return false;
        }
        if self.patterns.is_empty() {
            return true;
        }
        let subject = match tag {
            Some(t) => format!("{registry}/{repository}:{t}"),
            None => format!("{registry}/{repository}"),
        };
        !self.patterns.iter().any(|p| p.is_match(&subject))
    }
}

/// The value of a metric's `registry` label for a request's `ns` (SPEC.md §8: label values
/// are a bounded set, so a client cannot grow `/metrics`).
///
/// - no `ns` (a digest request without one): `""`;
/// - with `--mirrored-registries`: a listed registry keeps its name, any other is `other`;
/// - without (every registry is mirrored): a registry this node holds images of (`held`)
///   keeps its name, and so do the first [`RegistryLabels::MAX_NAMED`] others seen; every
///   later one is `other`.
#[derive(Debug, Clone, Default)]
pub struct RegistryLabels {
    named: std::collections::BTreeSet<String>,
}

impl RegistryLabels {
    /// How many registries neither listed nor held keep their name when every registry is
    /// mirrored.
    pub const MAX_NAMED: usize = 16;

    /// The label of a registry that may not be named.
    pub const OTHER: &'static str = "other";

    /// The label for `ns` under `filter`; `held` says whether this node holds images of a
    /// registry. Deterministic: the same calls in the same order give the same labels.
    pub fn label<'a>(
        &mut self,
        filter: &RegistryFilter,
        ns: Option<&'a str>,
        held: impl FnOnce(&str) -> bool,
    ) -> &'a str {
        let Some(ns) = ns else { return "" };
        if !filter.mirrored.is_empty() {
            return if filter.mirrors_registry(ns) {
                ns
            } else {
                Self::OTHER
            };
        }
        if held(ns) || self.named.contains(ns) {
            return ns;
        }
        if self.named.len() < Self::MAX_NAMED {
            self.named.insert(ns.to_owned());
            return ns;
        }
        Self::OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_registries_and_patterns() {
        let f = RegistryFilter::new(
            &["https://docker.io", "http://127.0.0.1:5000/"],
            &[":latest$", "^docker.io/library/secret"],
        )
        .unwrap();
        assert!(f.allows("docker.io", "library/alpine", Some("3.20")));
        assert!(!f.allows("docker.io", "library/alpine", Some("latest")));
        assert!(!f.allows("docker.io", "library/secret-thing", None));
        assert!(f.allows("127.0.0.1:5000", "x", None));
        assert!(!f.allows("ghcr.io", "x", Some("1")));
        let all = RegistryFilter::new::<&str>(&[], &[]).unwrap();
        assert!(all.allows("ghcr.io", "x", Some("1")));
    }

    #[test]
    fn registry_labels_are_bounded() {
        let listed = RegistryFilter::new(&["docker.io"], &[]).unwrap();
        let mut l = RegistryLabels::default();
        assert_eq!(l.label(&listed, Some("docker.io"), |_| false), "docker.io");
        assert_eq!(l.label(&listed, Some("evil.test"), |_| true), "other");
        assert_eq!(l.label(&listed, None, |_| false), "");
        let all = RegistryFilter::default();
        let mut l = RegistryLabels::default();
        let names: Vec<String> = (0..40).map(|i| format!("r{i}.test")).collect();
        let labels: Vec<&str> = names
            .iter()
            .map(|n| l.label(&all, Some(n), |_| false))
            .collect();
        assert_eq!(
            &labels[..RegistryLabels::MAX_NAMED],
            &names[..RegistryLabels::MAX_NAMED]
        );
        assert!(
            labels[RegistryLabels::MAX_NAMED..]
                .iter()
                .all(|l| *l == "other")
        );
        // Named ones stay named; held ones are named after the places are taken.
        assert_eq!(l.label(&all, Some("r0.test"), |_| false), "r0.test");
        assert_eq!(
            l.label(&all, Some("ghcr.io"), |r| r == "ghcr.io"),
            "ghcr.io"
        );
        assert_eq!(l.label(&all, Some("quay.io"), |_| false), "other");
    }

    #[test]
    fn bad_flags_name_themselves() {
        let e = RegistryFilter::new(&[] as &[&str], &["(unclosed"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--registry-filters: invalid regular expression")
        );
        assert!(!e.to_string().contains('\n'));
        let e = RegistryFilter::new(&["https://docker.io/v2/x"], &[]).unwrap_err();
        assert!(e.to_string().starts_with("--mirrored-registries"));
        assert_eq!(
            registry_host("https://registry-1.docker.io"),
            Some("docker.io".into())
        );
    }
}
