//! Table tests over real manifests, indexes and configs (`tests/fixtures/oci/`, byte-exact
//! copies; provenance in `tests/fixtures/oci/SOURCES.md`).

use speil_core::Digest;
use speil_core::manifest::{self, ChildRole, ManifestError, ManifestKind};

macro_rules! fixture {
    ($name:literal, $sha256:literal) => {
        (
            $name,
            include_bytes!(concat!("fixtures/oci/", $name)).as_slice(),
            $sha256,
        )
    };
}

/// Every fixture with the sha256 its source stored it under (see SOURCES.md).
const FIXTURES: &[(&str, &[u8], &str)] = &[
    fixture!(
        "docker-manifest-list.json",
        "6e40af1c2ca008eecf9c4bb03674a3e73af1204e745d06900b7ca75deb94b6af"
    ),
    fixture!(
        "docker-schema1-signed.json",
        "e028c450623065a8813712d8018f9a3d49e8adaad885f6e01371a1e26bd2224d"
    ),
    fixture!(
        "docker-schema1-unsigned.json",
        "7364fea9d84ee548ab67d4c46c6006289800c98de3fbf8c0a97138dfcc23f000"
    ),
    fixture!(
        "docker-schema2-config-httpd.json",
        "9ca4bda0a6b3727a6ffcc43e981cad0f24e2ec79d338f6ba325b4dfd0756fb8f"
    ),
    fixture!(
        "docker-schema2-config.json",
        "930705ce23e3b6ed4c08746b6fe880089c864fbaf62482702ae3fdd66b8c7fe9"
    ),
    fixture!(
        "docker-schema2-manifest-httpd.json",
        "aa0711c4fc25264ce59b5f9315b555ba1252ad0fbd0e290634b693df2045a072"
    ),
    fixture!(
        "docker-schema2-manifest.json",
        "32589985702551b6c56033bb3334432a0a513bf9d6aceda0f67c42b003850720"
    ),
    fixture!(
        "oci-artifact-manifest-subject.json",
        "0484e93c23cddf24a8400547119558312023295af241d4cd1eaf1b27145c5026"
    ),
    fixture!(
        "oci-artifact-subject-index.json",
        "dfae8f425735a5e3a72e40d6609e03079995511d48157c74d54801ff4430491e"
    ),
    fixture!(
        "oci-config.json",
        "68b8a989a3e08ddbdb3a0077d35c0d0e59c9ecf23d0634584def8bdbb7d6824f"
    ),
    fixture!(
        "oci-index-attestations.json",
        "9506c8e7a2d0a098d43cadfd7ecdc3c91697e8188d3a1245943b669f717747b4"
    ),
    fixture!(
        "oci-manifest-no-mediatype.json",
        "b6d6089ca6c395fd563c2084f5dd7bc56a2f5e6a81413558c5be0083287a77e9"
    ),
    fixture!(
        "oci-manifest.json",
        "dce623533c59af554b85f859e91fc1cbb7f574e873c82f36b9ea05a09feb0b53"
    ),
    fixture!(
        "oci-referrers-index.json",
        "955b8a891713a806107edb6dd09410233a9e7926584b1d6fd8b7b5342296188b"
    ),
];

fn bytes(name: &str) -> &'static [u8] {
    FIXTURES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, b, _)| *b)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn digest_of(name: &str) -> Digest {
    let (_, _, hex) = FIXTURES.iter().find(|(n, _, _)| *n == name).unwrap();
    format!("sha256:{hex}").parse().unwrap()
}

#[test]
fn fixtures_are_byte_exact() {
    for (name, b, hex) in FIXTURES {
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert!(d.verifies(b), "{name} does not hash to {d}");
    }
}

/// What each fixture must parse as: media type, kind, number of children by role
/// (manifests, config, layers, subject), or the error.
enum Expect {
    Parsed {
        media_type: &'static str,
        declared: bool,
        kind: ManifestKind,
        manifests: usize,
        configs: usize,
        layers: usize,
        subjects: usize,
    },
    Schema1,
    NotAManifest,
}

#[test]
fn every_fixture_parses_as_expected() {
    use Expect::*;
    use ManifestKind::{Index, Manifest};
    let table: &[(&str, Expect)] = &[
        (
            "docker-manifest-list.json",
            Parsed {
                media_type: manifest::DOCKER_MANIFEST_LIST,
                declared: true,
                kind: Index,
                manifests: 7,
                configs: 0,
                layers: 0,
                subjects: 0,
            },
        ),
        ("docker-schema1-signed.json", Schema1),
        ("docker-schema1-unsigned.json", Schema1),
        ("docker-schema2-config-httpd.json", NotAManifest),
        ("docker-schema2-config.json", NotAManifest),
        (
            "docker-schema2-manifest-httpd.json",
            Parsed {
                media_type: manifest::DOCKER_MANIFEST,
                declared: true,
                kind: Manifest,
                manifests: 0,
                configs: 1,
                layers: 5,
                subjects: 0,
            },
        ),
        (
            "docker-schema2-manifest.json",
            Parsed {
                media_type: manifest::DOCKER_MANIFEST,
                declared: true,
                kind: Manifest,
                manifests: 0,
                configs: 1,
                layers: 1,
                subjects: 0,
            },
        ),
        (
            "oci-artifact-manifest-subject.json",
            Parsed {
                media_type: manifest::OCI_MANIFEST,
                declared: true,
                kind: Manifest,
                manifests: 0,
                configs: 1,
                layers: 1,
                subjects: 1,
            },
        ),
        (
            "oci-artifact-subject-index.json",
            Parsed {
                media_type: manifest::OCI_INDEX,
                declared: true,
                kind: Index,
                manifests: 3,
                configs: 0,
                layers: 0,
                subjects: 0,
            },
        ),
        ("oci-config.json", NotAManifest),
        (
            "oci-index-attestations.json",
            Parsed {
                media_type: manifest::OCI_INDEX,
                declared: true,
                kind: Index,
                manifests: 7,
                configs: 0,
                layers: 0,
                subjects: 0,
            },
        ),
        (
            "oci-manifest-no-mediatype.json",
            Parsed {
                media_type: manifest::OCI_MANIFEST,
                declared: false,
                kind: Manifest,
                manifests: 0,
                configs: 1,
                layers: 1,
                subjects: 0,
            },
        ),
        (
            "oci-manifest.json",
            Parsed {
                media_type: manifest::OCI_MANIFEST,
                declared: true,
                kind: Manifest,
                manifests: 0,
                configs: 1,
                layers: 11,
                subjects: 0,
            },
        ),
        (
            "oci-referrers-index.json",
            Parsed {
                media_type: manifest::OCI_INDEX,
                declared: true,
                kind: Index,
                manifests: 2,
                configs: 0,
                layers: 0,
                subjects: 0,
            },
        ),
    ];
    assert_eq!(table.len(), FIXTURES.len(), "every fixture is in the table");
    for (name, expect) in table {
        let result = manifest::parse(bytes(name));
        match expect {
            Parsed {
                media_type,
                declared,
                kind,
                manifests,
                configs,
                layers,
                subjects,
            } => {
                let m = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(m.media_type(), *media_type, "{name}");
                assert!(manifest::is_manifest_media_type(m.media_type()), "{name}");
                assert_eq!(m.media_type_declared(), *declared, "{name}");
                assert_eq!(m.kind(), *kind, "{name}");
                let count = |r| m.children().iter().filter(|c| c.role == r).count();
                assert_eq!(
                    (
                        count(ChildRole::Manifest),
                        count(ChildRole::Config),
                        count(ChildRole::Layer),
                        count(ChildRole::Subject)
                    ),
                    (*manifests, *configs, *layers, *subjects),
                    "{name}"
                );
                assert_eq!(m.as_image_index().is_some(), *kind == Index, "{name}");
                assert_eq!(m.as_image_manifest().is_some(), *kind == Manifest, "{name}");
            }
            Schema1 => assert_eq!(result, Err(ManifestError::Schema1), "{name}"),
            NotAManifest => assert!(
                matches!(
                    result,
                    Err(ManifestError::UnknownShape) | Err(ManifestError::Invalid { .. })
                ),
                "{name}: {result:?}"
            ),
        }
    }
}

/// Children that name another fixture must carry its digest and size, and the digest must
/// verify against that fixture's bytes.
#[test]
fn children_digests_verify_against_fixtures() {
    let links = [
        (
            "oci-index-attestations.json",
            ChildRole::Manifest,
            "oci-manifest.json",
        ),
        (
            "docker-schema2-manifest.json",
            ChildRole::Config,
            "docker-schema2-config.json",
        ),
        (
            "docker-schema2-manifest-httpd.json",
            ChildRole::Config,
            "docker-schema2-config-httpd.json",
        ),
        (
            "oci-manifest-no-mediatype.json",
            ChildRole::Config,
            "oci-config.json",
        ),
        (
            "oci-artifact-manifest-subject.json",
            ChildRole::Subject,
            "oci-artifact-subject-index.json",
        ),
        (
            "oci-referrers-index.json",
            ChildRole::Manifest,
            "oci-artifact-manifest-subject.json",
        ),
    ];
    for (parent, role, target) in links {
        let m = manifest::parse(bytes(parent)).unwrap();
        let want = digest_of(target);
        let child = m
            .children()
            .iter()
            .find(|c| c.role == role && c.digest == want)
            .unwrap_or_else(|| panic!("{parent} has no {role:?} child {want}"));
        assert!(child.digest.verifies(bytes(target)), "{parent} → {target}");
        assert_eq!(
            child.size,
            bytes(target).len() as u64,
            "{parent} → {target}"
        );
    }
}

#[test]
fn descriptor_details() {
    // The empty config of an OCI artifact: `{}`.
    let m = manifest::parse(bytes("oci-artifact-manifest-subject.json")).unwrap();
    let config = &m.children()[0];
    assert_eq!(config.role, ChildRole::Config);
    assert_eq!(config.media_type, "application/vnd.oci.empty.v1+json");
    assert!(config.digest.verifies(b"{}"));
    assert_eq!(config.size, 2);
    assert_eq!(
        m.children()[1].media_type,
        "application/example.sbom.breakfast"
    );

    // The httpd manifest's config declares application/octet-stream (early Docker Hub).
    let m = manifest::parse(bytes("docker-schema2-manifest-httpd.json")).unwrap();
    assert_eq!(m.children()[0].media_type, "application/octet-stream");
    assert_eq!(
        m.children()[1].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    // Platforms of the Docker manifest list, in document order.
    let m = manifest::parse(bytes("docker-manifest-list.json")).unwrap();
    let platforms: Vec<(String, String, Option<String>)> = m
        .children()
        .iter()
        .map(|c| {
            let p = c.platform.clone().unwrap();
            (p.os, p.architecture, p.variant)
        })
        .collect();
    assert_eq!(platforms[0], ("linux".into(), "amd64".into(), None));
    assert_eq!(
        platforms[1],
        ("linux".into(), "arm".into(), Some("v5".into()))
    );
    assert_eq!(
        platforms[3],
        ("linux".into(), "arm64".into(), Some("v8".into()))
    );
    assert_eq!(platforms[6], ("linux".into(), "s390x".into(), None));
    assert!(
        m.children()
            .iter()
            .all(|c| c.media_type == manifest::DOCKER_MANIFEST)
    );

    // The attestation index: the arm64 entry is oci-manifest.json; attestations are unknown/unknown.
    let m = manifest::parse(bytes("oci-index-attestations.json")).unwrap();
    let arm64 = m
        .children()
        .iter()
        .find(|c| {
            c.platform
                .as_ref()
                .is_some_and(|p| p.architecture == "arm64")
        })
        .unwrap();
    assert_eq!(arm64.digest, digest_of("oci-manifest.json"));
    let unknown = m
        .children()
        .iter()
        .filter(|c| c.platform.as_ref().is_some_and(|p| p.os == "unknown"))
        .count();
    assert_eq!(unknown, 3);

    // Referrers index entries carry artifactType.
    let m = manifest::parse(bytes("oci-referrers-index.json")).unwrap();
    assert!(m.children().iter().all(|c| c.artifact_type.is_some()));
}

#[test]
fn tampered_fixtures_are_refused() {
    let original = std::str::from_utf8(bytes("oci-manifest.json")).unwrap();
    // oci-spec would accept this digest; speil must not.
    let tampered = original.replacen(
        "sha256:0b41f743fd4d78cb50ba86dd3b951b51458744109e1f5063a76bc5a792c3d8e7",
        "md5:zz",
        1,
    );
    assert_ne!(
        tampered, original,
        "the layer digest to tamper with is in the fixture"
    );
    assert!(matches!(
        manifest::parse(tampered.as_bytes()),
        Err(ManifestError::InvalidDigest { .. })
    ));
    // Uppercase hex is not a digest speil accepts either.
    let upper = original.replacen("sha256:0b41f743fd4d", "sha256:0B41F743FD4D", 1);
    assert!(manifest::parse(upper.as_bytes()).is_err());
    // A truncated document is refused with a JSON error.
    assert!(matches!(
        manifest::parse(&bytes("oci-manifest.json")[..100]),
        Err(ManifestError::NotJson(_))
    ));
}
