//! Image references (`registry/repository[:tag][@digest]`) with the distribution-spec grammar.
//!
//! Parsing follows the rules Docker and containerd use:
//! - the first path component is the registry when it contains `.` or `:`, is `localhost`, is
//!   a bracketed IPv6 address, or has upper-case letters; otherwise the registry is `docker.io`;
//! - `index.docker.io` is normalised to `docker.io`;
//! - on `docker.io`, a single-component repository gets the `library/` prefix.
//!
//! [`Reference`]'s `Display` always writes the registry, so `parse(display(r)) == r`.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Longest full name (`registry/repository`) accepted, as Docker's reference package.
pub const NAME_TOTAL_MAX: usize = 255;
/// Longest tag accepted.
pub const TAG_MAX: usize = 128;
/// Longest registry host (with port) accepted.
pub const HOST_MAX: usize = 255;
/// Longest reference string accepted before any parsing.
const REFERENCE_MAX: usize = NAME_TOTAL_MAX + 1 + TAG_MAX + 1 + 7 + 128;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty input.
    #[error("reference is empty")]
    Empty,
    /// Input longer than any valid reference.
    #[error("reference is too long")]
    TooLong,
    /// The registry part is not `host[:port]`.
    #[error("invalid registry host")]
    InvalidRegistry,
    /// The repository does not follow the distribution-spec name grammar.
    #[error("invalid repository name (lower-case path components separated by '/')")]
    InvalidName,
    /// `registry/repository` is longer than [`NAME_TOTAL_MAX`].
    #[error("repository name is longer than {NAME_TOTAL_MAX} characters")]
    NameTooLong,
    /// The tag does not follow `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    #[error("invalid tag")]
    InvalidTag,
    /// The digest after `@` is not valid.
    #[error("invalid digest: {0}")]
    InvalidDigest(#[from] DigestError),
    /// A bare digest (`sha256:<hex>`, as CRI names its image id records) is not an image
    /// reference, although it would read as `docker.io/library/sha256:<hex>`.
    #[error("a bare digest is not an image reference")]
    BareDigest,
}

impl Reference {
    /// Builds a reference from parts, validating and normalising them like [`FromStr`] does
    /// (`index.docker.io` → `docker.io`, `library/` for single names on Docker Hub).
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Reference, ReferenceError> {
        if !is_valid_registry_host(registry) {
            return Err(ReferenceError::InvalidRegistry);
        }
        if let Some(t) = tag
            && !is_valid_tag(t)
        {
            return Err(ReferenceError::InvalidTag);
        }
        Reference::assemble(registry, repository, tag, digest)
    }

    fn assemble(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Reference, ReferenceError> {
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        if !is_valid_name(&repository) {
            return Err(ReferenceError::InvalidName);
        }
        if registry.len() + 1 + repository.len() > NAME_TOTAL_MAX {
            return Err(ReferenceError::NameTooLong);
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The registry host, with port when given (`docker.io`, `127.0.0.1:5000`, `[::1]:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository inside the registry (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, when given.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() > REFERENCE_MAX {
            return Err(ReferenceError::TooLong);
        }
        if s.parse::<Digest>().is_ok() {
            return Err(ReferenceError::BareDigest);
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A tag is a `:` after the last `/` (a `:` before it belongs to the registry's port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(t) = tag
            && !is_valid_tag(t)
        {
            return Err(ReferenceError::InvalidTag);
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if looks_like_registry(first) => {
                if !is_valid_registry_host(first) {
                    return Err(ReferenceError::InvalidRegistry);
                }
                (first, rest)
            }
            _ => (DOCKER_HUB, name),
        };
        Reference::assemble(registry, repository, tag, digest)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether the first path component names a registry rather than a repository component.
fn looks_like_registry(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.starts_with('[')
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// Whether `name` is a repository name per the distribution spec: path components
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` separated by `/`, at most [`NAME_TOTAL_MAX`] bytes.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_TOTAL_MAX && name.split('/').all(is_valid_path_component)
}

fn is_valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // An alphanumeric run.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // A separator: `.`, `_`, `__` or one or more `-`.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// Whether `tag` matches `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    match b.split_first() {
        Some((&first, rest)) => {
            b.len() <= TAG_MAX
                && word(first)
                && rest.iter().all(|&x| word(x) || x == b'.' || x == b'-')
        }
        None => false,
    }
}

/// Whether `host` is a plausible registry `host[:port]`: a domain name or IPv4 address
/// (components `[A-Za-z0-9]` or `[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]` separated by `.`),
/// or a bracketed IPv6 address, with an optional port `1..=65535`.
pub fn is_valid_registry_host(host: &str) -> bool {
    if host.is_empty() || host.len() > HOST_MAX {
        return false;
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port
        && !is_valid_port(port)
    {
        return false;
    }
    match name {
        Some(n) => !n.is_empty() && n.split('.').all(is_valid_domain_component),
        None => true,
    }
}

fn is_valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok_and(|n| n > 0)
}

fn is_valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r: Reference = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        (
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(|d| d.to_string()),
        )
    }

    #[test]
    fn docker_hub_defaulting() {
        assert_eq!(
            parts("alpine"),
            ("docker.io".into(), "library/alpine".into(), None, None)
        );
        assert_eq!(
            parts("alpine:3.20"),
            (
                "docker.io".into(),
                "library/alpine".into(),
                Some("3.20".into()),
                None
            )
        );
        assert_eq!(parts("bitnami/redis:7").1, "bitnami/redis");
        assert_eq!(parts("docker.io/alpine").1, "library/alpine");
        assert_eq!(
            parts("index.docker.io/library/alpine:1"),
            (
                "docker.io".into(),
                "library/alpine".into(),
                Some("1".into()),
                None
            )
        );
        assert_eq!(parts("index.docker.io/foo").1, "library/foo");
    }

    #[test]
    fn registries_with_ports_ipv6_localhost() {
        assert_eq!(
            parts("127.0.0.1:5000/test/small:v1"),
            (
                "127.0.0.1:5000".into(),
                "test/small".into(),
                Some("v1".into()),
                None
            )
        );
        assert_eq!(parts("localhost/foo").0, "localhost");
        assert_eq!(parts("localhost:5000/foo:bar").0, "localhost:5000");
        assert_eq!(parts("[::1]:5000/foo").0, "[::1]:5000");
        assert_eq!(parts("[fe80::1]/foo:x").0, "[fe80::1]");
        assert_eq!(
            parts(&format!("ghcr.io/spegel-org/spegel@{D}"))
                .3
                .as_deref(),
            Some(D)
        );
        let (reg, repo, tag, dig) = parts(&format!("ghcr.io/a/b:v0.1@{D}"));
        assert_eq!(
            (reg.as_str(), repo.as_str(), tag.as_deref(), dig.as_deref()),
            ("ghcr.io", "a/b", Some("v0.1"), Some(D))
        );
        // "localhost:5000" alone is the repository "localhost" with tag "5000", as in Docker.
        assert_eq!(parts("localhost:5000").1, "library/localhost");
        assert_eq!(parts("localhost:5000").2.as_deref(), Some("5000"));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Alpine",
            "docker.io/Alpine",
            "a//b",
            "/a",
            "a/",
            "a:",
            "a:-x",
            "a@sha256:abc",
            "a@md5:zz",
            "[::1/foo",
            "[zz]:5000/foo",
            "host:0/foo",
            "host:65536/foo",
            "host:/foo",
            "-host.io/foo",
            "a..b",
            "a._b",
            "a___b",
            "a-",
            "foo bar",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} parsed");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert_eq!(
            long_tag.parse::<Reference>(),
            Err(ReferenceError::InvalidTag)
        );
        let long_name = format!("r.io/{}", "a".repeat(251));
        assert_eq!(
            long_name.parse::<Reference>(),
            Err(ReferenceError::NameTooLong)
        );
        assert!(
            format!("r.io/{}", "a".repeat(250))
                .parse::<Reference>()
                .is_ok()
        );
        assert_eq!(
            "x".repeat(10_000).parse::<Reference>(),
            Err(ReferenceError::TooLong)
        );
        assert_eq!(D.parse::<Reference>(), Err(ReferenceError::BareDigest));
    }

    #[test]
    fn name_grammar() {
        for ok in [
            "a", "a0", "a.b", "a_b", "a__b", "a-b", "a---b", "a/b/c", "0",
        ] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a.", ".a", "a.-b", "a/../b", "a%2fb", "a b",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn tag_grammar() {
        assert!(is_valid_tag("latest"));
        assert!(is_valid_tag("_x"));
        assert!(is_valid_tag("V1.2-rc_3"));
        assert!(is_valid_tag(&"a".repeat(128)));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(!is_valid_tag(""));
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag("a:b"));
    }

    #[test]
    fn registry_hosts() {
        for ok in [
            "docker.io",
            "127.0.0.1:5000",
            "[::1]",
            "[::1]:5000",
            "localhost",
            "my-registry.example.com:443",
            "REGISTRY.io",
        ] {
            assert!(is_valid_registry_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a:b",
            "a:",
            "a:0",
            "[::1]x",
            "[]",
            "a..b",
            "a/b",
            "-a",
            "a b",
            "127.0.0.1:5000:1",
        ] {
            assert!(!is_valid_registry_host(bad), "{bad}");
        }
    }

    #[test]
    fn new_normalises_like_parse() {
        let r = Reference::new("index.docker.io", "alpine", Some("3"), None).unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:3");
        assert_eq!(r.name(), "docker.io/library/alpine");
        assert_eq!(r.to_string().parse::<Reference>().unwrap(), r);
        assert!(Reference::new("bad host", "a", None, None).is_err());
        assert!(Reference::new("r.io", "a", Some("-"), None).is_err());
    }
}
