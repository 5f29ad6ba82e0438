//! The tokio server's own HTTP/1.1 connection loop and its `sendfile` path for local blobs
//! (`speil_http::conn`): exact bytes, ranges and HEAD; keep-alive, pipelining and the
//! edges of HTTP/1.x; clients that go away mid-file; graceful shutdown mid-file.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use speil_core::Digest;
use speil_driver::tokio::Tokio;
use speil_http::Server;
use speil_http::server::{RegistryService, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The zero-copy counters are process-wide: the tests of this file run one at a time.
fn no_auth() -> ServerConfig {
    ServerConfig { credentials: None }
}

/// A node whose store holds one layer of `len` bytes, served from a file.
async fn node_with_file_layer(net: u8, len: usize) -> (TestNode, Digest, Bytes) {
    let source = Arc::new(FakeContentStore::default());
    let layer = blob_bytes(len, u64::from(net));
    let digest = source.put(layer.clone());
    source.tag("example.com/test/app:v1", &digest);
    source.set_behaviour(Behaviour::File);
    let l = listeners(net, 1).await.pop().unwrap();
    let node = start_node(1, l, Arc::new(FakeDht::default()), source, no_auth()).await;
    (node, digest, layer)
}

/// `(sum, count)` of `http_response_size_bytes` for blob responses of `method` and `code`.
fn size_metric(node: &TestNode, method: &str, code: &str) -> (f64, u64) {
    let text = node.metrics.encode();
    let labels = format!(r#"{{handler="/v2/*",method="{method}",code="{code}"}}"#);
    let value = |name: &str| {
        let prefix = format!("{name}{labels} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.trim().to_owned())
    };
    let sum = value("http_response_size_bytes_sum").map_or(0.0, |v| v.parse().unwrap());
    let count = value("http_response_size_bytes_count").map_or(0, |v| v.parse().unwrap());
    (sum, count)
}

fn blobs_inflight(node: &TestNode) -> Option<i64> {
    let text = node.metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(r#"http_requests_inflight{handler="/v2/*"} "#))
        .map(|v| v.trim().parse().unwrap())
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (no body for HEAD; else by `Content-Length`, chunks, or to the end).
async fn read_response(r: &mut BufReader<TcpStream>, head: bool) -> std::io::Result<Raw> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status_line = line.trim_end().to_owned();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header line");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut raw = Raw {
        status,
        headers,
        body: Vec::new(),
    };
    if head {
        return Ok(raw);
    }
    if let Some(len) = raw.header("content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        r.read_exact(&mut body).await?;
        raw.body = body;
    } else if raw.header("transfer-encoding") == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let n = usize::from_str_radix(line.trim_end(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).await?;
            if n == 0 {
                break;
            }
            raw.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut raw.body).await?;
    }
    Ok(raw)
}

async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.unwrap())
}

/// Whether the server closed the connection (EOF) within 5 s.
async fn closed(r: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

#[tokio::test]
async fn file_blobs_go_through_sendfile_with_exact_bytes_ranges_and_head() {
    // Larger than a loopback socket's buffers, so that `sendfile` meets a full socket.
    let len = 6 * 1024 * 1024 + 123;
    let (node, digest, layer) = node_with_file_layer(61, len).await;
    let a = node.addr;
    let path = format!("/v2/test/app/blobs/{digest}");

    let before = node.server.stats();
    let g = get(a, &path).await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(g.bytes() == &layer, "the whole blob, byte for byte");
    assert_eq!(g.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(g.header("accept-ranges"), Some("bytes"));
    assert_eq!(g.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(g.header("content-type"), Some("application/octet-stream"));
    let after = node.server.stats();
    assert_eq!(after.responses - before.responses, 1, "sent with sendfile");
    assert_eq!(after.bytes - before.bytes, len as u64);

    let size = len as u64;
    let ranges: Vec<(String, u64, u64)> = vec![
        ("bytes=0-0".into(), 0, 0),
        ("bytes=65530-131080".into(), 65_530, 131_080),
        ("bytes=-1000".into(), size - 1000, size - 1),
        ("bytes=3000000-".into(), 3_000_000, size - 1),
        (format!("bytes=100-{}", size + 5000), 100, size - 1),
    ];
    let mut partial_sum = 0;
    for (range, start, end) in &ranges {
        let before = node.server.stats();
        let g = request(a, Method::GET, &path, &[("range", range)])
            .await
            .unwrap();
        assert_eq!(g.status, StatusCode::PARTIAL_CONTENT, "{range}");
        let want = layer.slice(*start as usize..=*end as usize);
        assert!(g.bytes() == &want, "{range}: exact bytes");
        assert_eq!(
            g.header("content-range"),
            Some(format!("bytes {start}-{end}/{size}").as_str())
        );
        assert_eq!(
            g.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
        let after = node.server.stats();
        assert_eq!(after.responses - before.responses, 1, "{range}");
        assert_eq!(after.bytes - before.bytes, end - start + 1, "{range}");
        partial_sum += end - start + 1;
    }

    // HEAD: the same headers, no body, nothing sent.
    let before = node.server.stats();
    let g = request(a, Method::HEAD, &path, &[]).await.unwrap();
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(g.header("docker-content-digest"), Some(digest.as_str()));
    assert!(g.bytes().is_empty());
    let g = request(a, Method::HEAD, &path, &[("range", "bytes=10-19")])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(g.header("content-length"), Some("10"));
    assert_eq!(
        g.header("content-range"),
        Some(format!("bytes 10-19/{size}").as_str())
    );
    assert!(g.bytes().is_empty());
    // Unsatisfiable range: 416, nothing sent.
    let g = request(
        a,
        Method::GET,
        &path,
        &[("range", &format!("bytes={size}-"))],
    )
    .await
    .unwrap();
    assert_eq!(g.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(node.server.stats(), before);

    // A blob the store streams (not a file) is written frame by frame, not sent with
    // sendfile, and is just as exact.
    node.source.set_behaviour(Behaviour::Whole);
    let g = get(a, &path).await;
    assert!(g.bytes() == &layer);
    assert_eq!(node.server.stats(), before);

    // The response-size metric counts the bytes sendfile sent.
    let total = 2.0 * len as f64;
    eventually(|| size_metric(&node, "GET", "200") == (total, 2)).await;
    let partial = (partial_sum as f64, ranges.len() as u64);
    eventually(|| size_metric(&node, "GET", "206") == partial).await;
}

#[tokio::test]
async fn keep_alive_pipelining_and_the_edges_of_http1() {
    let (node, digest, layer) = node_with_file_layer(62, 300_000).await;
    let a = node.addr;
    let path = format!("/v2/test/app/blobs/{digest}");

    // Four pipelined requests on one connection, answered in order.
    let mut c = connect(a).await;
    let requests = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n\
         HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    c.get_mut().write_all(requests.as_bytes()).await.unwrap();
    let r = read_response(&mut c, false).await.unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &layer[10..20]);
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
    let r = read_response(&mut c, true).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300000"));
    let r = read_response(&mut c, false).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = read_response(&mut c, false).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == layer);
    // The same connection, one request at a time, then `Connection: close`.
    for _ in 0..3 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=-5\r\n\r\n");
        c.get_mut().write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut c, false).await.unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &layer[layer.len() - 5..]);
        assert_eq!(r.header("connection"), None);
    }
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    c.get_mut().write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut c, false).await.unwrap();
    assert!(r.body == layer);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed(&mut c).await, "closed after Connection: close");

    // HTTP/1.0: answered, then closed.
    let mut c = connect(a).await;
    let req = format!("GET {path} HTTP/1.0\r\n\r\n");
    c.get_mut().write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut c, false).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == layer);
    assert!(closed(&mut c).await, "HTTP/1.0 without keep-alive");

    // A request with a body: the service's answer (no route takes a body), then closed.
    let mut c = connect(a).await;
    let req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    c.get_mut().write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut c, false).await.unwrap();
    assert_eq!(r.status, 405);
    assert!(String::from_utf8_lossy(&r.body).contains("UNSUPPORTED"));
    assert!(closed(&mut c).await, "closed after a request with a body");

    // A malformed head: 400, closed.
    let mut c = connect(a).await;
    c.get_mut()
        .write_all(b"GET /v2/ HTTP/1.1\r\nbad header\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut c, false).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(closed(&mut c).await);

    // Too many header lines: 431 with an OCI error, closed.
    let mut c = connect(a).await;
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    c.get_mut().write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut c, false).await.unwrap();
    assert_eq!(r.status, 431);
    assert!(String::from_utf8_lossy(&r.body).contains("errors"));
    assert!(closed(&mut c).await);

    // A head that never ends: 431 once the buffer is full, closed.
    let mut c = connect(a).await;
    let req = format!("GET /v2/ HTTP/1.1\r\nx-big: {}", "y".repeat(40 * 1024));
    let _ = c.get_mut().write_all(req.as_bytes()).await;
    let r = read_response(&mut c, false).await.unwrap();
    assert_eq!(r.status, 431);

    // The server still answers.
    assert_eq!(get(a, "/v2/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn clients_leaving_mid_file_leave_the_server_working() {
    let len = 24 * 1024 * 1024;
    let (node, digest, layer) = node_with_file_layer(63, len).await;
    let a = node.addr;
    let path = format!("/v2/test/app/blobs/{digest}");
    let before = node.server.stats();
    for _ in 0..3 {
        let mut c = connect(a).await;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        c.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut some = vec![0; 100 * 1024];
        c.read_exact(&mut some).await.unwrap();
        // Gone with megabytes unread: the server's next sendfile fails.
        drop(c);
    }
    // Every aborted transfer ends (its request is no longer in flight)...
    eventually(|| blobs_inflight(&node) == Some(0)).await;
    let after = node.server.stats();
    assert_eq!(after.responses - before.responses, 3);
    assert!(
        after.bytes - before.bytes < 3 * len as u64,
        "the transfers stopped early"
    );
    // ...and the server serves the next client in full.
    let g = get(a, &path).await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(g.bytes() == &layer);
}

#[tokio::test]
async fn graceful_shutdown_finishes_a_sendfile_in_flight() {
    let len = 24 * 1024 * 1024;
    let mut ls = listeners(64, 2).await;
    let source = Arc::new(FakeContentStore::default());
    let layer = blob_bytes(len, 64);
    let digest = source.put(layer.clone());
    source.set_behaviour(Behaviour::File);
    let listener = ls.pop().unwrap();
    let addr = listener.local_addr().unwrap();
    let b = start_node(
        2,
        ls.pop().unwrap(),
        Arc::new(FakeDht::default()),
        source.clone(),
        no_auth(),
    )
    .await;
    let service = RegistryService::new(b.handle.clone(), source, no_auth());
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    let http = Server::new(Tokio);
    let serving = http.clone();
    let server = tokio::spawn(async move {
        serving
            .serve_until(listener, service, async move {
                let _ = stop_rx.await;
            })
            .await
    });
    let path = format!("/v2/test/app/blobs/{digest}");
    let before = http.stats();

    // An idle keep-alive connection, and a transfer that has started.
    let mut idle = connect(addr).await;
    idle.get_mut()
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle, false).await.unwrap().status, 200);
    let mut c = connect(addr).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    c.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut line = String::new();
    c.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");

    b.handle.shared().shutdown();
    stop_tx.send(()).unwrap();
    // The idle connection is closed; the transfer finishes, byte for byte.
    assert!(
        closed(&mut idle).await,
        "idle connection closed on shutdown"
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    let text_end = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head")
        + 4;
    assert!(
        rest[text_end..] == layer[..],
        "the transfer in flight finishes"
    );
    let after = http.stats();
    assert_eq!(after.responses - before.responses, 1, "sent with sendfile");
    assert_eq!(after.bytes - before.bytes, len as u64);
    // The server returned once the transfer was done, and accepts nothing more.
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve_until returns")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
