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
