//! Property tests for the OCI protocol layer: parse∘render = id for references, requests and
//! ranges; no panic on arbitrary input for every parser; resolved ranges stay inside the blob.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use speil_core::manifest;
use speil_core::range::{ByteRange, ResolvedRange};
use speil_core::reference::{Reference, is_valid_name, is_valid_tag};
use speil_core::request::{ContentKind, RegistryRequest, Target, parse_request};
use speil_core::{Algorithm, Digest};

fn path_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
}

fn repository() -> impl Strategy<Value = String> {
    prop::collection::vec(path_component(), 1..4).prop_map(|c| c.join("/"))
}

fn registry() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("docker.io".to_owned()),
        Just("index.docker.io".to_owned()),
        Just("localhost".to_owned()),
        Just("[::1]:5000".to_owned()),
        Just("[fe80::1]".to_owned()),
        (1u8..=255, 0u8..=255, 1u16..=65535).prop_map(|(a, b, p)| format!("{a}.0.{b}.1:{p}")),
        "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){1,2}(:[1-9][0-9]{0,3})?",
        "localhost:[1-9][0-9]{0,4}".prop_filter("port", |s| s[10..].parse::<u16>().is_ok()),
    ]
}

fn tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
}

fn digest() -> impl Strategy<Value = Digest> {
    (prop::collection::vec(any::<u8>(), 0..16), any::<bool>()).prop_map(|(b, big)| {
        Digest::compute(
            if big {
                Algorithm::Sha512
            } else {
                Algorithm::Sha256
            },
            &b,
        )
    })
}

fn byte_range() -> impl Strategy<Value = ByteRange> {
    let n = prop_oneof![0u64..1000, 0u64..=9_999_999_999_999_999_999];
    prop_oneof![
        (n.clone(), n.clone()).prop_map(|(a, b)| ByteRange::FromTo {
            start: a.min(b),
            end: a.max(b)
        }),
        n.clone().prop_map(|start| ByteRange::From { start }),
        n.prop_map(|len| ByteRange::Suffix { len }),
    ]
}

/// Arbitrary header values, including non-ASCII and empty ones.
fn header_map() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        Just("range".to_owned()),
        Just("x-spegel-mirrored".to_owned()),
        "[a-z-]{1,20}",
    ];
    let value = prop::collection::vec(any::<u8>(), 0..64);
    prop::collection::vec((name, value), 0..6).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(&v),
            ) {
                h.append(n, v);
            }
        }
        h
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::PUT),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::OPTIONS),
        "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap_or(Method::GET)),
    ]
}

/// Path-like strings: mostly the shapes the router looks at, with garbage mixed in.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/v2".to_owned()),
        Just("/".to_owned()),
        Just("manifests".to_owned()),
        Just("blobs".to_owned()),
        Just("?ns=".to_owned()),
        Just("%3A".to_owned()),
        Just("%".to_owned()),
        Just("sha256:".to_owned()),
        "[a-z0-9._:-]{0,8}",
        ".{0,8}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn reference_parse_render_roundtrip(
        reg in registry(),
        repo in repository(),
        t in prop::option::of(tag()),
        d in prop::option::of(digest()),
    ) {
        let r = match Reference::new(&reg, &repo, t.as_deref(), d.clone()) {
            Ok(r) => r,
            // Only the total-length bound may refuse generated parts.
            Err(e) => {
                prop_assert!(reg.len() + repo.len() + 9 > 255, "{e}");
                return Ok(());
            }
        };
        let rendered = r.to_string();
        let parsed: Reference = rendered.parse().unwrap();
        prop_assert_eq!(&parsed, &r);
        prop_assert_eq!(parsed.to_string(), rendered);
        prop_assert_eq!(r.tag(), t.as_deref());
        prop_assert_eq!(r.digest(), d.as_ref());
        if reg == "index.docker.io" {
            prop_assert_eq!(r.registry(), "docker.io");
        }
        if r.registry() == "docker.io" && !repo.contains('/') {
            prop_assert_eq!(r.repository(), format!("library/{repo}"));
        } else {
            prop_assert_eq!(r.repository(), repo.as_str());
        }
    }

    #[test]
    fn reference_never_panics_and_is_idempotent(s in ".{0,300}") {
        if let Ok(r) = s.parse::<Reference>() {
            prop_assert!(is_valid_name(r.repository()));
            if let Some(t) = r.tag() {
                prop_assert!(is_valid_tag(t));
            }
            prop_assert_eq!(r.to_string().parse::<Reference>().unwrap(), r);
        }
    }

    #[test]
    fn reference_shaped_garbage_never_panics(
        parts in prop::collection::vec(
            prop_oneof!["[a-zA-Z0-9]{0,5}", Just("/".to_owned()), Just(":".to_owned()),
                        Just("@".to_owned()), Just("[".to_owned()), Just("]".to_owned()),
                        Just(".".to_owned()), Just("-".to_owned()), Just("_".to_owned())],
            0..20)
    ) {
        let s = parts.concat();
        if let Ok(r) = s.parse::<Reference>() {
            prop_assert_eq!(r.to_string().parse::<Reference>().unwrap(), r);
        }
    }

    #[test]
    fn range_parse_render_roundtrip(r in byte_range()) {
        let s = r.to_string();
        prop_assert_eq!(ByteRange::parse(&s), Ok(r));
    }

    #[test]
    fn range_parse_never_panics(s in ".{0,300}") {
        if let Ok(r) = ByteRange::parse(&s) {
            prop_assert_eq!(ByteRange::parse(&r.to_string()), Ok(r));
        }
    }

    #[test]
    fn resolved_range_is_inside_the_blob(r in byte_range(), size in prop_oneof![0u64..2000, any::<u64>()]) {
        match r.resolve(size) {
            Ok(res) => {
                prop_assert!(res.start <= res.end);
                prop_assert!(res.end < size);
                prop_assert_eq!(res.len(), res.end - res.start + 1);
                prop_assert_eq!(res.content_range(size), format!("bytes {}-{}/{}", res.start, res.end, size));
            }
            Err(e) => {
                prop_assert_eq!(e.size, size);
                // Unsatisfiable only when nothing of the range lies in the blob.
                let satisfiable = size > 0 && match r {
                    ByteRange::FromTo { start, .. } | ByteRange::From { start } => start < size,
                    ByteRange::Suffix { len } => len > 0,
                };
                prop_assert!(!satisfiable, "{r} on {size} refused");
            }
        }
    }

    #[test]
    fn resume_continues_exactly(r in byte_range(), size in 1u64..5000, frac in 0.0f64..1.2) {
        let Ok(res) = r.resolve(size) else { return Ok(()); };
        let written = ((res.len() as f64) * frac) as u64;
        match ByteRange::resume(Some(&r), size, written) {
            Some(rest) => {
                let rest = rest.resolve(size).unwrap();
                prop_assert_eq!((rest.start, rest.end), (res.start + written, res.end));
            }
            None => prop_assert!(written >= res.len()),
        }
        match res.resume(written) {
            Some(rest) => prop_assert_eq!(rest, ByteRange::FromTo { start: res.start + written, end: res.end }),
            None => prop_assert!(written >= res.len()),
        }
        let full = ResolvedRange::full(size).unwrap();
        let w = written.min(size - 1);
        let rest = ByteRange::resume(None, size, w).unwrap().resolve(size).unwrap();
        prop_assert_eq!((rest.start, rest.end), (w, full.end));
    }

    #[test]
    fn request_parse_render_roundtrip(
        name in repository(),
        kind in 0u8..3,
        t in tag(),
        d in digest(),
        ns in prop::option::of(registry()),
        head in any::<bool>(),
        range in prop::option::of(byte_range()),
        mirrored in any::<bool>(),
    ) {
        let ns = if kind == 0 { Some(ns.unwrap_or_else(|| "docker.io".into())) } else { ns };
        let (section, reference) = match kind {
            0 => ("manifests", t.clone()),
            1 => ("manifests", d.to_string()),
            _ => ("blobs", d.to_string()),
        };
        let mut path = format!("/v2/{name}/{section}/{reference}");
        if let Some(ns) = &ns {
            // Encode the way containerd does (':' as %3A), with brackets encoded as well.
            path.push_str("?ns=");
            path.push_str(&ns.replace(':', "%3A").replace('[', "%5B").replace(']', "%5D"));
        }
        let mut headers = HeaderMap::new();
        if let Some(r) = &range {
            headers.insert(http::header::RANGE, HeaderValue::from_str(&r.to_string()).unwrap());
        }
        if mirrored {
            headers.insert("x-spegel-mirrored", HeaderValue::from_static("true"));
        }
        let method = if head { Method::HEAD } else { Method::GET };
        let parsed = parse_request(&method, &path, &headers).unwrap();
        let RegistryRequest::Content(c) = &parsed else { panic!("not content") };
        prop_assert_eq!(c.name(), name.as_str());
        prop_assert_eq!(c.ns(), ns.as_deref());
        prop_assert_eq!(c.head(), head);
        prop_assert_eq!(c.mirrored(), mirrored);
        prop_assert_eq!(c.reference(), reference.as_str());
        match kind {
            0 => {
                prop_assert_eq!(c.kind(), ContentKind::ManifestByTag);
                prop_assert_eq!(c.target(), &Target::ManifestTag(t.clone()));
                prop_assert_eq!(c.key().to_string(), format!("{}/{name}:{t}", ns.as_deref().unwrap()));
            }
            1 => {
                prop_assert_eq!(c.kind(), ContentKind::ManifestByDigest);
                prop_assert_eq!(c.key().to_string(), d.to_string());
            }
            _ => {
                prop_assert_eq!(c.kind(), ContentKind::Blob);
                prop_assert_eq!(c.range(), range.as_ref());
                prop_assert_eq!(c.key().to_string(), d.to_string());
            }
        }
        prop_assert_eq!(c.path_and_query(), path.clone());
        // Render, parse again with the peer headers: the same request, marked mirrored.
        let rendered = parsed.path_and_query();
        let reparsed = parse_request(&c.method(), &rendered, &c.peer_headers(c.range())).unwrap();
        let RegistryRequest::Content(c2) = reparsed else { panic!("not content") };
        prop_assert!(c2.mirrored());
        prop_assert_eq!(c2.path_and_query(), rendered);
        prop_assert_eq!(c2.range(), c.range());
        prop_assert_eq!(c2.target(), c.target());
        prop_assert_eq!(c2.ns(), c.ns());
        prop_assert_eq!(c2.key(), c.key());
    }

    #[test]
    fn request_never_panics(m in method(), p in path_like(), h in header_map()) {
        match parse_request(&m, &p, &h) {
            Ok(r) => {
                // Whatever parses renders to something that parses to the same request.
                let again = parse_request(&m, &r.path_and_query(), &h).unwrap();
                prop_assert_eq!(again, r);
            }
            Err(e) => {
                prop_assert!(e.status.is_client_error(), "{e}");
                let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
                prop_assert_eq!(body["errors"][0]["code"].as_str(), Some(e.code.as_str()));
                prop_assert!(e.body().len() < 2048);
            }
        }
    }

    #[test]
    fn request_arbitrary_strings_never_panic(p in ".{0,600}", h in header_map()) {
        let _ = parse_request(&Method::GET, &p, &h);
        let _ = parse_request(&Method::GET, &format!("/v2/{p}"), &h);
    }

    #[test]
    fn manifest_never_panics_on_bytes(b in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = manifest::parse(&b);
    }

    #[test]
    fn manifest_never_panics_on_mutated_json(
        pos in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        insert in "[\\[\\]{}\":,a-z0-9 ]{0,8}",
    ) {
        let base: &[u8] = include_bytes!("fixtures/oci/oci-artifact-manifest-subject.json");
        let at = pos.index(base.len());
        let end = (at + cut.index(16)).min(base.len());
        let mut b = base[..at].to_vec();
        b.extend_from_slice(insert.as_bytes());
        b.extend_from_slice(&base[end..]);
        if let Ok(m) = manifest::parse(&b) {
            prop_assert!(manifest::is_manifest_media_type(m.media_type()));
            for c in m.children() {
                prop_assert!(c.digest.as_str().parse::<Digest>().is_ok());
            }
        }
    }
}
