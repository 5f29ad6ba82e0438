//! Writing heads and chunks. The fields this module adds itself are written in their
//! conventional case (`Content-Length`); the caller's as `http` keeps them (lower case).

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::{Error, Framing};

/// Writes an HTTP/1.1 response head to `out`: the status line, `headers` in order, the framing
/// header (`Content-Length: n` for [`Framing::Length`], `Transfer-Encoding: chunked` for
/// [`Framing::Chunked`], nothing for the others) and `Connection: close` when `close` is set or
/// the framing is [`Framing::UntilClose`]. The framing and connection fields are this
/// function's: any in `headers` are left out, except `Content-Length` with [`Framing::None`]
/// (the length a `HEAD` answer announces).
pub fn encode_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    fields(headers, framing, false, out);
    finish(framing, close, out);
}

/// Writes an HTTP/1.1 request head to `out`: `method target HTTP/1.1`, `Host: host` (an IPv6
/// address in brackets, as the caller gives it), `headers` in order, then the framing and
/// `Connection: close` as [`encode_response_head`] does. A `Host` in `headers` is left out. A
/// `target` that is not an origin-form path (with query) or a `host` that is not a valid field
/// value is [`Error::Malformed`], and nothing is written.
pub fn encode_request_head(
    method: &Method,
    target: &str,
    host: &str,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let target = PathAndQuery::try_from(target).map_err(|_| Error::Malformed)?;
    if !target.as_str().starts_with('/') {
        return Err(Error::Malformed);
    }
    let host = HeaderValue::from_str(host).map_err(|_| Error::Malformed)?;
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    fields(headers, framing, true, out);
    finish(framing, close, out);
    Ok(())
}

/// Writes one chunk of a chunked body (nothing for empty `data`, which would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Writes the last chunk of a chunked body, without trailers.
pub fn encode_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

/// Writes `headers` but the ones the encoder writes itself (`Host` too when `host` is ours).
fn fields(headers: &HeaderMap, framing: Framing, host: bool, out: &mut Vec<u8>) {
    for (name, value) in headers {
        let ours = name == CONNECTION
            || name == TRANSFER_ENCODING
            || (name == CONTENT_LENGTH && framing != Framing::None)
            || (host && name == HOST);
        if ours {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn finish(framing: Framing, close: bool, out: &mut Vec<u8>) {
    match framing {
        Framing::Length(n) => out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {}
    }
    if close || framing == Framing::UntilClose {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("99"));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        let mut out = Vec::new();
        encode_response_head(StatusCode::OK, &headers, Framing::Length(3), true, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        out.clear();
        encode_response_head(StatusCode::OK, &headers, Framing::None, false, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 99\r\n\r\n"
        );
        out.clear();
        encode_response_head(
            StatusCode::from_u16(599).unwrap(),
            &HeaderMap::new(),
            Framing::Chunked,
            false,
            &mut out,
        );
        assert_eq!(out, b"HTTP/1.1 599 \r\nTransfer-Encoding: chunked\r\n\r\n");
        out.clear();
        encode_chunk(b"hello", &mut out);
        encode_chunk(b"", &mut out);
        encode_chunk(&[b'x'; 17], &mut out);
        encode_last_chunk(&mut out);
        assert_eq!(
            out,
            [&b"5\r\nhello\r\n11\r\n"[..], &[b'x'; 17], b"\r\n0\r\n\r\n"].concat()
        );
    }

    #[test]
    fn request_heads() {
        let mut out = Vec::new();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("ignored"));
        headers.insert("accept", HeaderValue::from_static("application/json"));
        encode_request_head(
            &Method::GET,
            "/id?x=1",
            "[2001:db8::11]:5002",
            &headers,
            Framing::None,
            true,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            b"GET /id?x=1 HTTP/1.1\r\nHost: [2001:db8::11]:5002\r\naccept: application/json\r\nConnection: close\r\n\r\n"
        );
        for (target, host) in [
            ("/a b", "h"),
            ("/a\r\nX: y", "h"),
            ("http://h/", "h"),
            ("/", "h\r\nX: y"),
        ] {
            let mut out = Vec::new();
            assert_eq!(
                encode_request_head(
                    &Method::GET,
                    target,
                    host,
                    &HeaderMap::new(),
                    Framing::None,
                    false,
                    &mut out
                ),
                Err(Error::Malformed),
                "{target:?} {host:?}"
            );
            assert!(out.is_empty());
        }
    }
}
