//! The server path's connection budgets (SPEC.md §9), on both runtimes: a request head must
//! arrive within its budget (a slowloris client is cut off with 408), an idle keep-alive
//! connection is closed, and a client that stops reading a response is dropped. Budgets are
//! shortened (the core's `ServerLimits`) so that the tests take a second, not a minute; the
//! clients are plain blocking sockets on their own threads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use speil_core::limits::ServerLimits;
use speil_driver::Runtime;
use speil_http::Server;
use speil_http::body::{ResponseBody, full};

const HEAD: Duration = Duration::from_millis(400);
const IDLE: Duration = Duration::from_millis(600);
const STALL: Duration = Duration::from_millis(300);
const BIG: usize = 64 * 1024 * 1024;

fn limits() -> ServerLimits {
    ServerLimits {
        head_timeout: HEAD,
        idle_timeout: IDLE,
        write_stall: STALL,
        ..ServerLimits::default()
    }
}

/// Serves `/big` (64 MiB) and anything else as `ok`, on `rt`; returns the address.
fn serve<R: Runtime>(rt: &R) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = rt.listen(listener).unwrap();
    let big = Bytes::from(vec![7u8; BIG]);
    let service = hyper::service::service_fn(move |req: Request<Empty<Bytes>>| {
        let body = if req.uri().path() == "/big" {
            full(big.clone())
        } else {
            full("ok")
        };
        std::future::ready(Ok::<Response<ResponseBody>, speil_http::BoxError>(
            Response::new(body),
        ))
    });
    let server = Server::with_limits(rt.clone(), limits());
    rt.spawn(Box::pin(async move {
        let _ = server.serve(listener, service).await;
    }));
    addr
}

/// Reads until the server closes (or `limit` passes: then it panics); the bytes read.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("the server did not close the connection within {limit:?}: {e}"),
        }
    }
}

/// A client that sends its head one byte every 50 ms never completes it: after the head
/// budget it gets a 408 and the connection is closed.
fn slowloris(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut writer = s.try_clone().unwrap();
    let started = Instant::now();
    let drip = std::thread::spawn(move || {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
            if started.elapsed() > Duration::from_secs(10) {
                return;
            }
        }
    });
    let got = read_to_close(&mut s, Duration::from_secs(5));
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        took >= HEAD,
        "closed after {took:?}, before the head budget"
    );
    assert!(took < HEAD * 5, "closed only after {took:?}");
    drop(s);
    drip.join().unwrap();
}

/// A connection that sends nothing is closed after the head budget, without an answer.
fn silent(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut s, Duration::from_secs(5));
    let took = started.elapsed();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(took >= HEAD && took < HEAD * 5, "closed after {took:?}");
}

/// After a response, an idle keep-alive connection lives for the idle budget, then is closed;
/// a request within the budget is served.
fn idle(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    let request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(request).unwrap();
    let mut head = [0u8; 512];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // Longer than the head budget, shorter than the idle one: still open.
    std::thread::sleep(HEAD + Duration::from_millis(100));
    s.write_all(request).unwrap();
    let n = s.read(&mut head).unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "served after an idle pause"
    );
    let started = Instant::now();
    let got = read_to_close(&mut s, Duration::from_secs(5));
    let took = started.elapsed();
    assert!(got.is_empty());
    assert!(took >= IDLE && took < IDLE * 5, "closed after {took:?}");
}

/// A client that stops reading a large response is dropped after the write budget: when it
/// reads again, the body ends short (the connection was ended), never a full 200.
fn stops_reading(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    // A small receive buffer, so that the server's writes stall soon.
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // The client stops reading for several write budgets.
    std::thread::sleep(STALL * 6);
    let rest = read_to_close(&mut s, Duration::from_secs(5));
    let got = n + rest.len();
    assert!(
        got < BIG,
        "the whole body ({got} bytes) reached a client that stopped reading"
    );
}

fn all<R: Runtime>(rt: &R) -> Vec<(&'static str, SocketAddr)> {
    vec![
        ("slowloris", serve(rt)),
        ("silent", serve(rt)),
        ("idle", serve(rt)),
        ("stops_reading", serve(rt)),
    ]
}

fn check(servers: Vec<(&'static str, SocketAddr)>) {
    let threads: Vec<_> = servers
        .into_iter()
        .map(|(name, addr)| {
            std::thread::spawn(move || match name {
                "slowloris" => slowloris(addr),
                "silent" => silent(addr),
                "idle" => idle(addr),
                _ => stops_reading(addr),
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn budgets_on_tokio() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let servers = all(&speil_driver::tokio::Tokio);
        tokio::task::spawn_blocking(move || check(servers))
            .await
            .unwrap();
    });
}

#[test]
fn budgets_on_smol() {
    let rt = speil_driver::smol::Smol::new();
    let servers = all(&rt);
    rt.block_on(2, async {
        speil_driver::Runtime::spawn_blocking(&rt, move || check(servers))
            .await
            .unwrap();
    });
}
