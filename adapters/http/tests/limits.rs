//! The server path's connection budgets (SPEC.md §9), on both runtimes: a request head must
//! arrive within its budget (a slowloris client is cut off with 408), an idle keep-alive
//! connection is closed, a client that stops reading a response is dropped, a connection over
//! the cap gets 503 at once, header fields over 16 KiB get 431, and a new client is served next to 1,000 idle connections. Budgets are
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
    serve_with(rt, limits()).0
}

/// [`serve`] with these limits; also returns the server (its counters).
fn serve_with<R: Runtime>(rt: &R, limits: ServerLimits) -> (SocketAddr, Server<R>) {
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
    let server = Server::with_limits(rt.clone(), limits);
    let serving = server.clone();
    rt.spawn(Box::pin(async move {
        let _ = serving.serve(listener, service).await;
    }));
    (addr, server)
}

/// `GET /a` on a new connection that stays open; the status line of the answer.
fn get_keep_open(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    (s, text)
}

/// Over the connection cap a new connection gets 503 and is closed at once; once a
/// connection ends, new ones are served again.
fn capped<R: Runtime>(addr: SocketAddr, server: Server<R>) {
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (s, status) = get_keep_open(addr);
            assert_eq!(status, "HTTP/1.1 200 OK");
            s
        })
        .collect();
    assert_eq!(server.stats().active, 3);
    let started = Instant::now();
    let mut over = TcpStream::connect(addr).unwrap();
    let answer = read_to_close(&mut over, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        started.elapsed() < HEAD,
        "refused at once, not after a budget"
    );
    assert_eq!(server.stats().refused, 1);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().active > 0 {
        assert!(
            Instant::now() < deadline,
            "closed connections still counted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (_s, status) = get_keep_open(addr);
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// With 1,000 idle connections open (the default cap is 1,024), a new client is served.
fn many_idle(addr: SocketAddr) {
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let started = Instant::now();
    let (_s, status) = get_keep_open(addr);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}

/// Raises this process's open-file limit (the test holds both ends of 1,000 connections).
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|n| n >= 2200),
        "the open-file limit ({now:?}) is too low for this test"
    );
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
    // Before connecting: the server's budget cannot start earlier.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    let mut writer = s.try_clone().unwrap();
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
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
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
    // Before the request: the idle budget starts only after its answer.
    let started = Instant::now();
    s.write_all(request).unwrap();
    let n = s.read(&mut head).unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "served after an idle pause"
    );
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

/// Header fields over 16 KiB in a head under the 32 KiB head limit get 431 with an OCI error
/// body (on every server, not only the registry's parser); fields under it are served.
fn big_headers(addr: SocketAddr) {
    let ask = |value_len: usize| {
        let mut s = TcpStream::connect(addr).unwrap();
        let value = "v".repeat(1000);
        let mut head = String::from("GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 0..value_len / 1000 {
            head.push_str(&format!("X-Big-{i}: {value}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        String::from_utf8_lossy(&read_to_close(&mut s, Duration::from_secs(5))).into_owned()
    };
    let small = ask(15_000);
    assert!(small.starts_with("HTTP/1.1 200"), "{small}");
    let big = ask(20_000);
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    assert!(big.contains("REQUEST_TOO_LARGE"), "{big}");
}

fn all<R: Runtime>(rt: &R) -> Vec<(&'static str, SocketAddr)> {
    vec![
        ("slowloris", serve(rt)),
        ("silent", serve(rt)),
        ("idle", serve(rt)),
        ("stops_reading", serve(rt)),
        ("big_headers", serve(rt)),
        ("many_idle", serve_with(rt, ServerLimits::default()).0),
    ]
}

fn check<R: Runtime>(rt: &R, servers: Vec<(&'static str, SocketAddr)>) {
    raise_fd_limit();
    let (capped_addr, capped_server) = serve_with(
        rt,
        ServerLimits {
            max_connections: 3,
            ..limits()
        },
    );
    let mut threads: Vec<_> = servers
        .into_iter()
        .map(|(name, addr)| {
            std::thread::spawn(move || match name {
                "slowloris" => slowloris(addr),
                "silent" => silent(addr),
                "idle" => idle(addr),
                "many_idle" => many_idle(addr),
                "big_headers" => big_headers(addr),
                _ => stops_reading(addr),
            })
        })
        .collect();
    threads.push(std::thread::spawn(move || {
        capped(capped_addr, capped_server)
    }));
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
        let rt = speil_driver::tokio::Tokio;
        let servers = all(&rt);
        tokio::task::spawn_blocking(move || check(&rt, servers))
            .await
            .unwrap();
    });
}

#[test]
fn budgets_on_smol() {
    let rt = speil_driver::smol::Smol::new();
    let servers = all(&rt);
    let inner = rt.clone();
    rt.block_on(2, async {
        speil_driver::Runtime::spawn_blocking(&rt, move || check(&inner, servers))
            .await
            .unwrap();
    });
}
