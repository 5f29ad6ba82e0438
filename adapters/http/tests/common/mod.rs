//! Test helpers: in-memory fakes of the content source and the DHT, nodes on loopback
//! addresses, and a small HTTP client.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use speil_core::mirror::MirrorConfig;
use speil_core::node::{Node, NodeConfig};
use speil_core::store::{ImageState, StoreEvent};
use speil_core::{Digest, Key};
use speil_driver::metrics::Metrics;
use speil_driver::node as driver;
use speil_driver::tokio::Tokio;
use speil_driver::{BlobBody, ContentStore, Provider, Router, SourceError};
use speil_driver::{DriverConfig, DriverHandle, Parts};
use speil_http::Server;
use speil_http::client::PeerResponse;
use speil_http::server::{RegistryService, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a fake store does with a blob's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Serves it whole.
    #[default]
    Whole,
    /// Sends this many bytes, then the body fails.
    BreakAfter(usize),
    /// Sends 16 KiB every 20 ms.
    Slow,
    /// Serves a region of a file (written to a temporary directory).
    File,
}

/// An in-memory content source.
#[derive(Default)]
pub struct FakeContentStore {
    tags: Mutex<BTreeMap<String, Digest>>,
    blobs: Mutex<BTreeMap<Digest, Bytes>>,
    behaviour: Mutex<Behaviour>,
    /// While set, a streamed body waits for it to turn true before its first chunk.
    gate: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    /// Streamed bodies that have started waiting at the gate.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeContentStore {
    pub fn put(&self, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let d = Digest::sha256_of(&bytes);
        self.blobs.lock().unwrap().insert(d.clone(), bytes);
        d
    }

    pub fn tag(&self, image: &str, digest: &Digest) {
        self.tags
            .lock()
            .unwrap()
            .insert(image.to_owned(), digest.clone());
    }

    /// Forgets an image and a blob without any store event (as containerd's garbage
    /// collection does).
    pub fn forget(&self, image: &str, digest: &Digest) {
        self.tags.lock().unwrap().remove(image);
        self.blobs.lock().unwrap().remove(digest);
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Holds every streamed body opened from now on before its first chunk, until the
    /// returned sender sends `true` (or is dropped).
    pub fn hold(&self) -> tokio::sync::watch::Sender<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        *self.gate.lock().unwrap() = Some(rx);
        self.waiting.store(0, std::sync::atomic::Ordering::SeqCst);
        tx
    }

    /// Streamed bodies that have reached the gate of [`FakeContentStore::hold`].
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn images(&self) -> Vec<ImageState> {
        let tags = self.tags.lock().unwrap();
        let blobs = self.blobs.lock().unwrap();
        tags.iter()
            .map(|(name, d)| ImageState {
                name: name.clone(),
                target: d.clone(),
                present: blobs.keys().cloned().collect(),
            })
            .collect()
    }
}

impl ContentStore for FakeContentStore {
    fn resolve_tag<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Option<Digest>, SourceError>> {
        let r = self.tags.lock().unwrap().get(image).cloned();
        Box::pin(async move { Ok(r) })
    }

    fn size<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, SourceError>> {
        let r = self
            .blobs
            .lock()
            .unwrap()
            .get(digest)
            .map(|b| b.len() as u64);
        Box::pin(async move { Ok(r) })
    }

    fn read_manifest<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<Bytes>, SourceError>> {
        let r = self.blobs.lock().unwrap().get(digest).cloned();
        Box::pin(async move { Ok(r) })
    }

    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Option<BlobBody>, SourceError>> {
        let blob = self.blobs.lock().unwrap().get(digest).cloned();
        let behaviour = *self.behaviour.lock().unwrap();
        let gate = self.gate.lock().unwrap().clone();
        let waiting = self.waiting.clone();
        Box::pin(async move {
            let Some(blob) = blob else { return Ok(None) };
            if behaviour == Behaviour::File {
                let path = std::env::temp_dir().join(format!(
                    "speil-http-test-{}-{}",
                    std::process::id(),
                    digest.hex()
                ));
                std::fs::write(&path, &blob).map_err(SourceError::new)?;
                let file = std::fs::File::open(&path).map_err(SourceError::new)?;
                // The open file stays readable after its name is gone.
                let _ = std::fs::remove_file(&path);
                return Ok(Some(BlobBody::File { file, offset, len }));
            }
            let part = blob.slice(offset as usize..(offset + len) as usize);
            let chunks: Vec<std::io::Result<Bytes>> = match behaviour {
                Behaviour::Whole | Behaviour::Slow | Behaviour::File => part
                    .chunks(16 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect(),
                Behaviour::BreakAfter(n) => {
                    let n = n.min(part.len());
                    vec![
                        Ok(part.slice(..n)),
                        Err(std::io::Error::other("simulated failure mid-body")),
                    ]
                }
            };
            let pause = if behaviour == Behaviour::Slow { 20 } else { 1 };
            // A short pause between chunks, like a disk or a network.
            let held = async move {
                if let Some(mut gate) = gate {
                    waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // Released by `true`, or by the sender going away.
                    let _ = gate.wait_for(|open| *open).await;
                }
            };
            let stream = futures::stream::once(held)
                .filter_map(|()| async { None })
                .chain(futures::stream::iter(chunks).then(move |c| async move {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    c
                }))
                .boxed();
            Ok(Some(BlobBody::Stream(stream)))
        })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<ImageState>, SourceError>> {
        let images = self.images();
        Box::pin(async move { Ok(images) })
    }
}

/// An in-memory DHT shared by the fake routers of a test.
#[derive(Default)]
pub struct FakeDht {
    records: Mutex<BTreeMap<Key, BTreeSet<u32>>>,
    ips: Mutex<BTreeMap<u32, IpAddr>>,
    /// Providers listed first by every lookup (e.g. a lying peer), and a delay before the
    /// others are listed.
    pub first: Mutex<Vec<u32>>,
    pub delay_others: Mutex<Duration>,
}

impl FakeDht {
    pub fn register(&self, peer: u32, ip: IpAddr) {
        self.ips.lock().unwrap().insert(peer, ip);
    }

    pub fn provide(&self, key: Key, peer: u32) {
        self.records
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .insert(peer);
    }

    pub fn providers(&self, key: &Key) -> BTreeSet<u32> {
        self.records
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

/// One node's view of the fake DHT.
pub struct FakeRouter {
    pub dht: Arc<FakeDht>,
    pub me: u32,
}

impl Router<u32> for FakeRouter {
    fn name(&self) -> &str {
        "libp2p"
    }

    fn lookup(&self, key: &Key, count: usize) -> BoxStream<'static, Provider<u32>> {
        let ips = self.dht.ips.lock().unwrap().clone();
        let first = self.dht.first.lock().unwrap().clone();
        let delay = *self.dht.delay_others.lock().unwrap();
        let all = self.dht.providers(key);
        let provider = move |p: u32| Provider {
            peer: p,
            ips: ips.get(&p).copied().into_iter().collect(),
        };
        let head: Vec<Provider<u32>> = all
            .iter()
            .filter(|p| first.contains(p))
            .map(|p| provider(*p))
            .collect();
        let tail: Vec<Provider<u32>> = all
            .iter()
            .filter(|p| !first.contains(p))
            .map(|p| provider(*p))
            .collect();
        let head = futures::stream::iter(head);
        let tail = futures::stream::once(async move {
            tokio::time::sleep(delay).await;
            futures::stream::iter(tail)
        })
        .flatten();
        head.chain(tail).take(count).boxed()
    }

    fn advertise(&self, keys: Vec<Key>) -> BoxFuture<'static, ()> {
        for k in keys {
            self.dht.provide(k, self.me);
        }
        Box::pin(async {})
    }

    fn withdraw(&self, keys: Vec<Key>) -> BoxFuture<'static, ()> {
        let mut records = self.dht.records.lock().unwrap();
        for k in keys {
            if let Some(set) = records.get_mut(&k) {
                set.remove(&self.me);
            }
        }
        Box::pin(async {})
    }

    fn ready(&self) -> bool {
        true
    }

    fn peers(&self) -> Vec<String> {
        self.dht
            .ips
            .lock()
            .unwrap()
            .keys()
            .map(|p| format!("peer-{p}"))
            .collect()
    }
}

/// A running node.
pub struct TestNode {
    pub addr: SocketAddr,
    pub source: Arc<FakeContentStore>,
    pub handle: DriverHandle<PeerResponse>,
    pub metrics: Arc<Metrics>,
    /// The registry server (its zero-copy counters).
    pub server: Server<Tokio>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TestNode {
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Test mirror settings: generous budgets (the fake DHT may list peers late, and a loaded
/// machine may answer slowly); the budgets themselves are the core's tests' business.
pub fn mirror_config() -> MirrorConfig {
    MirrorConfig {
        resolve_timeout: Duration::from_secs(2),
        min_header_budget: Duration::from_secs(2),
        dial_timeout: Duration::from_secs(1),
        stall_timeout: Duration::from_millis(500),
        ..MirrorConfig::default()
    }
}

/// Starts a node with peer id `me` listening on `listener`.
pub async fn start_node(
    me: u32,
    listener: TcpListener,
    dht: Arc<FakeDht>,
    source: Arc<FakeContentStore>,
    server: ServerConfig,
) -> TestNode {
    start_node_with(me, listener, dht, source, server, |_| {}).await
}

/// [`start_node`] with the node's configuration changed by `tune` first.
pub async fn start_node_with(
    me: u32,
    listener: TcpListener,
    dht: Arc<FakeDht>,
    source: Arc<FakeContentStore>,
    server: ServerConfig,
    tune: impl FnOnce(&mut NodeConfig<u32>),
) -> TestNode {
    let addr = listener.local_addr().unwrap();
    dht.register(me, addr.ip());
    let mut cfg = NodeConfig::new(me);
    cfg.mirror = mirror_config();
    cfg.seed = u64::from(me);
    tune(&mut cfg);
    let metrics = Arc::new(Metrics::default());
    let snapshot = StoreEvent::Snapshot(source.images());
    let store_events = futures::stream::iter(vec![snapshot])
        .chain(futures::stream::pending())
        .boxed();
    let (handle, fut) = driver::start(Parts {
        node: Node::new(cfg),
        runtime: Tokio,
        store: source.clone(),
        router: Arc::new(FakeRouter { dht, me }),
        client: Arc::new(speil_http::HyperPeers::new(
            Tokio,
            server.credentials.clone(),
        )),
        store_events,
        metrics: metrics.clone(),
        config: DriverConfig {
            registry_port: addr.port(),
        },
    });
    let driver_task = tokio::spawn(fut);
    let service = RegistryService::new(handle.clone(), source.clone(), server);
    let http = Server::new(Tokio);
    let serving = http.clone();
    let server_task = tokio::spawn(async move {
        let _ = serving.serve(listener, service).await;
    });
    TestNode {
        addr,
        source,
        handle,
        metrics,
        server: http,
        tasks: vec![driver_task, server_task],
    }
}

/// Binds `127.0.<net>.<host>` for hosts `11..11+n`, all on one port.
pub async fn listeners(net: u8, n: u8) -> Vec<TcpListener> {
    for _attempt in 0..20 {
        let first = TcpListener::bind((std::net::Ipv4Addr::new(127, 0, net, 11), 0))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for h in 1..n {
            match TcpListener::bind((std::net::Ipv4Addr::new(127, 0, net, 11 + h), port)).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == usize::from(n) {
            return all;
        }
    }
    panic!("could not bind {n} listeners on one port");
}

/// A response as the test client saw it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, or the error that ended it.
    pub body: Result<Bytes, String>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn bytes(&self) -> &Bytes {
        self.body.as_ref().expect("body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("json body")
    }
}

/// Sends one request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Got, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub async fn get(addr: SocketAddr, path: &str) -> Got {
    request(addr, Method::GET, path, &[])
        .await
        .expect("request")
}

/// Deterministic pseudo-random bytes.
pub fn blob_bytes(len: usize, seed: u64) -> Bytes {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Waits until `f` holds (at most 5 s).
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}
