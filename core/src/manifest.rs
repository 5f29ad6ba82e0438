//! Manifest and index parsing (OCI and Docker schema 2) on `oci-spec`'s data model.
//!
//! The media type is the document's declared `mediaType` or, when absent, sniffed: an index
//! when it has `manifests`, a manifest when it has `config` and `layers`. The document is then
//! parsed into [`ImageManifest`] or [`ImageIndex`], and every child descriptor's digest is
//! validated with speil's own [`Digest`] (oci-spec accepts any `algorithm:encoded` pair).
//! Docker schema 1 is refused; documents over [`MAX_MANIFEST_SIZE`] are refused before parsing.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::de::IgnoredAny;

use crate::digest::{Digest, DigestError};

/// Largest manifest speil accepts (4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list, schema 2.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 manifest (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1 signed manifest (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Whether `media_type` is one of the manifest or index media types speil serves as manifests
/// (OCI manifest and index, Docker schema 2 manifest and manifest list). Parameters after `;`
/// and surrounding spaces are ignored, the comparison is case-insensitive.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    kind_of_media_type(media_type).is_some()
}

fn kind_of_media_type(media_type: &str) -> Option<ManifestKind> {
    let essence = media_type.split(';').next().unwrap_or("").trim();
    [
        (OCI_MANIFEST, ManifestKind::Manifest),
        (DOCKER_MANIFEST, ManifestKind::Manifest),
        (OCI_INDEX, ManifestKind::Index),
        (DOCKER_MANIFEST_LIST, ManifestKind::Index),
    ]
    .into_iter()
    .find(|(t, _)| essence.eq_ignore_ascii_case(t))
    .map(|(_, k)| k)
}

/// Whether a document is a single-image manifest or an index (manifest list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    /// An image manifest (config + layers).
    Manifest,
    /// An index / manifest list.
    Index,
}

/// Why a document is not an acceptable manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_SIZE`].
    #[error("manifest is {0} bytes, more than the 4 MiB limit")]
    TooLarge(usize),
    /// Not a JSON object.
    #[error("manifest is not a JSON object: {0}")]
    NotJson(String),
    /// Docker schema 1 (deprecated, unsupported).
    #[error(
        "Docker schema 1 manifests are not supported (deprecated by Docker; push the image \
         again with a current client to get a schema 2 or OCI manifest)"
    )]
    Schema1,
    /// A declared `mediaType` that is not a manifest or index.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// No `mediaType` and neither `manifests` nor `config` + `layers`.
    #[error("document is neither a manifest (config + layers) nor an index (manifests)")]
    UnknownShape,
    /// `schemaVersion` is not 2.
    #[error("unsupported schemaVersion {0} (expected 2)")]
    SchemaVersion(u64),
    /// The document does not match the manifest or index structure.
    #[error("invalid {kind}: {message}")]
    Invalid {
        /// What it was parsed as.
        kind: &'static str,
        /// The parser's message.
        message: String,
    },
    /// A descriptor carries a digest speil does not accept.
    #[error("descriptor {role} has an invalid digest: {error}")]
    InvalidDigest {
        /// Which descriptor (`config`, `layers[3]`, …).
        role: String,
        /// Why the digest is invalid.
        error: DigestError,
    },
    /// A descriptor has an empty media type.
    #[error("descriptor {0} has an empty media type")]
    EmptyMediaType(String),
}

/// Which place a child descriptor has in its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildRole {
    /// An entry of an index's `manifests`.
    Manifest,
    /// A manifest's `config`.
    Config,
    /// An entry of a manifest's `layers`.
    Layer,
    /// The `subject` of a manifest or index (referrers API).
    Subject,
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), when given.
    pub variant: Option<String>,
}

/// A child descriptor with a validated digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Child {
    /// Where the descriptor sits in its parent.
    pub role: ChildRole,
    /// The descriptor's media type.
    pub media_type: String,
    /// The validated digest.
    pub digest: Digest,
    /// The size in bytes the descriptor declares.
    pub size: u64,
    /// The platform, when given.
    pub platform: Option<Platform>,
    /// The descriptor's `artifactType`, when given.
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Document {
    Manifest(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

/// A parsed, validated manifest or index.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    media_type: String,
    declared: bool,
    document: Document,
    children: Vec<Child>,
}

impl Manifest {
    /// The media type to send as `Content-Type`: the declared one, or the sniffed one.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// Whether the media type was declared in the document (rather than sniffed).
    pub fn media_type_declared(&self) -> bool {
        self.declared
    }

    /// Manifest or index.
    pub fn kind(&self) -> ManifestKind {
        match self.document {
            Document::Manifest(_) => ManifestKind::Manifest,
            Document::Index(_) => ManifestKind::Index,
        }
    }

    /// The child descriptors, in document order: an index's `manifests`, a manifest's
    /// `config` then `layers`; then the `subject` when present.
    pub fn children(&self) -> &[Child] {
        &self.children
    }

    /// The oci-spec image manifest, when this is a manifest.
    pub fn as_image_manifest(&self) -> Option<&ImageManifest> {
        match &self.document {
            Document::Manifest(m) => Some(m),
            Document::Index(_) => None,
        }
    }

    /// The oci-spec image index, when this is an index.
    pub fn as_image_index(&self) -> Option<&ImageIndex> {
        match &self.document {
            Document::Index(i) => Some(i),
            Document::Manifest(_) => None,
        }
    }
}

/// The fields needed to decide what a document is; everything else is skipped.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<serde_json::Value>,
    media_type: Option<serde_json::Value>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
    fs_layers: Option<IgnoredAny>,
}

/// Parses and validates a manifest or index.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge(bytes.len()));
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;

    let declared = match &probe.media_type {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(ManifestError::Invalid {
                kind: "document",
                message: "mediaType is not a string".into(),
            });
        }
    };
    let schema1 = declared.is_some_and(|t| {
        t.eq_ignore_ascii_case(DOCKER_SCHEMA1) || t.eq_ignore_ascii_case(DOCKER_SCHEMA1_SIGNED)
    }) || probe.fs_layers.is_some()
        || probe
            .schema_version
            .as_ref()
            .is_some_and(|v| v.as_u64() == Some(1));
    if schema1 {
        return Err(ManifestError::Schema1);
    }
    match &probe.schema_version {
        Some(v) if v.as_u64() == Some(2) => {}
        Some(v) => {
            return Err(match v.as_u64() {
                Some(n) => ManifestError::SchemaVersion(n),
                None => ManifestError::Invalid {
                    kind: "document",
                    message: "schemaVersion is not a number".into(),
                },
            });
        }
        None => {
            return Err(ManifestError::Invalid {
                kind: "document",
                message: "schemaVersion is missing".into(),
            });
        }
    }

    let (kind, media_type) = match declared {
        Some(t) => match kind_of_media_type(t) {
            Some(k) => (k, t.to_owned()),
            None => {
                return Err(ManifestError::UnsupportedMediaType(
                    crate::error::echo(t).into(),
                ));
            }
        },
        None if probe.manifests.is_some() => (ManifestKind::Index, OCI_INDEX.to_owned()),
        None if probe.config.is_some() && probe.layers.is_some() => {
            (ManifestKind::Manifest, OCI_MANIFEST.to_owned())
        }
        None => return Err(ManifestError::UnknownShape),
    };

    let mut children = Vec::new();
    let document = match kind {
        ManifestKind::Manifest => {
            let m: ImageManifest =
                serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid {
                    kind: "manifest",
                    message: e.to_string(),
                })?;
            children.push(child(ChildRole::Config, "config".into(), m.config())?);
            for (i, d) in m.layers().iter().enumerate() {
                children.push(child(ChildRole::Layer, format!("layers[{i}]"), d)?);
            }
            if let Some(s) = m.subject() {
                children.push(child(ChildRole::Subject, "subject".into(), s)?);
            }
            Document::Manifest(Box::new(m))
        }
        ManifestKind::Index => {
            let idx: ImageIndex =
                serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid {
                    kind: "index",
                    message: e.to_string(),
                })?;
            for (i, d) in idx.manifests().iter().enumerate() {
                children.push(child(ChildRole::Manifest, format!("manifests[{i}]"), d)?);
            }
            if let Some(s) = idx.subject() {
                children.push(child(ChildRole::Subject, "subject".into(), s)?);
            }
            Document::Index(Box::new(idx))
        }
    };
    Ok(Manifest {
        media_type,
        declared: declared.is_some(),
        document,
        children,
    })
}

fn child(role: ChildRole, place: String, d: &Descriptor) -> Result<Child, ManifestError> {
    let digest =
        d.digest()
            .as_ref()
            .parse::<Digest>()
            .map_err(|error| ManifestError::InvalidDigest {
                role: place.clone(),
                error,
            })?;
    let media_type = d.media_type().to_string();
    if media_type.is_empty() {
        return Err(ManifestError::EmptyMediaType(place));
    }
    Ok(Child {
        role,
        media_type,
        digest,
        size: d.size(),
        platform: d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }),
        artifact_type: d.artifact_type().as_ref().map(ToString::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sniffs_and_validates() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":2}},"layers":[]}}"#
        );
        let p = parse(m.as_bytes()).unwrap();
        assert_eq!(p.media_type(), OCI_MANIFEST);
        assert!(!p.media_type_declared());
        assert_eq!(p.children().len(), 1);
        assert_eq!(p.children()[0].role, ChildRole::Config);

        let bad = m.replace(D, "md5:zz");
        assert!(matches!(
            parse(bad.as_bytes()),
            Err(ManifestError::InvalidDigest { .. }) | Err(ManifestError::Invalid { .. })
        ));
        let bad = m.replace(D, &format!("sha256:{}", "A".repeat(64)));
        assert!(matches!(
            parse(bad.as_bytes()),
            Err(ManifestError::InvalidDigest { .. }) | Err(ManifestError::Invalid { .. })
        ));
    }

    #[test]
    fn refuses_what_it_must() {
        assert!(matches!(parse(b"[]"), Err(ManifestError::NotJson(_))));
        assert!(matches!(parse(b"nope"), Err(ManifestError::NotJson(_))));
        assert_eq!(
            parse(br#"{"schemaVersion":2}"#),
            Err(ManifestError::UnknownShape)
        );
        assert_eq!(
            parse(br#"{"schemaVersion":1}"#),
            Err(ManifestError::Schema1)
        );
        assert_eq!(
            parse(br#"{"schemaVersion":3,"manifests":[]}"#),
            Err(ManifestError::SchemaVersion(3))
        );
        assert!(matches!(
            parse(br#"{"schemaVersion":2,"mediaType":"text/plain","manifests":[]}"#),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert_eq!(
            parse(&big),
            Err(ManifestError::TooLarge(MAX_MANIFEST_SIZE + 1))
        );
        // Declared index but shaped as a manifest: refused, not silently re-typed.
        assert!(matches!(
            parse(
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","config":{{}},"layers":[]}}"#
                )
                .as_bytes()
            ),
            Err(ManifestError::Invalid { kind: "index", .. })
        ));
    }

    #[test]
    fn media_type_check() {
        assert!(is_manifest_media_type(OCI_MANIFEST));
        assert!(is_manifest_media_type(DOCKER_MANIFEST_LIST));
        assert!(is_manifest_media_type(
            "application/vnd.oci.image.index.v1+json; charset=utf-8"
        ));
        assert!(!is_manifest_media_type(DOCKER_SCHEMA1));
        assert!(!is_manifest_media_type("application/octet-stream"));
        assert!(!is_manifest_media_type(""));
    }
}
