//! Message heads: request and response parsing with `httparse`, `http` types out.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version, request, response};

use crate::Error;

/// The outcome of parsing input that may end early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T> {
    /// The input holds a whole head.
    Complete(T),
    /// The input ends before the head does: read more and parse the longer input again.
    Partial,
}

impl<T> Status<T> {
    /// The complete value, if any.
    pub fn complete(self) -> Option<T> {
        match self {
            Status::Complete(t) => Some(t),
            Status::Partial => None,
        }
    }
}

/// Bounds on a message head. The values are the caller's policy; the defaults (8 KiB, 64
/// fields) are a reasonable choice for a small server, not a rule of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of a head, from the first byte through the blank line.
    pub max_head_bytes: usize,
    /// The most header fields.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            max_headers: 64,
        }
    }
}

/// Parses a request head at the start of `buf`: its parts and the length of the head (the body,
/// or the next message, starts there). Only the first [`Limits::max_head_bytes`] bytes are
/// looked at; a head that does not end within them is [`Error::HeadTooLarge`].
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<Status<(request::Parts, usize)>, Error> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return partial(buf, limits),
        Err(e) => return Err(from_httparse(e)),
    };
    let (method, path, version) = match (req.method, req.path, req.version) {
        (Some(m), Some(p), Some(v)) => (m, p, v),
        _ => return Err(Error::Malformed),
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::from_bytes(method.as_bytes()).map_err(|_| Error::Malformed)?;
    parts.uri = Uri::try_from(path).map_err(|_| Error::Malformed)?;
    parts.version = version_of(version)?;
    parts.headers = header_map(req.headers)?;
    Ok(Status::Complete((parts, len)))
}

/// Parses a response head at the start of `buf`, as [`parse_request`] does a request head. The
/// reason phrase is not kept.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
) -> Result<Status<(response::Parts, usize)>, Error> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return partial(buf, limits),
        Err(e) => return Err(from_httparse(e)),
    };
    let (code, version) = match (resp.code, resp.version) {
        (Some(c), Some(v)) => (c, v),
        _ => return Err(Error::Malformed),
    };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(code).map_err(|_| Error::Malformed)?;
    parts.version = version_of(version)?;
    parts.headers = header_map(resp.headers)?;
    Ok(Status::Complete((parts, len)))
}

fn partial<T>(buf: &[u8], limits: &Limits) -> Result<Status<T>, Error> {
    if buf.len() >= limits.max_head_bytes {
        Err(Error::HeadTooLarge)
    } else {
        Ok(Status::Partial)
    }
}

fn from_httparse(e: httparse::Error) -> Error {
    match e {
        httparse::Error::TooManyHeaders => Error::TooManyHeaders,
        _ => Error::Malformed,
    }
}

fn version_of(minor: u8) -> Result<Version, Error> {
    match minor {
        0 => Ok(Version::HTTP_10),
        1 => Ok(Version::HTTP_11),
        _ => Err(Error::Malformed),
    }
}

fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Error::Malformed)?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| Error::Malformed)?;
        map.try_append(name, value)
            .map_err(|_| Error::TooManyHeaders)?;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(None)` for partial, `Ok(Some(len))` for complete (the parts have no `PartialEq`).
    fn summary<P>(r: Result<Status<(P, usize)>, Error>) -> Result<Option<usize>, Error> {
        r.map(|s| s.complete().map(|(_, n)| n))
    }

    const GET: &[u8] = b"GET /v2/x/blobs/sha256:ab?ns=docker.io HTTP/1.1\r\nHost: [::1]:5000\r\nRange: bytes=0-9\r\nX-Two: a\r\nx-two: b\r\n\r\nBODY";

    #[test]
    fn request_head() {
        let (parts, len) = parse_request(GET, &Limits::default())
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(len, GET.len() - 4);
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/v2/x/blobs/sha256:ab");
        assert_eq!(parts.uri.query(), Some("ns=docker.io"));
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "[::1]:5000");
        assert_eq!(parts.headers["range"], "bytes=0-9");
        let twos: Vec<_> = parts.headers.get_all("x-two").iter().collect();
        assert_eq!(twos, ["a", "b"]);
    }

    #[test]
    fn every_split_point_of_a_request_is_partial() {
        let head = &GET[..GET.len() - 4];
        for cut in 0..head.len() {
            assert_eq!(
                summary(parse_request(&head[..cut], &Limits::default())),
                Ok(None),
                "cut at {cut}: {:?}",
                String::from_utf8_lossy(&head[..cut])
            );
        }
        assert!(matches!(
            parse_request(head, &Limits::default()),
            Ok(Status::Complete((_, n))) if n == head.len()
        ));
    }

    #[test]
    fn every_split_point_of_a_response_is_partial() {
        let head = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/100\r\n\r\n";
        for cut in 0..head.len() {
            assert_eq!(
                summary(parse_response(&head[..cut], &Limits::default())),
                Ok(None),
                "cut at {cut}"
            );
        }
        let (parts, len) = parse_response(head, &Limits::default())
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(len, head.len());
        assert_eq!(parts.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(parts.headers["content-range"], "bytes 0-9/100");
    }

    #[test]
    fn limits() {
        let tight = Limits {
            max_head_bytes: 40,
            max_headers: 2,
        };
        assert_eq!(
            summary(parse_request(GET, &tight)),
            Err(Error::HeadTooLarge)
        );
        // Partial input already at the limit is too large, not partial.
        assert_eq!(
            summary(parse_request(&GET[..40], &tight)),
            Err(Error::HeadTooLarge)
        );
        assert_eq!(summary(parse_request(&GET[..39], &tight)), Ok(None));
        let few = Limits {
            max_head_bytes: 8192,
            max_headers: 2,
        };
        assert_eq!(
            summary(parse_request(GET, &few)),
            Err(Error::TooManyHeaders)
        );
        let none = Limits {
            max_head_bytes: 8192,
            max_headers: 0,
        };
        assert!(parse_request(b"GET / HTTP/1.1\r\n\r\n", &none).is_ok());
        // A head that ends exactly at the limit is accepted.
        let head = b"GET / HTTP/1.1\r\n\r\n";
        let exact = Limits {
            max_head_bytes: head.len(),
            max_headers: 0,
        };
        assert!(matches!(
            parse_request(head, &exact),
            Ok(Status::Complete((_, 18)))
        ));
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"\x00\r\n\r\n",
        ] {
            assert_eq!(
                summary(parse_request(bad, &Limits::default())),
                Err(Error::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            summary(parse_response(
                b"HTTP/1.1 2x0 OK\r\n\r\n",
                &Limits::default()
            )),
            Err(Error::Malformed)
        );
        assert_eq!(
            summary(parse_response(
                b"HTTP/1.1 099 Low\r\n\r\n",
                &Limits::default()
            )),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn other_targets_and_versions() {
        let (parts, _) = parse_request(b"OPTIONS * HTTP/1.0\r\n\r\n", &Limits::default())
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(parts.version, Version::HTTP_10);
        assert_eq!(parts.uri, "*");
        let (parts, _) = parse_request(
            b"GET http://h:5000/v2/ HTTP/1.1\r\n\r\n",
            &Limits::default(),
        )
        .unwrap()
        .complete()
        .unwrap();
        assert_eq!(parts.uri.path(), "/v2/");
        // A response reason phrase may be empty.
        let (parts, _) = parse_response(b"HTTP/1.0 404 \r\n\r\n", &Limits::default())
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(parts.status, StatusCode::NOT_FOUND);
        assert_eq!(parts.version, Version::HTTP_10);
    }
}
