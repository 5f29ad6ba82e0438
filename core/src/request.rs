//! Registry request parsing (SPEC.md §2): method + path and query + headers → a typed
//! [`RegistryRequest`], or the [`OciError`] to answer with.
//!
//! Routes: `GET|HEAD /v2/` (and `/v2`), `GET|HEAD /v2/<name>/manifests/<tag-or-digest>`,
//! `GET|HEAD /v2/<name>/blobs/<digest>`, `GET /readyz`, `GET /livez`. Other methods on these
//! routes are 405, other paths 404. Input is bounded before it is looked at (path and query
//! ≤ [`PATH_MAX`] bytes, headers ≤ [`HEADERS_MAX`] bytes), and only validated parts are copied.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::digest::Digest;
use crate::error::{OciError, echo};
use crate::keys::Key;
use crate::range::ByteRange;
use crate::reference::{is_valid_name, is_valid_registry_host, is_valid_tag};

/// Longest path and query accepted (bytes); longer → 414.
pub const PATH_MAX: usize = 4096;
/// Largest total header size accepted (bytes, counting `name: value\r\n`); larger → 431.
pub const HEADERS_MAX: usize = 16 * 1024;
/// The header that marks a request forwarded by a peer (Spegel's name).
pub const MIRRORED_HEADER: &str = "x-spegel-mirrored";

const GET_HEAD: &str = "GET, HEAD";

/// A parsed registry request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryRequest {
    /// `GET|HEAD /v2/`: the API version check, answered 200 with an empty body.
    Ping {
        /// Whether the method was HEAD.
        head: bool,
    },
    /// `GET /readyz`.
    Readyz,
    /// `GET /livez`.
    Livez,
    /// A manifest or blob request.
    Content(ContentRequest),
}

impl RegistryRequest {
    /// The key to look up in the store and the DHT, for content requests.
    pub fn key(&self) -> Option<Key> {
        match self {
            RegistryRequest::Content(c) => Some(c.key()),
            _ => None,
        }
    }

    /// The path and query this request was parsed from, in canonical form.
    pub fn path_and_query(&self) -> String {
        match self {
            RegistryRequest::Ping { .. } => "/v2/".to_owned(),
            RegistryRequest::Readyz => "/readyz".to_owned(),
            RegistryRequest::Livez => "/livez".to_owned(),
            RegistryRequest::Content(c) => c.path_and_query(),
        }
    }
}

/// What a content request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `/v2/<name>/manifests/<tag>`.
    ManifestTag(String),
    /// `/v2/<name>/manifests/<digest>`.
    ManifestDigest(Digest),
    /// `/v2/<name>/blobs/<digest>`.
    Blob(Digest),
}

/// The kind of a content request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    /// A manifest by tag.
    ManifestByTag,
    /// A manifest by digest.
    ManifestByDigest,
    /// A blob by digest.
    Blob,
}

/// A validated manifest or blob request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRequest {
    name: String,
    target: Target,
    ns: Option<String>,
    head: bool,
    range: Option<ByteRange>,
    mirrored: bool,
}

impl ContentRequest {
    /// The repository name (`library/alpine`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What is asked for.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The kind of request.
    pub fn kind(&self) -> ContentKind {
        match self.target {
            Target::ManifestTag(_) => ContentKind::ManifestByTag,
            Target::ManifestDigest(_) => ContentKind::ManifestByDigest,
            Target::Blob(_) => ContentKind::Blob,
        }
    }

    /// Whether a manifest is asked for (by tag or digest).
    pub fn is_manifest(&self) -> bool {
        !matches!(self.target, Target::Blob(_))
    }

    /// The digest asked for, when the request is by digest.
    pub fn digest(&self) -> Option<&Digest> {
        match &self.target {
            Target::ManifestDigest(d) | Target::Blob(d) => Some(d),
            Target::ManifestTag(_) => None,
        }
    }

    /// The tag asked for, when the request is by tag.
    pub fn tag(&self) -> Option<&str> {
        match &self.target {
            Target::ManifestTag(t) => Some(t),
            _ => None,
        }
    }

    /// The reference as it appears in the path (the tag or the digest).
    pub fn reference(&self) -> &str {
        match &self.target {
            Target::ManifestTag(t) => t,
            Target::ManifestDigest(d) | Target::Blob(d) => d.as_str(),
        }
    }

    /// The upstream registry from `?ns=` (decoded), e.g. `docker.io` or `127.0.0.1:5000`.
    /// Always present on tag requests.
    pub fn ns(&self) -> Option<&str> {
        self.ns.as_deref()
    }

    /// Whether the method was HEAD.
    pub fn head(&self) -> bool {
        self.head
    }

    /// The method to use when forwarding (`GET` or `HEAD`).
    pub fn method(&self) -> Method {
        if self.head { Method::HEAD } else { Method::GET }
    }

    /// The requested range (blob requests only).
    pub fn range(&self) -> Option<&ByteRange> {
        self.range.as_ref()
    }

    /// Whether the request came from a peer (`X-Spegel-Mirrored: true`): serve locally only.
    pub fn mirrored(&self) -> bool {
        self.mirrored
    }

    /// The key to look up: `<ns>/<name>:<tag>` for tags, the digest otherwise.
    pub fn key(&self) -> Key {
        match &self.target {
            Target::ManifestTag(tag) => Key::tag(self.ns.as_deref().unwrap_or(""), &self.name, tag),
            Target::ManifestDigest(d) | Target::Blob(d) => Key::digest(d),
        }
    }

    /// The canonical path and query: `/v2/<name>/<manifests|blobs>/<reference>[?ns=<enc>]`,
    /// with `ns` percent-encoded (every byte but `A-Za-z0-9-._~`).
    pub fn path_and_query(&self) -> String {
        let section = if self.is_manifest() {
            "manifests"
        } else {
            "blobs"
        };
        let mut out = format!("/v2/{}/{section}/{}", self.name, self.reference());
        if let Some(ns) = &self.ns {
            out.push_str("?ns=");
            percent_encode_into(ns, &mut out);
        }
        out
    }

    /// The headers to send to a peer when forwarding: `X-Spegel-Mirrored: true` and, when
    /// given, `Range: <range>` (the request's own range, or a resume range).
    pub fn peer_headers(&self, range: Option<&ByteRange>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(MIRRORED_HEADER),
            HeaderValue::from_static("true"),
        );
        if let Some(range) = range
            && let Ok(value) = HeaderValue::from_str(&range.to_string())
        {
            headers.insert(http::header::RANGE, value);
        }
        headers
    }

    /// The same request with another range (e.g. a resume range), for forwarding.
    pub fn with_range(&self, range: Option<ByteRange>) -> ContentRequest {
        ContentRequest {
            range,
            ..self.clone()
        }
    }
}

/// The size of `headers` as a request head carries them: each name and value with its `: `
/// and line end.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().fold(0usize, |n, (k, v)| {
        n.saturating_add(k.as_str().len() + v.len() + 4)
    })
}

/// Parses a request. `path_and_query` is the request target as received (`/v2/…?ns=…`).
pub fn parse_request(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<RegistryRequest, OciError> {
    let header_bytes = header_bytes(headers);
    if header_bytes > HEADERS_MAX {
        return Err(OciError::headers_too_large(header_bytes, HEADERS_MAX));
    }
    if path_and_query.len() > PATH_MAX {
        return Err(OciError::uri_too_long(path_and_query.len(), PATH_MAX));
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    let head = *method == Method::HEAD;
    let get_or_head = *method == Method::GET || head;

    match path {
        "/v2" | "/v2/" => {
            return if get_or_head {
                Ok(RegistryRequest::Ping { head })
            } else {
                Err(OciError::method_not_allowed(method, GET_HEAD))
            };
        }
        "/readyz" | "/livez" => {
            if *method != Method::GET {
                return Err(OciError::method_not_allowed(method, "GET"));
            }
            return Ok(if path == "/readyz" {
                RegistryRequest::Readyz
            } else {
                RegistryRequest::Livez
            });
        }
        _ => {}
    }

    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err(OciError::not_found(path));
    };
    let Some((prefix, reference)) = rest.rsplit_once('/') else {
        return Err(OciError::not_found(path));
    };
    let (name, manifest) = if let Some(name) = prefix.strip_suffix("/manifests") {
        (name, true)
    } else if let Some(name) = prefix.strip_suffix("/blobs") {
        (name, false)
    } else {
        return Err(OciError::not_found(path));
    };
    if name.is_empty() || reference.is_empty() {
        return Err(OciError::not_found(path));
    }
    if !get_or_head {
        return Err(OciError::method_not_allowed(method, GET_HEAD));
    }
    if !is_valid_name(name) {
        return Err(OciError::name_invalid(format!(
            "invalid repository name {:?}: lower-case path components \
             [a-z0-9]+((.|_|__|-+)[a-z0-9]+)* separated by '/', at most 255 characters",
            echo(name)
        )));
    }

    let target = if manifest {
        if reference.contains(':') {
            Target::ManifestDigest(parse_digest(reference)?)
        } else if is_valid_tag(reference) {
            Target::ManifestTag(reference.to_owned())
        } else {
            return Err(OciError::tag_invalid(format!(
                "invalid reference {:?}: neither a tag [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}} \
                 nor a digest",
                echo(reference)
            )));
        }
    } else {
        Target::Blob(parse_digest(reference)?)
    };

    let ns = parse_ns(query)?;
    if ns.is_none() && matches!(target, Target::ManifestTag(_)) {
        return Err(OciError::ns_missing());
    }

    let range = if manifest {
        None
    } else {
        parse_range(headers)?
    };
    let mirrored = headers
        .get_all(MIRRORED_HEADER)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));

    Ok(RegistryRequest::Content(ContentRequest {
        name: name.to_owned(),
        target,
        ns,
        head,
        range,
        mirrored,
    }))
}

fn parse_digest(s: &str) -> Result<Digest, OciError> {
    s.parse::<Digest>().map_err(|e| {
        OciError::digest_invalid(format!(
            "invalid digest {:?}: {e} (expected sha256:<64 hex> or sha512:<128 hex>)",
            echo(s)
        ))
    })
}

fn parse_range(headers: &HeaderMap) -> Result<Option<ByteRange>, OciError> {
    let mut values = headers.get_all(http::header::RANGE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OciError::range_invalid(
            "several Range headers: only one range per request is supported",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| OciError::range_invalid("Range header is not ASCII"))?;
    Ok(Some(ByteRange::parse(value)?))
}

/// Finds `ns` in the query string, percent-decodes and validates it.
fn parse_ns(query: &str) -> Result<Option<String>, OciError> {
    let mut found: Option<String> = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "ns" {
            continue;
        }
        if found.is_some() {
            return Err(OciError::name_invalid(
                "the ns query parameter is given more than once",
            ));
        }
        let decoded = percent_decode(value)
            .filter(|ns| is_valid_registry_host(ns))
            .ok_or_else(|| {
                OciError::name_invalid(format!(
                    "invalid ns {:?}: expected a registry host[:port] such as docker.io or \
                     127.0.0.1%3A5000",
                    echo(value)
                ))
            })?;
        found = Some(decoded);
    }
    Ok(found)
}

/// Decodes `%XX` escapes and `+` (as a space, like form encoding). `None` on a broken escape
/// or when the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex_value(*b.get(i + 1)?)?;
                let lo = hex_value(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes every byte of `s` but `A-Za-z0-9-._~` (a query value).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    percent_encode_into(s, &mut out);
    out
}

fn percent_encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use http::StatusCode;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn get(p: &str) -> Result<RegistryRequest, OciError> {
        parse_request(&Method::GET, p, &HeaderMap::new())
    }

    fn content(r: Result<RegistryRequest, OciError>) -> ContentRequest {
        match r {
            Ok(RegistryRequest::Content(c)) => c,
            other => panic!("not content: {other:?}"),
        }
    }

    fn err(r: Result<RegistryRequest, OciError>) -> (StatusCode, ErrorCode) {
        let e = r.expect_err("expected an error");
        (e.status, e.code)
    }

    #[test]
    fn ping_and_health() {
        assert_eq!(get("/v2/"), Ok(RegistryRequest::Ping { head: false }));
        assert_eq!(get("/v2"), Ok(RegistryRequest::Ping { head: false }));
        assert_eq!(
            parse_request(&Method::HEAD, "/v2/", &HeaderMap::new()),
            Ok(RegistryRequest::Ping { head: true })
        );
        assert_eq!(get("/readyz"), Ok(RegistryRequest::Readyz));
        assert_eq!(get("/livez"), Ok(RegistryRequest::Livez));
        let e = parse_request(&Method::POST, "/readyz", &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(get("/v2/").unwrap().key(), None);
    }

    #[test]
    fn manifest_by_tag_needs_ns() {
        let c = content(get("/v2/library/alpine/manifests/3.20?ns=docker.io"));
        assert_eq!(c.kind(), ContentKind::ManifestByTag);
        assert_eq!(c.name(), "library/alpine");
        assert_eq!(c.tag(), Some("3.20"));
        assert_eq!(c.ns(), Some("docker.io"));
        assert_eq!(c.key().as_str(), "docker.io/library/alpine:3.20");
        assert!(!c.head() && !c.mirrored() && c.range().is_none());

        let e = get("/v2/library/alpine/manifests/3.20").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("ns"), "{}", e.message);
    }

    #[test]
    fn ns_is_percent_decoded() {
        let c = content(get("/v2/test/small/manifests/v1?ns=127.0.0.1%3A5000"));
        assert_eq!(c.ns(), Some("127.0.0.1:5000"));
        assert_eq!(c.key().as_str(), "127.0.0.1:5000/test/small:v1");
        assert_eq!(
            c.path_and_query(),
            "/v2/test/small/manifests/v1?ns=127.0.0.1%3A5000"
        );
        let c = content(get("/v2/a/manifests/v1?x=1&ns=%5B%3A%3A1%5D%3A5000&y"));
        assert_eq!(c.ns(), Some("[::1]:5000"));
        for bad in [
            "ns=",
            "ns=a%2",
            "ns=a%zz",
            "ns=a%2Fb",
            "ns=a+b",
            "ns=%FF",
            "ns=a&ns=b",
        ] {
            assert_eq!(
                err(get(&format!("/v2/a/manifests/v1?{bad}"))),
                (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn digests_without_ns_are_served() {
        let c = content(get(&format!("/v2/library/alpine/manifests/{D}")));
        assert_eq!(c.kind(), ContentKind::ManifestByDigest);
        assert_eq!(c.ns(), None);
        assert_eq!(c.key().as_str(), D);
        let c = content(get(&format!("/v2/library/alpine/blobs/{D}?ns=docker.io")));
        assert_eq!(c.kind(), ContentKind::Blob);
        assert_eq!(c.digest().map(Digest::as_str), Some(D));
        assert_eq!(c.key().as_str(), D);
    }

    #[test]
    fn range_and_mirrored_headers() {
        let mut h = HeaderMap::new();
        h.insert(http::header::RANGE, HeaderValue::from_static("bytes=10-"));
        h.insert("X-Spegel-Mirrored", HeaderValue::from_static("true"));
        let c = content(parse_request(
            &Method::HEAD,
            &format!("/v2/a/blobs/{D}"),
            &h,
        ));
        assert_eq!(c.range(), Some(&ByteRange::From { start: 10 }));
        assert!(c.mirrored() && c.head());
        assert_eq!(c.method(), Method::HEAD);
        // Manifests ignore Range.
        let c = content(parse_request(
            &Method::GET,
            &format!("/v2/a/manifests/{D}"),
            &h,
        ));
        assert_eq!(c.range(), None);

        h.insert(
            http::header::RANGE,
            HeaderValue::from_static("bytes=1-2,4-5"),
        );
        assert_eq!(
            err(parse_request(&Method::GET, &format!("/v2/a/blobs/{D}"), &h)),
            (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
        );
        h.insert(http::header::RANGE, HeaderValue::from_static("garbage"));
        assert_eq!(
            err(parse_request(&Method::GET, &format!("/v2/a/blobs/{D}"), &h)),
            (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
        );
        let mut h = HeaderMap::new();
        h.insert("x-spegel-mirrored", HeaderValue::from_static("false"));
        assert!(!content(parse_request(&Method::GET, &format!("/v2/a/blobs/{D}"), &h)).mirrored());
    }

    #[test]
    fn errors_per_spec() {
        use StatusCode as S;
        assert_eq!(err(get("/")), (S::NOT_FOUND, ErrorCode::NotFound));
        assert_eq!(
            err(get("/v2/_catalog")),
            (S::NOT_FOUND, ErrorCode::NotFound)
        );
        assert_eq!(
            err(get("/v2/a/tags/list")),
            (S::NOT_FOUND, ErrorCode::NotFound)
        );
        assert_eq!(
            err(get("/v2/a/manifests/")),
            (S::NOT_FOUND, ErrorCode::NotFound)
        );
        assert_eq!(
            err(get("/v2//manifests/x")),
            (S::NOT_FOUND, ErrorCode::NotFound)
        );
        assert_eq!(
            err(get("/v3/a/manifests/x")),
            (S::NOT_FOUND, ErrorCode::NotFound)
        );
        assert_eq!(
            err(get("/v2/A/manifests/x?ns=docker.io")),
            (S::BAD_REQUEST, ErrorCode::NameInvalid)
        );
        assert_eq!(
            err(get("/v2/a/../b/blobs/x")),
            (S::BAD_REQUEST, ErrorCode::NameInvalid)
        );
        assert_eq!(
            err(get("/v2/a/blobs/sha256:abc")),
            (S::BAD_REQUEST, ErrorCode::DigestInvalid)
        );
        assert_eq!(
            err(get("/v2/a/blobs/latest")),
            (S::BAD_REQUEST, ErrorCode::DigestInvalid)
        );
        assert_eq!(
            err(get("/v2/a/manifests/md5:zz")),
            (S::BAD_REQUEST, ErrorCode::DigestInvalid)
        );
        assert_eq!(
            err(get("/v2/a/manifests/-bad?ns=docker.io")),
            (S::BAD_REQUEST, ErrorCode::TagInvalid)
        );
        for m in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            let e =
                parse_request(&m, "/v2/a/manifests/x?ns=docker.io", &HeaderMap::new()).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (S::METHOD_NOT_ALLOWED, ErrorCode::Unsupported)
            );
            assert_eq!(e.extra_headers()[0].1, "GET, HEAD");
        }
        assert_eq!(
            err(parse_request(&Method::DELETE, "/v2/", &HeaderMap::new())).0,
            S::METHOD_NOT_ALLOWED
        );
        // A name may contain a "manifests" component.
        let c = content(get("/v2/a/manifests/b/manifests/x?ns=docker.io"));
        assert_eq!(c.name(), "a/manifests/b");
    }

    #[test]
    fn bounded_input() {
        let long = format!("/v2/{}/manifests/x", "a/".repeat(3000));
        assert_eq!(get(&long).unwrap_err().status, StatusCode::URI_TOO_LONG);
        let mut h = HeaderMap::new();
        for i in 0..20 {
            h.insert(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_str(&"v".repeat(1000)).unwrap(),
            );
        }
        let e = parse_request(&Method::GET, "/v2/", &h).unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(e.code, ErrorCode::RequestTooLarge);
        // Garbage just under the path limit: the error echoes a bounded prefix only.
        let garbage = format!("/v2/{}/blobs/x", "\u{1F4A9}".repeat(1000));
        assert!(garbage.len() <= PATH_MAX);
        let e = get(&garbage).unwrap_err();
        assert_eq!(e.code, ErrorCode::NameInvalid);
        assert!(e.body().len() < 1024, "{}", e.body().len());
        let e = get(&format!("/{}", "x".repeat(4000))).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.body().len() < 1024);
    }

    #[test]
    fn peer_headers_and_render() {
        let c = content(get(&format!("/v2/a/b/blobs/{D}?ns=ghcr.io")));
        let h = c.peer_headers(Some(&ByteRange::From { start: 7 }));
        assert_eq!(h.get("x-spegel-mirrored").unwrap(), "true");
        assert_eq!(h.get(http::header::RANGE).unwrap(), "bytes=7-");
        assert!(c.peer_headers(None).get(http::header::RANGE).is_none());
        assert_eq!(c.path_and_query(), format!("/v2/a/b/blobs/{D}?ns=ghcr.io"));
        let c2 = c.with_range(Some(ByteRange::Suffix { len: 3 }));
        assert_eq!(c2.range(), Some(&ByteRange::Suffix { len: 3 }));
    }
}
