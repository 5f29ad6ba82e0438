//! Raw bytes against a real `speil registry`: both of its HTTP servers (registry and metrics)
//! answer bad input with a 4xx or a clean close within the head budget — never a 5xx, never a
//! hang, never a panic. Every case writes bytes on a plain `TcpStream` (loopback only, with
//! read and write timeouts) and checks the exact status of each response, and whether the
//! connection was closed after it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use http::Method;
use speil_h1::{ChunkedDecoder, Framing, Status};
use speil_tests::cluster::{Cluster, ClusterKind};
use speil_tests::{Build, Generation, Speil, images};

/// The server's head budget (`ServerLimits::head_timeout`).
const HEAD_BUDGET: Duration = Duration::from_secs(10);

/// How long any one read may wait: past the head budget, so that a server that keeps to it is
/// never cut off by the test, and a hang fails the test instead of blocking it.
const READ_TIMEOUT: Duration = Duration::from_secs(12);

/// A sha256 digest that no node holds.
const ABSENT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// One parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the server said it closes the connection after this response.
    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A raw client connection.
struct Raw {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Result<Raw> {
        ensure!(addr.ip().is_loopback(), "raw tests only talk to loopback");
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(Raw {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes `bytes`. A server that already answered and closed may refuse the rest: that
    /// is not an error here (what it answered is read next).
    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                Ok(())
            }
            Err(e) => Err(e).context("writing the request"),
        }
    }

    /// Reads more bytes into `buf`; 0 at the end of the stream.
    fn fill(&mut self) -> Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = match self.stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("no answer within {READ_TIMEOUT:?} (a hang)")
            }
            Err(e) => return Err(e).context("reading the response"),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next response to a `method` request; `None` when the server closed the connection
    /// cleanly before sending any byte of one.
    fn response(&mut self, method: &Method) -> Result<Option<Resp>> {
        let (parts, len) = loop {
            if let Status::Complete(head) =
                speil_h1::parse_response(&self.buf, &speil_tests::http::RESPONSE_LIMITS)
                    .with_context(|| {
                        format!(
                            "not a response head: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        )
                    })?
            {
                break head;
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!(
                    "closed inside a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        self.buf.drain(..len);
        let mut body = Vec::new();
        match speil_h1::response_framing(method, &parts)? {
            Framing::None => {}
            Framing::Length(n) => {
                let n = usize::try_from(n)?;
                while self.buf.len() < n {
                    if self.fill()? == 0 {
                        bail!("body ended after {} of {n} bytes", self.buf.len());
                    }
                }
                body = self.buf.drain(..n).collect();
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new(1 << 30);
                loop {
                    let input = std::mem::take(&mut self.buf);
                    let progress = decoder.feed(&input, &mut body)?;
                    self.buf = input[progress.consumed..].to_vec();
                    if progress.done {
                        break;
                    }
                    if self.fill()? == 0 {
                        bail!("closed inside a chunked body");
                    }
                }
            }
            Framing::UntilClose => {
                while self.fill()? > 0 {}
                body = std::mem::take(&mut self.buf);
            }
        }
        Ok(Some(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }))
    }

    /// The next response, which must be there.
    fn expect(&mut self, method: &Method) -> Result<Resp> {
        self.response(method)?
            .context("connection closed without a response")
    }

    /// Waits for the server to close the connection, and fails if it sends anything more
    /// first (a second response would be a smuggled one). A reset counts as closed.
    fn expect_closed(&mut self) -> Result<()> {
        loop {
            if !self.buf.is_empty() {
                bail!(
                    "more bytes after the last response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
            match self.fill() {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == ErrorKind::ConnectionReset) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Shows that the connection is still open and in sync: one more request is answered 200.
    fn expect_open(&mut self) -> Result<()> {
        self.expect_open_at("/v2/")
    }

    /// [`Raw::expect_open`] with a `GET path` that answers 200.
    fn expect_open_at(&mut self, path: &str) -> Result<()> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
        let r = self.expect(&Method::GET)?;
        ensure!(r.status == 200, "follow-up GET {path}: {}", r.status);
        Ok(())
    }
}

/// Sends `bytes` on a new connection to `addr` and returns the first response (`None`: closed
/// without one).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<(Raw, Option<Resp>)> {
    let mut raw = Raw::connect(addr)?;
    raw.send(bytes)?;
    let method = if bytes.starts_with(b"HEAD ") {
        Method::HEAD
    } else {
        Method::GET
    };
    let r = raw.response(&method)?;
    Ok((raw, r))
}

/// A client error, with the OCI error body the registry sends.
fn assert_oci_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body_text());
    let body = r.body_text();
    assert!(
        body.contains("\"errors\"") && body.contains(code),
        "{what}: {body}"
    );
}

/// The process is alive and serving, and never panicked.
fn assert_healthy(s: &Speil) -> Result<()> {
    let (_, r) = exchange(s.registry_addr(), b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let r = r.context("no answer to /livez")?;
    assert_eq!(r.status, 200, "{}", s.log_tail());
    let (_, r) = exchange(
        s.metrics_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    )?;
    assert_eq!(r.context("no answer to /metrics")?.status, 200);
    let log = s.log_text();
    assert!(
        !log.contains("panicked"),
        "speil panicked: {}",
        s.log_tail()
    );
    Ok(())
}

/// A one-node cluster of `kind`.
fn one_node(kind: ClusterKind) -> Result<Cluster> {
    Cluster::start_nodes(&kind.nodes(1))
}

/// Cases 1–3: request lines and heads past the limits, and too many header lines.
async fn oversized_heads_are_refused(kind: ClusterKind) -> Result<()> {
    let c = one_node(kind)?;
    let s = &c.speils[0];
    for addr in [s.registry_addr(), s.metrics_addr()] {
        let ok = if addr == s.registry_addr() {
            "/v2/"
        } else {
            "/metrics"
        };
        // A path over the service's 4 KiB: 414 with an OCI error; the head was read whole,
        // so the connection stays usable.
        let path = format!("/v2/{}/blobs/{ABSENT}", "a/".repeat(2500));
        let (mut raw, r) = exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )?;
        let r = r.context("long path")?;
        if addr == s.registry_addr() {
            assert_oci_error(&r, 414, "\"code\"", "5 KiB path");
            raw.expect_open()?;
        } else {
            // The metrics service routes by path only: an unknown path is 404.
            assert_eq!(r.status, 404, "5 KiB path on metrics");
        }
        // A request line of 64 KiB: past the server's head limit (32 KiB), 431, and closed.
        let line = format!(
            "GET /v2/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let (mut raw, r) = exchange(addr, line.as_bytes())?;
        let r = r.context("64 KiB request line")?;
        assert_oci_error(&r, 431, "\"code\"", "64 KiB request line");
        assert!(r.closes());
        raw.expect_closed()?;
        // Headers of 20 KiB: within the server's head limit, over the 16 KiB of header
        // fields every server allows: 431 with an OCI error, and the connection stays in sync.
        let big = format!(
            "GET {ok} HTTP/1.1\r\nHost: x\r\nX-A: {}\r\nX-B: {}\r\n\r\n",
            "a".repeat(10 * 1024),
            "b".repeat(10 * 1024)
        );
        let (mut raw, r) = exchange(addr, big.as_bytes())?;
        let r = r.context("20 KiB of headers")?;
        assert_oci_error(&r, 431, "\"code\"", "20 KiB of headers");
        raw.expect_open_at(ok)?;
        // Headers of 40 KiB: 431 from the server itself, and closed.
        let huge = format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n",
            "a".repeat(40 * 1024)
        );
        let (mut raw, r) = exchange(addr, huge.as_bytes())?;
        let r = r.context("40 KiB of headers")?;
        assert_oci_error(&r, 431, "\"code\"", "40 KiB of headers");
        assert!(r.closes());
        raw.expect_closed()?;
        // 10,000 tiny header lines: 431 at once (not after the head budget), and closed.
        let t = Instant::now();
        let mut many = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..10_000 {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (mut raw, r) = exchange(addr, &many)?;
        let r = r.context("10,000 header lines")?;
        assert_oci_error(&r, 431, "\"code\"", "10,000 header lines");
        raw.expect_closed()?;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert_healthy(s)
}

/// Sends `head` one byte a second on a new connection until the server answers or closes;
/// returns the answer and when it came (from the connection's start).
fn drip(addr: SocketAddr, head: &[u8]) -> Result<(Option<Resp>, Duration)> {
    drip_on(Raw::connect(addr)?, head)
}

/// [`drip`] on a connection that is already open; the time runs from the first byte.
fn drip_on(mut raw: Raw, head: &[u8]) -> Result<(Option<Resp>, Duration)> {
    let start = Instant::now();
    raw.stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    for &byte in head.iter().cycle() {
        let _ = raw.stream.write_all(&[byte]);
        let mut one = [0u8; 1];
        match raw.stream.read(&mut one) {
            Ok(n) => {
                raw.buf.extend_from_slice(&one[..n]);
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e.into()),
        }
        ensure!(
            start.elapsed() < READ_TIMEOUT,
            "no answer within {READ_TIMEOUT:?}"
        );
    }
    let at = start.elapsed();
    raw.stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let r = raw.response(&Method::GET)?;
    if r.is_some() {
        raw.expect_closed()?;
    }
    Ok((r, at))
}

/// A connection that sends nothing: closed without a response; returns when.
fn silent(addr: SocketAddr) -> Result<Duration> {
    let mut raw = Raw::connect(addr)?;
    let start = Instant::now();
    let r = raw.response(&Method::GET)?;
    ensure!(r.is_none(), "a silent connection got {r:?}");
    Ok(start.elapsed())
}

/// Case 4: a head that trickles in one byte a second is answered 408 and closed when the head
/// budget (10 s from the connection's start) runs out; a connection that sends nothing is
/// closed without an answer at the same point. The three connections run side by side.
async fn slow_heads_time_out(kind: ClusterKind) -> Result<()> {
    let c = one_node(kind)?;
    let s = &c.speils[0];
    let head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n\r\n";
    // A keep-alive connection whose second head trickles in: the budget runs from its first
    // byte.
    let second = || -> Result<(Option<Resp>, Duration)> {
        let mut raw = Raw::connect(s.registry_addr())?;
        raw.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let first = raw.expect(&Method::GET)?;
        ensure!(first.status == 200, "first request: {}", first.status);
        drip_on(raw, head)
    };
    let (registry, metrics, keep_alive, quiet) = std::thread::scope(|scope| {
        let registry = scope.spawn(|| drip(s.registry_addr(), head));
        let metrics = scope.spawn(|| drip(s.metrics_addr(), head));
        let keep_alive = scope.spawn(second);
        let quiet = scope.spawn(|| silent(s.registry_addr()));
        (
            registry.join().expect("registry drip"),
            metrics.join().expect("metrics drip"),
            keep_alive.join().expect("second-head drip"),
            quiet.join().expect("silent connection"),
        )
    });
    for (what, outcome) in [
        ("registry", registry?),
        ("metrics", metrics?),
        ("second head", keep_alive?),
    ] {
        let (r, at) = outcome;
        let r = r.with_context(|| format!("{what}: closed without a 408 after {at:?}"))?;
        assert_eq!(r.status, 408, "{what}");
        assert!(r.closes(), "{what}");
        assert!(
            at >= HEAD_BUDGET - Duration::from_secs(1) && at < READ_TIMEOUT,
            "{what}: 408 after {at:?}"
        );
    }
    let at = quiet?;
    assert!(
        at >= HEAD_BUDGET - Duration::from_secs(1) && at < READ_TIMEOUT,
        "silent connection closed after {at:?}"
    );
    assert_healthy(s)
}

/// Cases 5, 6 and 11: NUL and invalid UTF-8 in the target, traversal in names and digests,
/// and an absolute-form target.
async fn hostile_targets_are_refused(kind: ClusterKind) -> Result<()> {
    let c = one_node(kind)?;
    let s = &c.speils[0];
    let reg = s.registry_addr();
    // Bytes the request line cannot hold: 400 and closed.
    for (what, line) in [
        (
            "NUL in the path",
            &b"GET /v2/x\0y/blobs/sha256:00 HTTP/1.1\r\n"[..],
        ),
        (
            "NUL in the name",
            b"GET /v2/\0/blobs/sha256:00 HTTP/1.1\r\n",
        ),
        (
            "invalid UTF-8",
            b"GET /v2/\xff\xfe/blobs/sha256:00 HTTP/1.1\r\n",
        ),
        (
            "a lone continuation byte",
            b"GET /v2/a\x80b/manifests/t HTTP/1.1\r\n",
        ),
        (
            "DEL in the path",
            b"GET /v2/\x7f/blobs/sha256:00 HTTP/1.1\r\n",
        ),
    ] {
        for addr in [reg, s.metrics_addr()] {
            let mut req = line.to_vec();
            req.extend_from_slice(b"Host: x\r\n\r\n");
            let (mut raw, r) = exchange(addr, &req)?;
            let r = r.with_context(|| format!("{what}: closed without an answer"))?;
            assert_eq!(r.status, 400, "{what} on {addr}");
            assert!(r.closes(), "{what}");
            raw.expect_closed()?;
        }
    }
    // Traversal: the registry's own validation refuses it with an OCI error; no file content
    // is ever in the body.
    for (path, status, code) in [
        (
            format!("/v2/../../etc/passwd/blobs/{ABSENT}"),
            400,
            "NAME_INVALID",
        ),
        // The last segment is the reference: what is left is no route.
        ("/v2/x/blobs/sha256:../../..".to_owned(), 404, "NOT_FOUND"),
        (
            "/v2/x/blobs/sha256:../../../../etc/passwd".to_owned(),
            404,
            "NOT_FOUND",
        ),
        (
            format!("/v2/%2e%2e%2f%2e%2e%2fetc%2fpasswd/blobs/{ABSENT}"),
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/x/blobs/sha256:%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/x/manifests/..%2f..%2fetc%2fpasswd?ns=docker.io".to_owned(),
            400,
            "TAG_INVALID",
        ),
        // Broken or hostile escapes in `ns`: refused before anything is looked up.
        (
            "/v2/x/manifests/latest?ns=%".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/x/manifests/latest?ns=%zz".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/x/manifests/latest?ns=%00".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/x/manifests/latest?ns=%ff%fe".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/x/manifests/latest?ns=..%2f..%2fetc".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/x/manifests/latest?ns=127.0.0.1%3A1&ns=127.0.0.1%3A2".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            format!("/v2/x/blobs/{ABSENT}/../../../../etc/passwd"),
            404,
            "NOT_FOUND",
        ),
    ] {
        let (mut raw, r) = exchange(
            reg,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )?;
        let r = r.with_context(|| format!("{path}: closed without an answer"))?;
        assert_oci_error(&r, status, code, &path);
        assert!(
            !r.body_text().contains("root:"),
            "{path}: {}",
            r.body_text()
        );
        raw.expect_open()?;
    }
    // Absolute form: the path of the URI is routed.
    let host = reg.to_string();
    for (target, status) in [
        (format!("http://{host}/v2/"), 200),
        ("http://127.0.0.1:5000/v2/".to_owned(), 200),
        (format!("http://{host}/v2/x/blobs/{ABSENT}"), 404),
    ] {
        let (mut raw, r) = exchange(
            reg,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )?;
        let r = r.with_context(|| format!("{target}: closed without an answer"))?;
        assert_eq!(r.status, status, "{target}: {}", r.body_text());
        raw.expect_open()?;
    }
    assert_healthy(s)
}

/// Case 7: absurd `Range` headers on a blob the node holds: 416 (with the blob's size where
/// the range is well-formed but outside it), never a 5xx or a short body.
async fn absurd_ranges_are_refused(kind: ClusterKind) -> Result<()> {
    let c = one_node(kind)?;
    let reg = c.registry();
    let small = images::small()?;
    c.h.registry.push(small)?;
    c.h.nodes[0].cri_pull(&small.reference(&reg)).await?;
    let s = &c.speils[0];
    let layer = &small.host_platform()?.layers[0];
    let bytes = small.blob(layer)?;
    let size = bytes.len();
    let blob = format!("/v2/{}/blobs/{layer}", small.name);
    let get = |range: &str| -> Result<Resp> {
        let (mut raw, r) = exchange(
            s.registry_addr(),
            format!("GET {blob} HTTP/1.1\r\nHost: x\r\nRange: {range}\r\n\r\n").as_bytes(),
        )?;
        let r = r.with_context(|| format!("{range}: closed without an answer"))?;
        raw.expect_open()?;
        Ok(r)
    };
    // The blob is there: a plain GET is the whole blob.
    let (_, whole) = exchange(
        s.registry_addr(),
        format!("GET {blob} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )?;
    let whole = whole.context("GET of the blob")?;
    assert_eq!(whole.status, 200);
    assert!(whole.body == bytes, "the whole blob");
    for (range, unsatisfiable) in [
        ("bytes=99999999999999999999-", false),
        ("bytes=9999999999999999999-", true),
        ("bytes=18446744073709551615-", false),
        ("bytes=5-2", false),
        ("bytes=-0", true),
        ("bytes=0-1,2-3", false),
        ("bytes=abc", false),
        ("bytes=", false),
        ("bytes=--1", false),
        ("bytes=-18446744073709551616", false),
        ("bytes=0x10-", false),
        ("bits=0-1", false),
    ] {
        let r = get(range)?;
        assert_oci_error(&r, 416, "\"code\"", range);
        if unsatisfiable {
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes */{size}").as_str()),
                "{range}"
            );
        }
    }
    // A Range that is not ASCII, and two Range headers: 416.
    for (what, fields) in [
        ("a non-ASCII Range", &b"Range: bytes=\xff-\xfe\r\n"[..]),
        (
            "two Range headers",
            b"Range: bytes=0-1\r\nRange: bytes=2-3\r\n",
        ),
    ] {
        let mut req = format!("GET {blob} HTTP/1.1\r\nHost: x\r\n").into_bytes();
        req.extend_from_slice(fields);
        req.extend_from_slice(b"\r\n");
        let (mut raw, r) = exchange(s.registry_addr(), &req)?;
        let r = r.with_context(|| format!("{what}: closed without an answer"))?;
        assert_oci_error(&r, 416, "\"code\"", what);
        raw.expect_open()?;
    }
    // A range past the end is clamped, and the body is exactly the bytes asked for.
    let r = get(&format!("bytes={}-99999999999", size - 3))?;
    assert_eq!(r.status, 206);
    assert!(r.body == bytes[size - 3..], "clamped range");
    let r = get("bytes=-99999999999")?;
    assert_eq!(r.status, 206);
    assert!(r.body == bytes, "suffix longer than the blob");
    assert_healthy(s)
}

/// Cases 8 and 9: request bodies and ambiguous framing. A request with a body is answered and
/// the connection closed, so its body is never read as a request; framing that cannot be
/// trusted is 400 and closed. In each case the body (or what follows) holds a whole request
/// for a path that would answer 404: it must never be answered.
async fn request_bodies_are_never_requests(kind: ClusterKind) -> Result<()> {
    let c = one_node(kind)?;
    let s = &c.speils[0];
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let next = "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    for addr in [s.registry_addr(), s.metrics_addr()] {
        // Content-Length: 10 and 10 bytes, then a second request.
        let (mut raw, r) = exchange(
            addr,
            format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789{next}")
                .as_bytes(),
        )?;
        let answer = if addr == s.registry_addr() { 200 } else { 404 };
        let r = r.context("GET with a body")?;
        assert_eq!(r.status, answer, "GET with a body");
        assert!(r.closes());
        raw.expect_closed()?;
        // The body is itself a request.
        let (mut raw, r) = exchange(
            addr,
            format!(
                "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}{next}",
                smuggled.len()
            )
            .as_bytes(),
        )?;
        let r = r.context("GET with a request as its body")?;
        assert_eq!(r.status, answer, "GET with a request as its body");
        assert!(r.closes());
        raw.expect_closed()?;
        // Chunked, with a request inside the chunk.
        let (mut raw, r) = exchange(
            addr,
            format!(
                "GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n{next}",
                smuggled.len()
            )
            .as_bytes(),
        )?;
        let r = r.context("chunked GET")?;
        assert_eq!(r.status, answer, "chunked GET");
        assert!(r.closes());
        raw.expect_closed()?;
        // Framing that is ambiguous or unsupported: 400, closed.
        for (what, fields) in [
            (
                "duplicate Content-Length",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
            ),
            (
                "conflicting Content-Length",
                "Content-Length: 5\r\nContent-Length: 40\r\n",
            ),
            ("a Content-Length list", "Content-Length: 5, 40\r\n"),
            ("a negative Content-Length", "Content-Length: -1\r\n"),
            (
                "a Content-Length over u64",
                "Content-Length: 99999999999999999999\r\n",
            ),
            ("an unsupported coding", "Transfer-Encoding: gzip\r\n"),
            ("chunked twice", "Transfer-Encoding: chunked, chunked\r\n"),
            ("an identity coding", "Transfer-Encoding: identity\r\n"),
            ("an empty coding", "Transfer-Encoding: \r\n"),
            (
                "Transfer-Encoding and Content-Length",
                "Transfer-Encoding: gzip\r\nContent-Length: 5\r\n",
            ),
        ] {
            let (mut raw, r) = exchange(
                addr,
                format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{fields}\r\n{smuggled}{next}").as_bytes(),
            )?;
            let r = r.with_context(|| format!("{what}: closed without an answer"))?;
            assert_eq!(r.status, 400, "{what} on {addr}");
            assert!(r.closes(), "{what}");
            raw.expect_closed()?;
        }
        // Chunked on HTTP/1.0 (which has no chunks): 400, closed.
        let (mut raw, r) = exchange(
            addr,
            format!("GET /v2/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}")
                .as_bytes(),
        )?;
        assert_eq!(r.context("chunked on HTTP/1.0")?.status, 400);
        raw.expect_closed()?;
        // Chunked together with a Content-Length: answered once, closed.
        let (mut raw, r) = exchange(
            addr,
            format!(
                "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )
            .as_bytes(),
        )?;
        let r = r.context("chunked and Content-Length")?;
        assert_eq!(r.status, answer, "chunked and Content-Length");
        assert!(r.closes());
        raw.expect_closed()?;
        // A request, then the client shuts down its side: answered, then closed.
        let mut raw = Raw::connect(addr)?;
        raw.send(next.as_bytes())?;
        raw.stream.shutdown(std::net::Shutdown::Write)?;
        let r = raw.expect(&Method::GET)?;
        assert_eq!(r.status, answer, "request and half-close");
        raw.expect_closed()?;
        // Half a head, then the client shuts down its side: closed without an answer.
        let mut raw = Raw::connect(addr)?;
        raw.send(b"GET /v2/ HTTP/1.1\r\nHo")?;
        raw.stream.shutdown(std::net::Shutdown::Write)?;
        assert!(
            raw.response(&Method::GET)?.is_none(),
            "half a head answered"
        );
    }
    assert!(
        !s.log_text().contains("/smuggled"),
        "a body was read as a request: {}",
        s.log_tail()
    );
    assert_healthy(s)
}

/// Case 10: HTTP/1.0 and 0.9, and methods the registry does not serve.
async fn versions_and_methods(kind: ClusterKind) -> Result<()> {
    let c = one_node(kind)?;
    let s = &c.speils[0];
    let reg = s.registry_addr();
    for addr in [reg, s.metrics_addr()] {
        let path = if addr == reg { "/v2/" } else { "/metrics" };
        // HTTP/1.0: answered, then closed.
        let (mut raw, r) = exchange(addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let r = r.context("HTTP/1.0")?;
        assert_eq!(r.status, 200, "HTTP/1.0 on {addr}");
        assert!(r.closes());
        raw.expect_closed()?;
        // HTTP/1.0 with keep-alive: answered, and open.
        let (mut raw, r) = exchange(
            addr,
            format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
        )?;
        let r = r.context("HTTP/1.0 keep-alive")?;
        assert_eq!(r.status, 200, "HTTP/1.0 keep-alive on {addr}");
        // An HTTP/1.0 client is told that the connection persists.
        assert_eq!(
            r.header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive"),
            "HTTP/1.0 keep-alive on {addr}"
        );
        if addr == reg {
            raw.expect_open()?;
        }
        // HTTP/0.9 and other versions: 400, closed.
        for line in [
            format!("GET {path}\r\n\r\n"),
            format!("GET {path}\r\n"),
            format!("GET {path} HTTP/2.0\r\n\r\n"),
            format!("GET {path} HTTP/1.2\r\n\r\n"),
            format!("GET {path} FTP/1.1\r\n\r\n"),
        ] {
            let t = Instant::now();
            let (mut raw, r) = exchange(addr, line.as_bytes())?;
            let r = r.with_context(|| format!("{line:?}: closed without an answer"))?;
            assert_eq!(r.status, 400, "{line:?} on {addr}");
            raw.expect_closed()?;
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{line:?}: {:?}",
                t.elapsed()
            );
        }
    }
    // Methods: 405 with an OCI error and an Allow header, and the connection stays usable.
    let blob = format!("/v2/x/blobs/{ABSENT}");
    for method in ["FOO", "DELETE", "PUT", "PATCH", "POST", "OPTIONS", "TRACE"] {
        for path in ["/v2/", blob.as_str(), "/v2/x/manifests/latest"] {
            let (mut raw, r) = exchange(
                reg,
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )?;
            let r = r.with_context(|| format!("{method} {path}: closed without an answer"))?;
            let what = format!("{method} {path}");
            assert_oci_error(&r, 405, "UNSUPPORTED", &what);
            assert!(r.header("allow").is_some(), "{what}");
            raw.expect_open()?;
        }
    }
    // The metrics port serves GET and HEAD only.
    for method in ["FOO", "DELETE", "PUT", "PATCH", "POST"] {
        let (mut raw, r) = exchange(
            s.metrics_addr(),
            format!("{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )?;
        let r = r.with_context(|| format!("{method} /metrics: closed without an answer"))?;
        assert_eq!(r.status, 405, "{method} /metrics");
        raw.expect_open_at("/metrics")?;
    }
    // A method of 20 KiB: refused by the registry's own limits with an OCI error.
    let long = format!("{} /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", "M".repeat(20 * 1024));
    let (mut raw, r) = exchange(reg, long.as_bytes())?;
    let r = r.context("a 20 KiB method")?;
    assert_oci_error(&r, 405, "UNSUPPORTED", "a 20 KiB method");
    raw.expect_open()?;
    // Heads the codec cannot read: 400, closed.
    for (what, head) in [
        (
            "a bad method token",
            &b"G(T /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        ),
        (
            "an obs-fold header",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "a space before the colon",
            b"GET /v2/ HTTP/1.1\r\nHost : x\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "a header without a colon",
            b"GET /v2/ HTTP/1.1\r\nHost x\r\n\r\n",
        ),
        ("a bare CR", b"GET /v2/ HTTP/1.1\rHost: x\r\n\r\n"),
        ("two spaces", b"GET  /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "binary noise",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
    ] {
        for addr in [reg, s.metrics_addr()] {
            let (mut raw, r) = exchange(addr, head)?;
            let r = r.with_context(|| format!("{what}: closed without an answer"))?;
            assert_eq!(r.status, 400, "{what} on {addr}");
            assert!(r.closes(), "{what}");
            raw.expect_closed()?;
        }
    }
    assert_healthy(s)
}

/// Case 12: 100 requests written at once on one connection: 100 answers in order (the last
/// request asks to close, so exactly 100 come before the end).
async fn pipelined_requests_are_answered_in_order(kind: ClusterKind) -> Result<()> {
    let c = one_node(kind)?;
    let s = &c.speils[0];
    let mut all = Vec::new();
    for i in 0..100 {
        let close = if i == 99 { "Connection: close\r\n" } else { "" };
        all.extend_from_slice(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{close}\r\n").as_bytes());
    }
    let mut raw = Raw::connect(s.registry_addr())?;
    raw.send(&all)?;
    for i in 0..100 {
        let r = raw
            .response(&Method::GET)?
            .with_context(|| format!("closed after {i} responses"))?;
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(r.closes(), i == 99, "response {i}");
    }
    raw.expect_closed()?;
    // Requests of different kinds, pipelined: each answer matches its request.
    let blob = format!("GET /v2/x/blobs/{ABSENT} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut mixed = Vec::new();
    let mut want = Vec::new();
    for i in 0..30 {
        let (req, method, status) = match i % 3 {
            0 => ("GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", Method::GET, 200),
            1 => ("HEAD /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", Method::HEAD, 200),
            _ => (blob.as_str(), Method::GET, 404),
        };
        mixed.extend_from_slice(req.as_bytes());
        want.push((method, status));
    }
    raw = Raw::connect(s.registry_addr())?;
    raw.send(&mixed)?;
    for (i, (method, status)) in want.iter().enumerate() {
        let r = raw.expect(method)?;
        assert_eq!(r.status, *status, "mixed response {i}");
    }
    raw.expect_open()?;
    assert_healthy(s)
}

/// Case 13: 1,000 idle connections (some with half a head) do not keep a new client from being
/// answered at once.
async fn idle_connections_do_not_starve_a_new_client(kind: ClusterKind) -> Result<()> {
    speil_tests::raise_fd_limit(4096)?;
    let c = one_node(kind)?;
    let s = &c.speils[0];
    let addr = s.registry_addr();
    let mut idle = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut raw = Raw::connect(addr).with_context(|| format!("idle connection {i}"))?;
        if i % 2 == 1 {
            raw.send(b"GET /v2/ HTTP/1.1\r\nHo")?;
        }
        idle.push(raw);
    }
    let t = Instant::now();
    let (_, r) = exchange(addr, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let took = t.elapsed();
    assert_eq!(r.context("the new client")?.status, 200);
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    // The idle ones are all still open, and none was answered (no 503 over the connection
    // cap, no early timeout).
    for (i, raw) in idle.iter_mut().enumerate() {
        raw.stream.set_nonblocking(true)?;
        let mut byte = [0u8; 1];
        match raw.stream.read(&mut byte) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("idle connection {i} was answered or closed: {other:?}"),
        }
    }
    drop(idle);
    assert_healthy(s)
}

speil_tests::scenarios!(
    [
        tokio_build => ClusterKind::Uniform(Generation::V1_6, Build::Tokio),
        smol_build => ClusterKind::Uniform(Generation::V1_6, Build::Smol),
    ],
    [
        oversized_heads_are_refused,
        slow_heads_time_out,
        hostile_targets_are_refused,
        absurd_ranges_are_refused,
        request_bodies_are_never_requests,
        versions_and_methods,
        pipelined_requests_are_answered_in_order,
        idle_connections_do_not_starve_a_new_client,
    ]
);
