//! The peer-fetch client: the same request, sent to a peer's registry with
//! `X-Spegel-Mirrored: true`, and the facts of its answer for the core.

use std::net::SocketAddr;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use http_body_util::Empty;
use hyper::body::Incoming;
use speil_core::mirror::{ContentRange, FetchFailure, FetchResponse};
use speil_core::request::MIRRORED_HEADER;
use speil_driver::{PeerClient, PeerRequest, Runtime};

use crate::CHUNK_SIZE;
use crate::auth::Credentials;
use crate::body::ResponseBody;
use crate::pipe::PeerBody;

/// The `Docker-Content-Digest` header.
pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// The `OCI-Namespace` header.
pub const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");

/// The headers of a peer's answer that are relayed to the client.
const RELAYED: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    DOCKER_CONTENT_DIGEST,
    OCI_NAMESPACE,
];

/// The request to send to a peer, exactly as the core's `Fetch` names it:
/// `X-Spegel-Mirrored: true`, the rendered `Range`, the node's credentials.
pub fn peer_request(
    req: &PeerRequest,
    credentials: Option<&Credentials>,
) -> Result<Request<Empty<Bytes>>, http::Error> {
    let mut builder = Request::builder()
        .method(req.method.clone())
        .uri(req.path.as_str())
        .header(header::HOST, req.addr.to_string())
        .header(MIRRORED_HEADER, "true");
    if let Some(range) = req.range.header_value() {
        builder = builder.header(header::RANGE, range);
    }
    if let Some(c) = credentials {
        builder = builder.header(header::AUTHORIZATION, c.header().clone());
    }
    builder.body(Empty::new())
}

/// A peer's response whose head arrived, and where it came from.
pub struct PeerResponse {
    /// The peer's registry.
    pub addr: SocketAddr,
    /// The response; its body is the peer's connection.
    pub response: Response<PeerBody>,
}

/// The hyper client to peers' registries, on a runtime.
#[derive(Debug, Clone)]
pub struct HyperPeers<R> {
    rt: R,
    credentials: Option<Credentials>,
}

impl<R: Runtime> HyperPeers<R> {
    /// A client on `rt` that sends `credentials` (basic auth) when given.
    pub fn new(rt: R, credentials: Option<Credentials>) -> HyperPeers<R> {
        HyperPeers { rt, credentials }
    }
}

impl<R: Runtime> PeerClient for HyperPeers<R> {
    type Response = PeerResponse;

    fn fetch(
        &self,
        request: PeerRequest,
        connected: Box<dyn FnOnce() + Send>,
    ) -> BoxFuture<'static, Result<(FetchResponse, PeerResponse), FetchFailure>> {
        let rt = self.rt.clone();
        let built = peer_request(&request, self.credentials.as_ref());
        Box::pin(async move {
            let addr = request.addr;
            let req = built.map_err(|e| FetchFailure::Connect(e.to_string()))?;
            let response = fetch(&rt, addr, req, connected).await?;
            let facts = fetch_response(&response);
            let response = response.map(|b| b.map_err(Into::into).boxed_unsync());
            Ok((facts, PeerResponse { addr, response }))
        })
    }

    fn describe(&self, response: &PeerResponse) -> String {
        response.addr.to_string()
    }
}

/// Connects to `addr`, sends `req` and waits for the response's headers. `connected` is
/// called once the connection is up and the request is on its way.
async fn fetch<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    req: Request<Empty<Bytes>>,
    connected: impl FnOnce(),
) -> Result<Response<Incoming>, FetchFailure> {
    let io = rt
        .connect(addr)
        .await
        .map_err(|e| FetchFailure::Connect(format!("{addr}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // Bounds the bytes buffered per fetch.
        .max_buf_size(CHUNK_SIZE)
        .handshake::<_, Empty<Bytes>>(rt.hyper_tcp(io))
        .await
        .map_err(|e| FetchFailure::Connect(format!("{addr}: {e}")))?;
    rt.spawn(Box::pin(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "peer connection ended");
        }
    }));
    let response = sender.send_request(req);
    connected();
    response
        .await
        .map_err(|e| FetchFailure::Broken(format!("{addr}: {e}")))
}

/// The facts of a peer's answer the core decides on.
pub fn fetch_response<B>(response: &Response<B>) -> FetchResponse {
    let headers = response.headers();
    FetchResponse {
        status: response.status().as_u16(),
        digest: headers
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        content_length: content_length(headers),
        content_range: headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range),
    }
}

/// The `Content-Length` header, when present and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Parses `bytes <start>-<end>/<size>` (inclusive end, `start <= end < size`).
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, size) = rest.split_once('/')?;
    let (start, end) = span.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (start, end, size) = (number(start)?, number(end)?, number(size)?);
    (start <= end && end < size).then_some(ContentRange { start, end, size })
}

/// The client's response: the peer's status and relayed headers, with `body`.
pub fn relay(parts: http::response::Parts, body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    for name in RELAYED {
        for value in parts.headers.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

/// A header value from a number.
pub(crate) fn number_value(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

#[cfg(test)]
mod tests {
    use speil_core::mirror::FetchRange;

    use super::*;

    #[test]
    fn peer_requests_to_ipv6_peers_have_a_bracketed_host() {
        let at = |addr: &str, range| {
            PeerRequest {
            addr: addr.parse().unwrap(),
            method: http::Method::GET,
            path: "/v2/library/x/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000?ns=registry.test%3A5000".into(),
            range,
        }
        };
        let r = peer_request(&at("[2001:db8::12]:5000", FetchRange::Whole), None).unwrap();
        assert_eq!(r.headers()[header::HOST], "[2001:db8::12]:5000");
        assert_eq!(r.headers()["x-spegel-mirrored"], "true");
        assert!(r.headers().get(header::RANGE).is_none());
        let r = peer_request(
            &at("192.0.2.12:5000", FetchRange::FromTo { start: 5, end: 9 }),
            None,
        )
        .unwrap();
        assert_eq!(r.headers()[header::HOST], "192.0.2.12:5000");
        assert_eq!(r.headers()[header::RANGE], "bytes=5-9");
        assert!(r.uri().to_string().ends_with("?ns=registry.test%3A5000"));
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-9/10"),
            Some(ContentRange {
                start: 0,
                end: 9,
                size: 10
            })
        );
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes 0-1/99999999999999999999"), None);
    }
}
