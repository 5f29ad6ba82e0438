//! A tiny blocking HTTP/1.1 client for tests (loopback only), on the `speil-h1` codec.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use speil_h1::{ChunkedDecoder, Framing, Limits, Status};

/// The largest response body the client reads.
const MAX_BODY: u64 = 1 << 30;

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The head limits the test client reads responses with.
pub const RESPONSE_LIMITS: Limits = Limits {
    max_head_bytes: 64 * 1024,
    max_headers: 128,
};

/// Reads from `stream` into `buf` until `buf` starts with a whole response head; returns the
/// head and leaves in `buf` only what follows it (the start of the body).
pub fn read_head(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<http::response::Parts> {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if let Status::Complete((parts, len)) =
            speil_h1::parse_response(buf, &RESPONSE_LIMITS).context("bad response head")?
        {
            buf.drain(..len);
            return Ok(parts);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed inside the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Splits a whole response (read to its end) into its head and body.
pub fn split_response(mut raw: Vec<u8>) -> Result<(http::response::Parts, Vec<u8>)> {
    let Status::Complete((parts, len)) =
        speil_h1::parse_response(&raw, &RESPONSE_LIMITS).context("bad response head")?
    else {
        bail!("the response ended inside its head");
    };
    Ok((parts, raw.split_off(len)))
}

/// Sends `method path` to `addr` with extra `headers` and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    if !addr.ip().is_loopback() {
        bail!("test HTTP client only talks to loopback, not {addr}");
    }
    let method = Method::from_bytes(method.as_bytes()).context("bad method")?;
    let mut fields = HeaderMap::new();
    for (n, v) in headers {
        fields.append(
            HeaderName::from_bytes(n.as_bytes()).with_context(|| format!("bad header {n:?}"))?,
            HeaderValue::from_str(v).with_context(|| format!("bad value of {n}"))?,
        );
    }
    let mut head = Vec::new();
    speil_h1::encode_request_head(
        &method,
        path,
        &addr.to_string(),
        &fields,
        Framing::None,
        true,
        &mut head,
    )
    .with_context(|| format!("cannot request {path:?}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(&head)?;

    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let parts = read_head(&mut stream, &mut buf)?;
    let mut resp = Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
    };
    match speil_h1::response_framing(&method, &parts).context("bad response framing")? {
        Framing::None => {}
        Framing::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n as u64 <= MAX_BODY)
                .context("content-length too large")?;
            buf.truncate(n);
            if buf.len() < n {
                let start = buf.len();
                buf.resize(n, 0);
                stream.read_exact(&mut buf[start..])?;
            }
            resp.body = buf;
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(MAX_BODY);
            let mut input = buf;
            while !decoder
                .feed(&input, &mut resp.body)
                .context("bad chunked body")?
                .done
            {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    bail!("connection closed inside a chunked body");
                }
                input.clear();
                input.extend_from_slice(&chunk[..n]);
            }
        }
        Framing::UntilClose => {
            stream.read_to_end(&mut buf)?;
            resp.body = buf;
        }
    }
    Ok(resp)
}

/// `GET path`, failing unless the status is 200.
pub fn get_ok(addr: SocketAddr, path: &str) -> Result<Vec<u8>> {
    let resp = request(addr, "GET", path, &[])?;
    if resp.status != 200 {
        bail!(
            "GET {path} on {addr}: status {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
    }
    Ok(resp.body)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// Serves one canned `answer` on loopback and returns what the client sent.
    fn exchange(method: &str, answer: &'static [u8]) -> (Result<Response>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                got.push(byte[0]);
            }
            s.write_all(answer).unwrap();
            String::from_utf8(got).unwrap()
        });
        let resp = request(addr, method, "/v2/x?y=1", &[("Range", "bytes=0-1")]);
        (resp, server.join().unwrap())
    }

    #[test]
    fn framings() {
        let (r, sent) = exchange(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
        );
        assert!(
            sent.starts_with("GET /v2/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{sent}"
        );
        assert!(sent.contains("\r\nrange: bytes=0-1\r\n"), "{sent}");
        let r = r.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        let (r, _) = exchange(
            "GET",
            b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n",
        );
        assert_eq!(r.unwrap().body, b"abc");
        let (r, _) = exchange("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n");
        let r = r.unwrap();
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), Some("9"));
        let (r, _) = exchange("GET", b"HTTP/1.0 404 Not Found\r\n\r\nnone");
        assert_eq!(r.unwrap().body, b"none");
        let (r, _) = exchange("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n");
        assert!(r.is_err());
    }
}
