//! Mirroring over real HTTP between nodes on loopback addresses, wired through a fake DHT.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use speil_core::Digest;
use speil_http::server::ServerConfig;

fn no_auth() -> ServerConfig {
    ServerConfig { credentials: None }
}

/// A store holding one image whose only layer is `layer`.
fn store_with(layer: &Bytes) -> (Arc<FakeContentStore>, Digest) {
    let s = Arc::new(FakeContentStore::default());
    let d = s.put(layer.clone());
    s.tag("example.com/test/app:v1", &d);
    (s, d)
}

#[tokio::test]
async fn blob_missing_on_a_is_mirrored_from_b() {
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(21, 2).await;
    let layer = blob_bytes(300_000, 7);
    let (sb, digest) = store_with(&layer);
    let b = start_node(2, ls.pop().unwrap(), dht.clone(), sb, no_auth()).await;
    let a = start_node(1, ls.pop().unwrap(), dht.clone(), Arc::default(), no_auth()).await;
    let key = speil_core::Key::digest(&digest);
    eventually(|| dht.providers(&key).contains(&2)).await;

    let path = format!("/v2/test/app/blobs/{digest}?ns=example.com");
    let g = get(a.addr, &path).await;
    assert_eq!(g.status, StatusCode::OK, "{g:?}");
    assert_eq!(g.bytes(), &layer);
    assert_eq!(g.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(g.header("content-length"), Some("300000"));

    // A range through the mirror.
    let g = request(a.addr, Method::GET, &path, &[("range", "bytes=100-199")])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(g.header("content-range"), Some("bytes 100-199/300000"));
    assert_eq!(g.bytes(), &layer.slice(100..200));

    // HEAD through the mirror.
    let h = request(a.addr, Method::HEAD, &path, &[]).await.unwrap();
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("300000"));
    assert!(h.bytes().is_empty());

    // A tag through the mirror.
    let g = get(a.addr, "/v2/test/app/manifests/v1?ns=example.com").await;
    // The "manifest" here is a layer blob: the peer refuses it as a manifest, so A says 404.
    assert_eq!(g.status, StatusCode::NOT_FOUND);

    // A peer's request is never mirrored further.
    let g = request(a.addr, Method::GET, &path, &[("x-spegel-mirrored", "true")])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::NOT_FOUND);

    let text = a.metrics.encode();
    assert!(
        text.contains(r#"spegel_mirror_requests_total{registry="example.com",cache="hit"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"spegel_mirror_requests_total{registry="example.com",cache="miss"} 1"#),
        "{text}"
    );
    eventually(|| a.metrics.mirror_last_success.get() > 1.0e9).await;
    assert!(a.handle.shared().last_success().is_some());
    drop(b);
}

#[tokio::test]
async fn peer_broken_mid_body_is_resumed_from_another() {
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(22, 3).await;
    let layer = blob_bytes(500_000, 9);
    let (sc, digest) = store_with(&layer);
    let c = start_node(3, ls.pop().unwrap(), dht.clone(), sc, no_auth()).await;
    let (sb, _) = store_with(&layer);
    sb.set_behaviour(Behaviour::BreakAfter(123_456));
    let b = start_node(2, ls.pop().unwrap(), dht.clone(), sb, no_auth()).await;
    let a = start_node(1, ls.pop().unwrap(), dht.clone(), Arc::default(), no_auth()).await;
    let key = speil_core::Key::digest(&digest);
    eventually(|| dht.providers(&key).len() == 2).await;
    // B is found first; C only later, so B serves the start of the body.
    *dht.first.lock().unwrap() = vec![2];
    *dht.delay_others.lock().unwrap() = Duration::from_millis(300);

    let path = format!("/v2/test/app/blobs/{digest}?ns=example.com");
    let g = get(a.addr, &path).await;
    assert_eq!(g.status, StatusCode::OK);
    let body = g.body.expect("the body completes");
    assert_eq!(body.len(), layer.len());
    assert!(body == layer, "the resumed body differs");
    // C was asked for the rest only.
    let c_metrics = c.metrics.clone();
    eventually(move || {
        c_metrics
            .encode()
            .contains(r#"handler="/v2/*",method="GET",code="206""#)
    })
    .await;

    // The same with a client range: the resume keeps the range's end.
    let g = request(
        a.addr,
        Method::GET,
        &path,
        &[("range", "bytes=1000-400999")],
    )
    .await
    .unwrap();
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(g.body.expect("body"), layer.slice(1000..401_000));
    drop((b, c));
}

#[tokio::test]
async fn no_peer_to_continue_aborts_the_connection() {
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(23, 2).await;
    let layer = blob_bytes(400_000, 11);
    let (sb, digest) = store_with(&layer);
    sb.set_behaviour(Behaviour::BreakAfter(100_000));
    let b = start_node(2, ls.pop().unwrap(), dht.clone(), sb, no_auth()).await;
    let a = start_node(1, ls.pop().unwrap(), dht.clone(), Arc::default(), no_auth()).await;
    let key = speil_core::Key::digest(&digest);
    eventually(|| dht.providers(&key).contains(&2)).await;

    let path = format!("/v2/test/app/blobs/{digest}?ns=example.com");
    let g = get(a.addr, &path).await;
    assert_eq!(g.status, StatusCode::OK);
    // Never a clean, short body: the connection is aborted.
    assert!(
        g.body.is_err(),
        "got a clean body of {:?} bytes",
        g.body.map(|b| b.len())
    );
    drop(b);
}

#[tokio::test]
async fn lying_peer_is_skipped() {
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(24, 3).await;
    let layer = blob_bytes(50_000, 13);
    let (sc, digest) = store_with(&layer);
    let c = start_node(3, ls.pop().unwrap(), dht.clone(), sc, no_auth()).await;

    // Peer 2 answers every request with other bytes under another digest.
    let liar = ls.pop().unwrap();
    dht.register(2, liar.local_addr().unwrap().ip());
    dht.provide(speil_core::Key::digest(&digest), 2);
    let hits = Arc::new(AtomicUsize::new(0));
    let liar_hits = hits.clone();
    let liar_task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = liar.accept().await else {
                return;
            };
            let hits = liar_hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let lie = Bytes::from_static(b"not the blob you asked for");
                    let d = Digest::sha256_of(&lie);
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("docker-content-digest", d.as_str())
                                .header("content-length", lie.len())
                                .body(Full::new(lie))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let a = start_node(1, ls.pop().unwrap(), dht.clone(), Arc::default(), no_auth()).await;
    let key = speil_core::Key::digest(&digest);
    eventually(|| dht.providers(&key).len() == 2).await;
    *dht.first.lock().unwrap() = vec![2];
    *dht.delay_others.lock().unwrap() = Duration::from_millis(100);

    let g = get(
        a.addr,
        &format!("/v2/test/app/blobs/{digest}?ns=example.com"),
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.bytes(), &layer);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the liar was asked first");
    liar_task.abort();
    drop(c);
}

#[tokio::test]
async fn unknown_content_is_a_404_that_says_why() {
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(25, 2).await;
    let b = start_node(2, ls.pop().unwrap(), dht.clone(), Arc::default(), no_auth()).await;
    let a = start_node(1, ls.pop().unwrap(), dht.clone(), Arc::default(), no_auth()).await;
    let digest = Digest::sha256_of(b"nobody has this");
    // Someone claims to have it, but does not.
    dht.provide(speil_core::Key::digest(&digest), 2);
    let g = get(a.addr, &format!("/v2/test/app/blobs/{digest}")).await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    let msg = g.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("attempts failed"), "{msg}");
    let text = a.metrics.encode();
    assert!(text.contains(r#"cache="miss"} 1"#), "{text}");
    drop(b);
}

#[tokio::test]
async fn client_leaving_mid_body_ends_the_mirror() {
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(26, 2).await;
    let layer = blob_bytes(2_000_000, 17);
    let (sb, digest) = store_with(&layer);
    sb.set_behaviour(Behaviour::Slow);
    let b = start_node(2, ls.pop().unwrap(), dht.clone(), sb, no_auth()).await;
    let a = start_node(1, ls.pop().unwrap(), dht.clone(), Arc::default(), no_auth()).await;
    let key = speil_core::Key::digest(&digest);
    eventually(|| dht.providers(&key).contains(&2)).await;

    let stream = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(
            stream,
        ))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = http::Request::get(format!("/v2/test/app/blobs/{digest}"))
        .header("host", "a")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let shared = a.handle.shared().clone();
    assert_eq!(shared.mirror_activity().0, 1);
    // The client goes away in the middle of the body.
    drop(resp);
    drop(sender);
    conn_task.abort();
    eventually(|| shared.mirror_activity() == (0, 0)).await;
    let inflight = a.metrics.clone();
    eventually(move || {
        inflight
            .encode()
            .contains(r#"http_requests_inflight{handler="/v2/*"} 0"#)
    })
    .await;
    drop(b);
}

#[tokio::test]
async fn peers_carry_basic_auth() {
    let creds = speil_http::auth::Credentials::new("spegel", "s3cret").unwrap();
    let with_auth = || ServerConfig {
        credentials: Some(creds.clone()),
    };
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(27, 2).await;
    let layer = blob_bytes(70_000, 19);
    let (sb, digest) = store_with(&layer);
    let b = start_node(2, ls.pop().unwrap(), dht.clone(), sb, with_auth()).await;
    let a = start_node(
        1,
        ls.pop().unwrap(),
        dht.clone(),
        Arc::default(),
        with_auth(),
    )
    .await;
    let key = speil_core::Key::digest(&digest);
    eventually(|| dht.providers(&key).contains(&2)).await;
    let auth = creds.header().to_str().unwrap().to_owned();
    let path = format!("/v2/test/app/blobs/{digest}");
    let g = request(a.addr, Method::GET, &path, &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.bytes(), &layer);
    drop(b);
}

/// What a fake peer does after sending the headers and a third of the body.
#[derive(Clone, Copy)]
enum AfterPart {
    /// Its process dies: the socket closes.
    Dies,
    /// It goes silent with its connection open (a frozen process, a partition without a reset).
    Stalls,
}

/// Node C holds a 256 KiB layer; peer 2 (a raw TCP fake) is asked first and breaks as `after`
/// says; node A mirrors. Returns A, C, the layer and its digest, and the fake's task.
async fn one_broken_peer(
    net: u8,
    seed: u64,
    after: AfterPart,
) -> (
    TestNode,
    TestNode,
    Bytes,
    Digest,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(net, 3).await;
    let layer = blob_bytes(256 * 1024, seed);
    let (sc, digest) = store_with(&layer);
    let c = start_node(3, ls.pop().unwrap(), dht.clone(), sc, no_auth()).await;
    let broken = ls.pop().unwrap();
    dht.register(2, broken.local_addr().unwrap().ip());
    dht.provide(speil_core::Key::digest(&digest), 2);
    let part = layer.slice(..layer.len() / 3);
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ndocker-content-digest: {digest}\r\ncontent-type: application/octet-stream\r\n\r\n",
        layer.len()
    );
    let task = tokio::spawn(async move {
        let Ok((mut s, _)) = broken.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&part).await;
        let _ = s.flush().await;
        if let AfterPart::Stalls = after {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        drop(s);
    });
    let a = start_node(1, ls.pop().unwrap(), dht.clone(), Arc::default(), no_auth()).await;
    let key = speil_core::Key::digest(&digest);
    eventually(|| dht.providers(&key).len() == 2).await;
    *dht.first.lock().unwrap() = vec![2];
    *dht.delay_others.lock().unwrap() = Duration::from_millis(200);
    (a, c, layer, digest, task)
}

#[tokio::test]
async fn peer_dying_mid_body_is_resumed_from_another() {
    let (a, c, layer, digest, task) = one_broken_peer(28, 23, AfterPart::Dies).await;
    let g = get(a.addr, &format!("/v2/test/app/blobs/{digest}")).await;
    assert_eq!(g.status, StatusCode::OK);
    let body = g.body.expect("the body completes");
    assert!(body == layer, "the resumed body differs");
    // C sent exactly the rest of the blob.
    let rest = layer.len() - layer.len() / 3;
    let prefix = r#"http_response_size_bytes_sum{handler="/v2/*",method="GET",code="206"} "#;
    let c_metrics = c.metrics.clone();
    eventually(move || {
        c_metrics.encode().lines().any(|l| {
            l.strip_prefix(prefix)
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v == rest as f64)
        })
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn peer_stalling_mid_body_is_resumed_from_another() {
    let (a, c, layer, digest, task) = one_broken_peer(29, 29, AfterPart::Stalls).await;
    let started = std::time::Instant::now();
    let g = tokio::time::timeout(
        Duration::from_secs(20),
        get(a.addr, &format!("/v2/test/app/blobs/{digest}")),
    )
    .await
    .expect("the client never hangs on a stalled peer");
    assert_eq!(g.status, StatusCode::OK);
    let body = g.body.expect("the body completes");
    assert!(body == layer, "the resumed body differs");
    // It took the stall timeout (test config), not the peer's hour.
    assert!(
        started.elapsed() >= mirror_config().stall_timeout,
        "{:?}",
        started.elapsed()
    );
    drop(c);
    task.abort();
}

#[tokio::test]
async fn graceful_shutdown_finishes_transfers_in_flight() {
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(29, 2).await;
    let layer = blob_bytes(400_000, 29);
    let source = Arc::new(FakeContentStore::default());
    let digest = source.put(layer.clone());
    source.tag("example.com/test/app:v1", &digest);
    source.set_behaviour(Behaviour::Slow);
    // Node B is served by `serve_until` so that it can be shut down.
    let listener = ls.pop().unwrap();
    let addr = listener.local_addr().unwrap();
    let b = start_node(2, ls.pop().unwrap(), dht.clone(), source.clone(), no_auth()).await;
    let service = speil_http::server::RegistryService::new(b.handle.clone(), source, no_auth());
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        speil_http::Server::new(speil_driver::tokio::Tokio)
            .serve_until(listener, service, async move {
                let _ = stop_rx.await;
            })
            .await
    });

    let path = format!("/v2/test/app/blobs/{digest}");
    let transfer = tokio::spawn({
        let path = path.clone();
        async move { get(addr, &path).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    b.handle.shared().shutdown();
    stop_tx.send(()).unwrap();
    let g = transfer.await.unwrap();
    assert_eq!(g.status, StatusCode::OK);
    assert!(g.body.expect("the transfer in flight finishes") == layer);
    // The server returned once the transfer was done, and accepts nothing more.
    server.await.unwrap().unwrap();
    assert!(request(addr, Method::GET, "/v2/", &[]).await.is_err());
    // A new request on the other listener of the same node gets 503.
    let g = get(b.addr, &path).await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
}
