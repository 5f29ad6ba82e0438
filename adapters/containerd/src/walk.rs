//! A minimal walk over manifest and index JSON: which descriptors a blob points at.
//!
//! Only the fields that name other blobs are read (`manifests`, `config`, `layers`, `blobs`,
//! `subject`); everything else is ignored, so OCI and Docker media types walk the same way.

use serde::Deserialize;
use speil_core::Digest;

/// The largest manifest or index the walk reads (the limit distribution applies too).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// A descriptor found in a manifest, with what the walk should do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// The referenced blob.
    pub digest: Digest,
    /// Whether the blob is itself a manifest or index whose children should be walked.
    pub is_manifest: bool,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    digest: String,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    blobs: Vec<RawDescriptor>,
    #[serde(default)]
    subject: Option<RawDescriptor>,
}

/// Whether a media type names a manifest or an index (OCI or Docker).
pub fn is_manifest_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
            | "application/vnd.docker.distribution.manifest.v2+json"
    )
}

/// Parses a manifest or index and lists the descriptors it references, in document order.
///
/// Entries of `manifests` and the `subject` are manifests; `config`, `layers` and `blobs` are
/// walked into only when their media type says they are manifests.
pub fn children(bytes: &[u8]) -> Result<Vec<Child>, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a manifest or index: {e}"))?;
    let mut out = Vec::new();
    let mut push = |d: RawDescriptor, manifest: bool| -> Result<(), String> {
        let digest: Digest = d
            .digest
            .parse()
            .map_err(|e| format!("descriptor digest {:?}: {e}", d.digest))?;
        let is_manifest = manifest || d.media_type.as_deref().is_some_and(is_manifest_media_type);
        out.push(Child {
            digest,
            is_manifest,
        });
        Ok(())
    };
    for d in raw.manifests {
        push(d, true)?;
    }
    if let Some(d) = raw.config {
        push(d, false)?;
    }
    for d in raw.layers.into_iter().chain(raw.blobs) {
        push(d, false)?;
    }
    if let Some(d) = raw.subject {
        push(d, true)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn index_and_manifest() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1}},{{"digest":"{}","size":1}}]}}"#,
            d(1),
            d(2)
        );
        let c = children(index.as_bytes()).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.is_manifest));
        let manifest = format!(
            r#"{{"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1}},"layers":[{{"digest":"{}","size":1}}],"subject":{{"digest":"{}","size":1}}}}"#,
            d(3),
            d(4),
            d(5)
        );
        let c = children(manifest.as_bytes()).unwrap();
        assert_eq!(
            c.iter()
                .map(|c| (c.digest.to_string(), c.is_manifest))
                .collect::<Vec<_>>(),
            vec![(d(3), false), (d(4), false), (d(5), true)]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(children(b"not json").is_err());
        assert!(children(br#"{"layers":[{"digest":"md5:zz"}]}"#).is_err());
        assert!(children(br#"{"layers":[{"digest":"sha256:../../etc/passwd"}]}"#).is_err());
        assert_eq!(children(b"{}").unwrap(), vec![]);
    }
}
