//! What follows a head: the body's framing (RFC 9112 §6) and whether the connection stays open
//! (RFC 9112 §9.3).

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Version, request, response};

use crate::Error;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` (see [`crate::ChunkedDecoder`]).
    Chunked,
    /// Everything until the connection closes (a response only).
    UntilClose,
}

/// The body of a request with these parts. A request without `Content-Length` or
/// `Transfer-Encoding` has none; `Transfer-Encoding` overrides `Content-Length` (such a request
/// is also not [`keep_alive`]).
pub fn request_framing(parts: &request::Parts) -> Result<Framing, Error> {
    if let Some(framing) = transfer_encoding(parts.version, &parts.headers)? {
        return Ok(framing);
    }
    Ok(match content_length(&parts.headers)? {
        Some(0) | None => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// The body of a response with these parts to a request with `method`: none for `HEAD`, 1xx,
/// 204 and 304; otherwise chunked, `Content-Length`, or until the connection closes. (A 2xx
/// answer to `CONNECT` starts a tunnel, which this crate does not model.)
pub fn response_framing(method: &Method, parts: &response::Parts) -> Result<Framing, Error> {
    let status = parts.status.as_u16();
    if method == Method::HEAD || parts.status.is_informational() || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    if let Some(framing) = transfer_encoding(parts.version, &parts.headers)? {
        return Ok(framing);
    }
    Ok(match content_length(&parts.headers)? {
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Whether the connection stays open after this message: HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive`. A message with both `Transfer-Encoding` and
/// `Content-Length` closes the connection (RFC 9112 §6.1: a smuggling attempt, perhaps).
pub fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return false;
    }
    let (mut close, mut keep) = (false, false);
    for token in tokens(headers, CONNECTION) {
        close |= token.eq_ignore_ascii_case(b"close");
        keep |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    match version {
        Version::HTTP_11 => !close,
        Version::HTTP_10 => keep && !close,
        _ => false,
    }
}

/// `Some(Chunked)` for exactly one `chunked` coding on HTTP/1.1, `None` without the header, an
/// error for anything else (other codings, `chunked` twice, or on HTTP/1.0, where RFC 9112
/// §6.1 calls the framing faulty).
fn transfer_encoding(version: Version, headers: &HeaderMap) -> Result<Option<Framing>, Error> {
    if !headers.contains_key(TRANSFER_ENCODING) {
        return Ok(None);
    }
    let mut codings = tokens(headers, TRANSFER_ENCODING);
    let only_chunked = codings
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none();
    if version == Version::HTTP_11 && only_chunked {
        Ok(Some(Framing::Chunked))
    } else {
        Err(Error::UnsupportedTransferEncoding)
    }
}

/// The one `Content-Length` value: repeated fields or a list (even of equal numbers), signs,
/// spaces inside and numbers over `u64` are errors.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::BadContentLength);
    }
    let digits = value.as_bytes().trim_ascii();
    if digits.is_empty() {
        return Err(Error::BadContentLength);
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(Error::BadContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(Error::BadContentLength)?;
    }
    Ok(Some(n))
}

/// The comma-separated tokens of every `name` field, trimmed, empty ones left out.
fn tokens(headers: &HeaderMap, name: http::header::HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, parse_request, parse_response};

    fn req(head: &str) -> request::Parts {
        parse_request(head.as_bytes(), &Limits::default())
            .unwrap()
            .complete()
            .unwrap()
            .0
    }

    fn resp(head: &str) -> response::Parts {
        parse_response(head.as_bytes(), &Limits::default())
            .unwrap()
            .complete()
            .unwrap()
            .0
    }

    #[test]
    fn request_bodies() {
        let f = |h: &str| request_framing(&req(h));
        assert_eq!(f("GET / HTTP/1.1\r\n\r\n"), Ok(Framing::None));
        assert_eq!(
            f("PUT / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        // Chunked wins over Content-Length, and the connection then closes.
        let both = req("PUT / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(request_framing(&both), Ok(Framing::Chunked));
        assert!(!keep_alive(both.version, &both.headers));
        for bad in [
            "PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 3 4\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
        ] {
            assert_eq!(f(bad), Err(Error::BadContentLength), "{bad:?}");
        }
        assert_eq!(
            f("PUT / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n"),
            Ok(Framing::Length(u64::MAX))
        );
        for bad in [
            "PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
            "PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(f(bad), Err(Error::UnsupportedTransferEncoding), "{bad:?}");
        }
    }

    #[test]
    fn response_bodies() {
        let f = |m: Method, h: &str| response_framing(&m, &resp(h));
        let cl = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(f(Method::GET, cl), Ok(Framing::Length(5)));
        assert_eq!(f(Method::HEAD, cl), Ok(Framing::None));
        for status in [
            "100 Continue",
            "101 Switching",
            "204 No Content",
            "304 Not Modified",
        ] {
            let h = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(f(Method::GET, &h), Ok(Framing::None), "{status}");
        }
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\n\r\n"),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            f(
                Method::GET,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f(
                Method::GET,
                "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"
            ),
            Err(Error::BadContentLength)
        );
        // A bad Content-Length does not matter where there is no body.
        assert_eq!(
            f(Method::HEAD, "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Ok(Framing::None)
        );
    }

    #[test]
    fn connections() {
        let k = |h: &str| {
            let p = req(h);
            keep_alive(p.version, &p.headers)
        };
        assert!(k("GET / HTTP/1.1\r\n\r\n"));
        assert!(!k("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!k("GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n"));
        assert!(!k(
            "GET / HTTP/1.1\r\nConnection: te\r\nConnection: close\r\n\r\n"
        ));
        assert!(!k("GET / HTTP/1.0\r\n\r\n"));
        assert!(k("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!k(
            "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }
}
