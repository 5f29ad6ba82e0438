//! OCI error codes and the JSON error body (SPEC.md §2).
//!
//! Every response speil sends for bad input or missing content is an [`OciError`]: an HTTP
//! status, a code from the distribution specification, a message that says what went wrong,
//! an optional structured detail, and the few extra headers some statuses need (`Allow` on
//! 405, `Content-Range: bytes */<size>` on an unsatisfiable 416, `WWW-Authenticate` on 401).
//! The body is `{"errors":[{"code":"…","message":"…","detail":…}]}` with
//! `Content-Type: application/json`.

use std::fmt;

use http::header::{ALLOW, CONTENT_RANGE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::digest::Digest;

/// Longest piece of client input echoed back in an error message or detail.
const ECHO_MAX: usize = 256;

/// An error code of the OCI distribution specification, plus the few speil needs for routes
/// the specification does not cover (marked as speil's own below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`: the blob is not known to this registry.
    BlobUnknown,
    /// `MANIFEST_UNKNOWN`: the manifest (by tag or digest) is not known, or the digest names a
    /// blob that is not a manifest.
    ManifestUnknown,
    /// `MANIFEST_INVALID`: a manifest could not be parsed or is not acceptable.
    ManifestInvalid,
    /// `NAME_INVALID`: the repository name (or the `ns` registry) is malformed.
    NameInvalid,
    /// `NAME_UNKNOWN`: the repository is not known (e.g. a registry that is not mirrored).
    NameUnknown,
    /// `TAG_INVALID`: the reference is neither a valid tag nor a digest.
    TagInvalid,
    /// `DIGEST_INVALID`: the digest is malformed or uses an unsupported algorithm.
    DigestInvalid,
    /// `UNAUTHORIZED`: authentication is required.
    Unauthorized,
    /// `DENIED`: access to the resource is denied.
    Denied,
    /// `UNSUPPORTED`: the operation (method, or request shape) is not supported.
    Unsupported,
    /// `RANGE_INVALID`: the `Range` header is malformed or cannot be satisfied.
    RangeInvalid,
    /// `UNAVAILABLE`: the service is not ready.
    Unavailable,
    /// `NOT_FOUND` (speil's own): the path is not a route speil serves.
    NotFound,
    /// `REQUEST_TOO_LARGE` (speil's own): the path or the headers exceed speil's bounds.
    RequestTooLarge,
}

impl ErrorCode {
    /// The code as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RequestTooLarge => "REQUEST_TOO_LARGE",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a content request was not served: a small fixed set, so that it can label a metric
/// (`speil_not_found_total{reason}`) without letting clients choose label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailReason {
    /// The request's registry (`ns`) is not one this node mirrors.
    NotMirrored,
    /// A registry filter excludes the repository or tag.
    Filtered,
    /// A peer asked for content this node does not hold.
    NotPresent,
    /// The content store did not answer.
    StoreUnavailable,
    /// No peer announced the content in time.
    NoPeer,
    /// Peers announced it, but every attempt to fetch from them failed.
    AllAttemptsFailed,
    /// The client's range lies outside the content (416).
    RangeNotSatisfiable,
    /// The content is larger than its kind may be (a manifest over 4 MiB).
    TooLarge,
    /// Too many requests are being mirrored, or too many DHT lookups run, to start another.
    Busy,
}

impl FailReason {
    /// Every reason, in label order.
    pub const ALL: [FailReason; 9] = [
        FailReason::NotMirrored,
        FailReason::Filtered,
        FailReason::NotPresent,
        FailReason::StoreUnavailable,
        FailReason::NoPeer,
        FailReason::AllAttemptsFailed,
        FailReason::RangeNotSatisfiable,
        FailReason::TooLarge,
        FailReason::Busy,
    ];

    /// The metric label value (`not_mirrored`, `filtered`, `not_present`, `store_unavailable`,
    /// `no_peer`, `all_attempts_failed`, `range_not_satisfiable`, `too_large`, `busy`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::NotMirrored => "not_mirrored",
            FailReason::Filtered => "filtered",
            FailReason::NotPresent => "not_present",
            FailReason::StoreUnavailable => "store_unavailable",
            FailReason::NoPeer => "no_peer",
            FailReason::AllAttemptsFailed => "all_attempts_failed",
            FailReason::RangeNotSatisfiable => "range_not_satisfiable",
            FailReason::TooLarge => "too_large",
            FailReason::Busy => "busy",
        }
    }
}

/// An error response: status, OCI code, message, optional detail and extra headers.
#[derive(Debug, Clone, PartialEq)]
pub struct OciError {
    /// The HTTP status to answer with.
    pub status: StatusCode,
    /// The OCI error code.
    pub code: ErrorCode,
    /// A human-readable message saying what went wrong.
    pub message: String,
    /// Optional structured detail (rendered as `detail`).
    pub detail: Option<serde_json::Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl OciError {
    /// An error with the given status, code and message, no detail and no extra headers.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> OciError {
        OciError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Sets the structured detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> OciError {
        self.detail = Some(detail);
        self
    }

    /// Adds a header to send with the error response.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> OciError {
        self.headers.push((name, value));
        self
    }

    /// Headers the response must carry besides `Content-Type` and `Content-Length`.
    pub fn extra_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// 404 `BLOB_UNKNOWN` for `digest`, with `reason` as the message.
    pub fn blob_unknown(digest: &Digest, reason: impl Into<String>) -> OciError {
        OciError::new(StatusCode::NOT_FOUND, ErrorCode::BlobUnknown, reason)
            .with_detail(serde_json::json!({ "digest": digest.as_str() }))
    }

    /// 404 `MANIFEST_UNKNOWN` for `reference` (a tag or a digest), with `reason` as the message.
    pub fn manifest_unknown(reference: &str, reason: impl Into<String>) -> OciError {
        OciError::new(StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown, reason)
            .with_detail(serde_json::json!({ "reference": echo(reference) }))
    }

    /// 404 `NAME_UNKNOWN`: the repository or registry is not served here.
    pub fn name_unknown(message: impl Into<String>) -> OciError {
        OciError::new(StatusCode::NOT_FOUND, ErrorCode::NameUnknown, message)
    }

    /// 400 `NAME_INVALID`.
    pub fn name_invalid(message: impl Into<String>) -> OciError {
        OciError::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, message)
    }

    /// 400 `TAG_INVALID`.
    pub fn tag_invalid(message: impl Into<String>) -> OciError {
        OciError::new(StatusCode::BAD_REQUEST, ErrorCode::TagInvalid, message)
    }

    /// 400 `DIGEST_INVALID`.
    pub fn digest_invalid(message: impl Into<String>) -> OciError {
        OciError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, message)
    }

    /// 400 `UNSUPPORTED`: a tag request without the `ns` query parameter.
    pub fn ns_missing() -> OciError {
        OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported,
            "a manifest request by tag needs the ns query parameter naming the registry \
             (e.g. ?ns=docker.io); requests by digest do not",
        )
        .with_detail(serde_json::json!({ "parameter": "ns" }))
    }

    /// 401 `UNAUTHORIZED`, with `WWW-Authenticate: Basic realm="speil"`.
    pub fn unauthorized() -> OciError {
        OciError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "authentication required",
        )
        .with_header(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"speil\""),
        )
    }

    /// 405 `UNSUPPORTED` for `method` on a route that only serves `allow`
    /// (e.g. `"GET, HEAD"`), with the `Allow` header.
    pub fn method_not_allowed(method: &Method, allow: &'static str) -> OciError {
        OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!(
                "method {} is not supported: speil serves only {allow}",
                echo(method.as_str())
            ),
        )
        .with_header(ALLOW, HeaderValue::from_static(allow))
    }

    /// 404 `NOT_FOUND`: `path` is not a route speil serves.
    pub fn not_found(path: &str) -> OciError {
        OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such route: speil serves /v2/, /v2/<name>/manifests/<reference>, \
             /v2/<name>/blobs/<digest>, /readyz and /livez",
        )
        .with_detail(serde_json::json!({ "path": echo(path) }))
    }

    /// 416 `RANGE_INVALID` for a malformed `Range` header (the size is not known yet).
    pub fn range_invalid(message: impl Into<String>) -> OciError {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::RangeInvalid,
            message,
        )
    }

    /// 416 `RANGE_INVALID` for a range that lies outside a blob of `size` bytes, with
    /// `Content-Range: bytes */<size>`.
    pub fn range_not_satisfiable(size: u64) -> OciError {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::RangeInvalid,
            format!("requested range is outside the blob of {size} bytes"),
        )
        .with_header(CONTENT_RANGE, content_range_unsatisfied(size))
    }

    /// 414 `REQUEST_TOO_LARGE`: the path and query are `len` bytes, more than `max`.
    pub fn uri_too_long(len: usize, max: usize) -> OciError {
        OciError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::RequestTooLarge,
            format!("request path is {len} bytes, the limit is {max}"),
        )
    }

    /// 431 `REQUEST_TOO_LARGE`: the headers are `len` bytes, more than `max`.
    pub fn headers_too_large(len: usize, max: usize) -> OciError {
        OciError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::RequestTooLarge,
            format!("request headers are {len} bytes, the limit is {max}"),
        )
    }

    /// 503 `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> OciError {
        OciError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }

    /// The JSON body: `{"errors":[{"code":…,"message":…,"detail":…}]}` (`detail` omitted
    /// when there is none).
    pub fn body(&self) -> Vec<u8> {
        let mut entry = serde_json::Map::new();
        entry.insert("code".into(), self.code.as_str().into());
        entry.insert("message".into(), self.message.clone().into());
        if let Some(detail) = &self.detail {
            entry.insert("detail".into(), detail.clone());
        }
        let body = serde_json::json!({ "errors": [serde_json::Value::Object(entry)] });
        // Serialising a `Value` cannot fail: its keys are strings.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The body's content type, `application/json`.
    pub fn content_type(&self) -> &'static str {
        "application/json"
    }
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for OciError {}

/// `bytes */<size>`, the `Content-Range` of an unsatisfiable range.
fn content_range_unsatisfied(size: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes */{size}"))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

/// Client input cut to at most [`ECHO_MAX`] bytes (on a character boundary).
pub(crate) fn echo(s: &str) -> &str {
    if s.len() <= ECHO_MAX {
        return s;
    }
    let mut end = ECHO_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_oci_json() {
        let d = Digest::sha256_of(b"x");
        let e = OciError::blob_unknown(&d, "could not find peer for x");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "could not find peer for x");
        assert_eq!(v["errors"][0]["detail"]["digest"], d.as_str());
        assert_eq!(e.content_type(), "application/json");
    }

    #[test]
    fn detail_omitted_when_none() {
        let e = OciError::name_invalid("bad");
        assert_eq!(
            String::from_utf8(e.body()).unwrap(),
            r#"{"errors":[{"code":"NAME_INVALID","message":"bad"}]}"#
        );
    }

    #[test]
    fn range_not_satisfiable_carries_content_range() {
        let e = OciError::range_not_satisfiable(42);
        assert_eq!(e.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(e.code, ErrorCode::RangeInvalid);
        assert_eq!(
            e.extra_headers(),
            &[(CONTENT_RANGE, HeaderValue::from_static("bytes */42"))]
        );
    }

    #[test]
    fn method_not_allowed_has_allow() {
        let e = OciError::method_not_allowed(&Method::PUT, "GET, HEAD");
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.code.as_str(), "UNSUPPORTED");
        assert_eq!(e.extra_headers()[0].0, ALLOW);
        assert!(e.message.contains("PUT"));
    }

    #[test]
    fn echo_is_bounded() {
        let long = "é".repeat(1000);
        let cut = echo(&long);
        assert!(cut.len() <= ECHO_MAX);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(echo("short"), "short");
    }
}
