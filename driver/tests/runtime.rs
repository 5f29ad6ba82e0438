//! The `Runtime` contract, checked once and run on every runtime: each `check_*` function is
//! generic over [`Runtime`], and `on_every_runtime!` runs it on tokio (a multi-thread runtime,
//! as `#[tokio::test]` builds it) and on smol (`Smol::block_on`).

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use speil_driver::{Runtime, RuntimeExt, Timer};

/// Generates `<check>::on_tokio` and `<check>::on_smol` for each check.
macro_rules! on_every_runtime {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_tokio() {
                use speil_driver::Runtime as _;
                let rt = speil_driver::tokio::Tokio;
                assert_eq!(rt.name(), "tokio");
                super::$check(rt).await;
            }

            #[test]
            fn on_smol() {
                use speil_driver::Runtime as _;
                let rt = speil_driver::smol::Smol::new();
                assert_eq!(rt.name(), "smol");
                rt.block_on(2, super::$check(rt.clone()));
            }
        }
    )*};
}

on_every_runtime!(
    check_timer,
    check_tcp_round_trip,
    check_listen_takes_a_blocking_std_listener,
    check_sendfile_sends_a_region,
    check_connect_unix,
    check_spawn_and_spawn_blocking,
    check_within,
);

/// Timers never fire early; this much late is tolerated (a loaded CI machine).
const SLACK: Duration = Duration::from_millis(1500);

fn assert_between(what: &str, elapsed: Duration, at_least: Duration) {
    assert!(
        elapsed >= at_least && elapsed < at_least + SLACK,
        "{what}: fired after {elapsed:?}, expected {at_least:?}"
    );
}

/// A timer fires at its deadline; `reset` moves it earlier and later, and re-arms one that
/// already fired; a deadline in the past fires at once.
async fn check_timer<R: Runtime>(rt: R) {
    // Earlier.
    let t0 = rt.now();
    let mut timer = rt.timer(t0 + Duration::from_secs(5));
    timer.reset(t0 + Duration::from_millis(100));
    (&mut timer).await;
    assert_between("reset earlier", t0.elapsed(), Duration::from_millis(100));

    // The same timer, fired, re-armed and moved later.
    let t1 = rt.now();
    timer.reset(t1 + Duration::from_millis(50));
    timer.reset(t1 + Duration::from_millis(300));
    (&mut timer).await;
    assert_between("reset later", t1.elapsed(), Duration::from_millis(300));

    // Later while it is being waited for: polled once (registered), then moved.
    let t2 = rt.now();
    let mut timer = rt.timer(t2 + Duration::from_millis(50));
    let polled = futures::future::poll_fn(|cx| Poll::Ready(timer.poll_unpin(cx))).await;
    assert!(polled.is_pending());
    timer.reset(t2 + Duration::from_millis(250));
    timer.await;
    assert_between(
        "reset while waited",
        t2.elapsed(),
        Duration::from_millis(250),
    );

    // In the past: at once.
    let t3 = rt.now();
    rt.timer(t0).await;
    assert_between("past deadline", t3.elapsed(), Duration::ZERO);

    // `sleep` is a timer at now + duration.
    let t4 = Instant::now();
    rt.sleep(Duration::from_millis(80)).await;
    assert_between("sleep", t4.elapsed(), Duration::from_millis(80));
}

/// A std listener on 127.0.0.1:0, taken into the runtime; `connect` and `accept` meet, with
/// `TCP_NODELAY` on both ends, and bytes flow both ways.
async fn check_tcp_round_trip<R: Runtime>(rt: R) {
    let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let bound = std_listener.local_addr().unwrap();
    let listener = rt.listen(std_listener).unwrap();
    let addr = rt.listener_addr(&listener).unwrap();
    assert_eq!(addr, bound);
    assert_ne!(addr.port(), 0);

    let (accepted, connected) = futures::join!(rt.accept(&listener), rt.connect(addr));
    let (mut server, remote) = accepted.unwrap();
    let mut client = connected.unwrap();
    assert_eq!(remote, local_addr(&client));
    assert!(
        rustix::net::sockopt::tcp_nodelay(&server).unwrap(),
        "accepted"
    );
    assert!(
        rustix::net::sockopt::tcp_nodelay(&client).unwrap(),
        "connected"
    );

    let request = b"GET /v2/ HTTP/1.1\r\n\r\n".repeat(1000);
    let (sent, received) = futures::join!(
        async {
            client.write_all(&request).await.unwrap();
            client.flush().await.unwrap();
        },
        async {
            let mut got = vec![0u8; request.len()];
            server.read_exact(&mut got).await.unwrap();
            got
        }
    );
    let () = sent;
    assert_eq!(received, request);

    // `close` ends the stream for the peer while the socket is still open (a half close, as
    // tokio's `shutdown`).
    server.write_all(b"pong").await.unwrap();
    server.close().await.unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"pong");

    // A refused connection is an error, not a hang.
    let closed = {
        let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        probe.local_addr().unwrap()
    };
    assert!(rt.connect(closed).await.is_err());
}

fn local_addr<T: std::os::fd::AsFd>(socket: &T) -> SocketAddr {
    SocketAddr::try_from(rustix::net::getsockname(socket).unwrap()).unwrap()
}

/// A listener that is still blocking is made non-blocking: polling it with nothing to accept
/// is `Pending`, not a hang.
async fn check_listen_takes_a_blocking_std_listener<R: Runtime>(rt: R) {
    let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let listener = rt.listen(std_listener).unwrap();
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(rt.poll_accept(&listener, &mut cx).is_pending());
    let addr = rt.listener_addr(&listener).unwrap();
    let (accepted, connected) = futures::join!(rt.accept(&listener), rt.connect(addr));
    accepted.unwrap();
    connected.unwrap();
}

/// `sendfile` sends exactly the region asked for, however many calls it takes, and reports
/// the end of the file as 0.
async fn check_sendfile_sends_a_region<R: Runtime>(rt: R) {
    let content: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&content).unwrap();
    let (offset, len) = (12_345u64, 2 * 1024 * 1024 + 17);

    let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let listener = rt.listen(std_listener).unwrap();
    let addr = rt.listener_addr(&listener).unwrap();
    let (accepted, connected) = futures::join!(rt.accept(&listener), rt.connect(addr));
    let (mut server, _) = accepted.unwrap();
    let mut client = connected.unwrap();

    // More than a socket buffer: the receiver reads while the sender waits for room.
    let (calls, received) = futures::join!(
        async {
            let mut sent = 0;
            let mut calls = 0;
            while sent < len {
                let n = rt
                    .sendfile(&server, &file, offset + sent as u64, len - sent)
                    .await
                    .unwrap();
                assert!(n > 0, "file ended early at {sent}");
                sent += n;
                calls += 1;
            }
            assert_eq!(sent, len);
            server.close().await.unwrap();
            calls
        },
        async {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        }
    );
    assert!(calls >= 1);
    assert_eq!(received.len(), len);
    assert!(received == content[offset as usize..offset as usize + len]);

    // At the end of the file: 0. (A second connection: the first one is closed.)
    let (accepted, connected) = futures::join!(rt.accept(&listener), rt.connect(addr));
    let (server, _) = accepted.unwrap();
    let _client = connected.unwrap();
    let end = content.len() as u64;
    assert_eq!(rt.sendfile(&server, &file, end, 100).await.unwrap(), 0);
    assert_eq!(rt.sendfile(&server, &file, end + 10, 100).await.unwrap(), 0);
}

/// `connect_unix` reaches a std `UnixListener`, both ways.
async fn check_connect_unix<R: Runtime>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("containerd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"ping").unwrap();
        let mut reply = [0u8; 4];
        conn.read_exact(&mut reply).unwrap();
        reply
    });
    let mut conn = rt.connect_unix(&path).await.unwrap();
    let mut got = [0u8; 4];
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    conn.write_all(b"pong").await.unwrap();
    conn.flush().await.unwrap();
    let reply = rt.spawn_blocking(move || server.join()).await.unwrap();
    assert_eq!(&reply.unwrap(), b"pong");

    assert!(
        rt.connect_unix(&dir.path().join("nope.sock"))
            .await
            .is_err()
    );
}

/// `spawn` runs a task in the background; `spawn_blocking` runs a closure on another thread
/// and returns its result; a closure that panics is an error.
async fn check_spawn_and_spawn_blocking<R: Runtime>(rt: R) {
    let (tx, rx) = futures::channel::oneshot::channel();
    let inner = rt.clone();
    rt.spawn(
        async move {
            inner.sleep(Duration::from_millis(10)).await;
            let _ = tx.send(7);
        }
        .boxed(),
    );
    assert_eq!(rx.await.unwrap(), 7);

    let caller = std::thread::current().id();
    let (answer, thread) = rt
        .spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(20));
            (6 * 7, std::thread::current().id())
        })
        .await
        .unwrap();
    assert_eq!(answer, 42);
    assert_ne!(thread, caller);

    let panicked = rt.spawn_blocking(|| -> u32 { panic!("on purpose") }).await;
    assert!(panicked.is_err());

    // Many at once all complete.
    let all = futures::future::join_all((0..32).map(|i| rt.spawn_blocking(move || i * 2))).await;
    let sum: i32 = all.into_iter().map(Result::unwrap).sum();
    assert_eq!(sum, (0..32).map(|i| i * 2).sum::<i32>());
}

/// `within`: a future that is ready at once is its value; one that completes before the
/// budget is its value; one that never completes is `None` once the budget passed (not
/// earlier).
async fn check_within<R: Runtime>(rt: R) {
    assert_eq!(
        speil_driver::within(&rt, Duration::ZERO, async { 7 }).await,
        Some(7)
    );

    let later = rt.sleep(Duration::from_millis(50));
    let done = speil_driver::within(&rt, Duration::from_secs(30), later.map(|()| 8)).await;
    assert_eq!(done, Some(8));

    let t0 = Instant::now();
    let budget = Duration::from_millis(300);
    let never = speil_driver::within(&rt, budget, futures::future::pending::<()>()).await;
    assert_eq!(never, None);
    assert_between("within's budget", t0.elapsed(), budget);
}
