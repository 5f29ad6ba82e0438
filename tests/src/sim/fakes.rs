//! The fakes of the simulated cluster: a DHT shared by every node ([`FakeDht`]), an in-memory
//! content store per node ([`FakeStore`]), and a peer client ([`FakePeers`]) whose fetches
//! are answered by another simulated node's registry service over a simulated [`Link`].
//!
//! Everything a fake does is recorded in the cluster's trace ([`Record`]), on simulated time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use speil_core::mirror::{ContentRange, FetchFailure, FetchRange, FetchResponse};
use speil_core::request::MIRRORED_HEADER;
use speil_core::store::ImageState;
use speil_core::{Digest, Key};
use speil_driver::{
    BlobBody, ContentStore, PeerClient, PeerRequest, Provider, Router, Runtime, SourceError,
};
use speil_http::BoxError;
use speil_http::body::ResponseBody;
use speil_http::client::{DOCKER_CONTENT_DIGEST, PeerResponse, fetch_response};
use speil_http::server::RegistryService;

use super::runtime::{SimRuntime, SimTimer};

/// The registry port of every simulated node.
pub const REGISTRY_PORT: u16 = 5000;

/// Node `node`'s IP (TEST-NET-1: never dialled, the links are simulated).
pub fn ip(node: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, node as u8))
}

/// How a simulated node's registry answers over the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Time to connect; `None`: the peer never accepts the connection.
    pub dial: Option<Duration>,
    /// Time from the request sent to the response's head.
    pub ttfb: Duration,
    /// Body bytes per millisecond.
    pub bytes_per_ms: u64,
    /// Bytes per delivered body chunk.
    pub chunk: usize,
    /// The body breaks (an error, as a reset connection) after this many bytes.
    pub break_after: Option<u64>,
    /// The body stops, without closing, after this many bytes.
    pub stall_after: Option<u64>,
    /// The response names another `Docker-Content-Digest`.
    pub lies: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            dial: Some(Duration::from_millis(1)),
            ttfb: Duration::from_millis(2),
            bytes_per_ms: 1000,
            chunk: 1000,
            break_after: None,
            stall_after: None,
            lies: false,
        }
    }
}

/// How a relayed peer body ended, as its link saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every byte of the response was delivered.
    Complete,
    /// The link broke it ([`Link::break_after`]).
    Broke,
    /// It was dropped while stalled ([`Link::stall_after`]).
    Stalled,
    /// It was dropped before its end (a hedge that lost, a cancelled fetch, an abort).
    Dropped,
}

/// Something a fake saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The node's router was asked for providers of `key` and found these.
    Lookup {
        /// The key.
        key: Key,
        /// The providers it will report.
        found: Vec<u32>,
    },
    /// The node announced these keys (one batch).
    Advertise(Vec<Key>),
    /// The node stopped announcing these keys (one batch).
    Withdraw(Vec<Key>),
    /// The node's driver fetched from `peer`.
    Fetch {
        /// The peer dialled.
        peer: u32,
        /// `GET` or `HEAD`.
        method: http::Method,
        /// The range the core asked for.
        range: FetchRange,
    },
    /// A fetch's connection to `peer` is up.
    Connected {
        /// The peer.
        peer: u32,
    },
    /// `peer`'s head arrived.
    Responded {
        /// The peer.
        peer: u32,
        /// Its status.
        status: u16,
        /// Its `Content-Range`.
        content_range: Option<ContentRange>,
    },
    /// `peer`'s registry aborted the request before its head.
    FetchFailed {
        /// The peer.
        peer: u32,
    },
    /// A body from `peer` ended after delivering `delivered` bytes to this node.
    Body {
        /// The peer.
        peer: u32,
        /// Bytes delivered.
        delivered: u64,
        /// How it ended.
        end: BodyEnd,
    },
    /// The node's store opened `len` bytes of a blob from `offset` (a local answer).
    Opened {
        /// The blob.
        digest: Digest,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

/// One trace entry: when, at which node, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Simulated time since the start.
    pub at: Duration,
    /// The node whose fake saw it.
    pub node: u32,
    /// What.
    pub event: Event,
}

/// The simulated network: links, addresses, registries, the DHT's table and the trace.
#[derive(Default)]
pub struct World {
    /// How each node's registry answers.
    pub links: BTreeMap<u32, Link>,
    /// Overrides for one direction: `(from, to)` — how `to` answers `from`.
    pub pair_links: BTreeMap<(u32, u32), Link>,
    /// Who is at which IP.
    pub addrs: BTreeMap<IpAddr, u32>,
    /// Every node's registry service.
    pub services: BTreeMap<u32, RegistryService>,
    /// Providers per key.
    pub dht: BTreeMap<Key, BTreeSet<u32>>,
    /// How long a lookup takes to report.
    pub lookup_latency: Duration,
    /// What happened.
    pub trace: Vec<Record>,
}

impl World {
    /// How `to` answers `from`.
    pub fn link(&self, from: u32, to: u32) -> Link {
        self.pair_links
            .get(&(from, to))
            .or_else(|| self.links.get(&to))
            .cloned()
            .unwrap_or_default()
    }
}

/// The shared [`World`].
#[derive(Clone, Default)]
pub struct Net(Arc<Mutex<World>>);

impl Net {
    /// Locks the world.
    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, rt: &SimRuntime, node: u32, event: Event) {
        let at = rt.elapsed();
        self.lock().trace.push(Record { at, node, event });
    }
}

/// A fake DHT: one table shared by every node, each node's view of it a `FakeDht`.
pub struct FakeDht {
    /// The node.
    pub node: u32,
    /// The network.
    pub net: Net,
    /// The runtime (lookups take simulated time).
    pub rt: SimRuntime,
}

impl Router<u32> for FakeDht {
    fn name(&self) -> &str {
        "fake-dht"
    }

    fn lookup(&self, key: &Key, count: usize) -> BoxStream<'static, Provider<u32>> {
        let (found, latency) = {
            let w = self.net.lock();
            let found: Vec<u32> = w
                .dht
                .get(key)
                .map(|s| s.iter().copied().take(count).collect())
                .unwrap_or_default();
            (found, w.lookup_latency)
        };
        self.net.record(
            &self.rt,
            self.node,
            Event::Lookup {
                key: key.clone(),
                found: found.clone(),
            },
        );
        let timer = self.rt.timer(self.rt.now() + latency);
        let providers: Vec<Provider<u32>> = found
            .into_iter()
            .map(|peer| Provider {
                peer,
                ips: vec![ip(peer)],
            })
            .collect();
        futures::stream::once(async move {
            timer.await;
            futures::stream::iter(providers)
        })
        .flatten()
        .boxed()
    }

    fn advertise(&self, keys: Vec<Key>) -> BoxFuture<'static, ()> {
        {
            let mut w = self.net.lock();
            for k in &keys {
                w.dht.entry(k.clone()).or_default().insert(self.node);
            }
        }
        self.net.record(&self.rt, self.node, Event::Advertise(keys));
        Box::pin(std::future::ready(()))
    }

    fn withdraw(&self, keys: Vec<Key>) -> BoxFuture<'static, ()> {
        {
            let mut w = self.net.lock();
            for k in &keys {
                if let Some(s) = w.dht.get_mut(k) {
                    s.remove(&self.node);
                }
            }
        }
        self.net.record(&self.rt, self.node, Event::Withdraw(keys));
        Box::pin(std::future::ready(()))
    }

    fn ready(&self) -> bool {
        true
    }
}

/// A fake content store: blobs in memory, each its own image
/// (`127.0.0.1:5000/sim/<node>@<digest>`).
pub struct FakeStore {
    node: u32,
    net: Net,
    rt: SimRuntime,
    blobs: Mutex<BTreeMap<Digest, Bytes>>,
    hung: AtomicBool,
}

/// Bytes per chunk of a blob stream the fake store opens.
const STORE_CHUNK: usize = 16 * 1024;

impl FakeStore {
    /// An empty store of `node`.
    pub fn new(node: u32, net: Net, rt: SimRuntime) -> FakeStore {
        FakeStore {
            node,
            net,
            rt,
            blobs: Mutex::default(),
            hung: AtomicBool::new(false),
        }
    }

    /// From now on the store never answers a question about a blob's size (containerd
    /// stuck): only the core's store budget ends the wait.
    pub fn hang(&self) {
        self.hung.store(true, Ordering::Relaxed);
    }

    fn blobs(&self) -> MutexGuard<'_, BTreeMap<Digest, Bytes>> {
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores a blob; returns its digest.
    pub fn put(&self, bytes: Bytes) -> Digest {
        let d = Digest::sha256_of(&bytes);
        self.blobs().insert(d.clone(), bytes);
        d
    }

    /// Forgets every blob.
    pub fn clear(&self) {
        self.blobs().clear();
    }

    /// What the store holds, as images.
    pub fn images(&self) -> Vec<ImageState> {
        self.blobs()
            .keys()
            .map(|d| ImageState {
                name: format!("127.0.0.1:5000/sim/{}@{d}", self.node),
                target: d.clone(),
                present: vec![d.clone()],
            })
            .collect()
    }
}

impl ContentStore for FakeStore {
    fn resolve_tag<'a>(
        &'a self,
        _image: &'a str,
    ) -> BoxFuture<'a, Result<Option<Digest>, SourceError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn size<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, SourceError>> {
        if self.hung.load(Ordering::Relaxed) {
            return Box::pin(std::future::pending());
        }
        let size = self.blobs().get(digest).map(|b| b.len() as u64);
        Box::pin(std::future::ready(Ok(size)))
    }

    fn read_manifest<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<Bytes>, SourceError>> {
        let bytes = self.blobs().get(digest).cloned();
        Box::pin(std::future::ready(Ok(bytes)))
    }

    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Option<BlobBody>, SourceError>> {
        let blob = self.blobs().get(digest).cloned();
        let body = blob.and_then(|b| {
            let start = usize::try_from(offset).ok()?;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            let region = b.get(start..end).map(|_| b.slice(start..end))?;
            let chunks: Vec<std::io::Result<Bytes>> = (0..region.len())
                .step_by(STORE_CHUNK)
                .map(|at| Ok(region.slice(at..(at + STORE_CHUNK).min(region.len()))))
                .collect();
            Some(BlobBody::Stream(futures::stream::iter(chunks).boxed()))
        });
        if body.is_some() {
            self.net.record(
                &self.rt,
                self.node,
                Event::Opened {
                    digest: digest.clone(),
                    offset,
                    len,
                },
            );
        }
        Box::pin(std::future::ready(Ok(body)))
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<ImageState>, SourceError>> {
        Box::pin(std::future::ready(Ok(self.images())))
    }
}

/// A fake peer client: a fetch is answered by the registry service of the node at the
/// address (the real `RegistryService` over that node's real driver, asked as a peer with
/// `X-Spegel-Mirrored: true`), delivered over the simulated [`Link`].
pub struct FakePeers {
    /// The node fetching.
    pub node: u32,
    /// The network.
    pub net: Net,
    /// The runtime.
    pub rt: SimRuntime,
}

impl PeerClient for FakePeers {
    type Response = PeerResponse;

    fn fetch(
        &self,
        request: PeerRequest,
        connected: Box<dyn FnOnce() + Send>,
    ) -> BoxFuture<'static, Result<(FetchResponse, PeerResponse), FetchFailure>> {
        let (net, rt, from) = (self.net.clone(), self.rt.clone(), self.node);
        let started = rt.now();
        let found = {
            let w = net.lock();
            w.addrs.get(&request.addr.ip()).copied().and_then(|peer| {
                let service = w.services.get(&peer)?.clone();
                Some((peer, w.link(from, peer), service))
            })
        };
        let Some((peer, link, service)) = found else {
            let why = FetchFailure::Connect(format!("{}: no such node", request.addr));
            return Box::pin(std::future::ready(Err(why)));
        };
        net.record(
            &rt,
            from,
            Event::Fetch {
                peer,
                method: request.method.clone(),
                range: request.range,
            },
        );
        Box::pin(async move {
            let Some(dial) = link.dial else {
                // Never accepted: only the core's dial budget ends this fetch.
                return std::future::pending().await;
            };
            rt.timer(started + dial).await;
            net.record(&rt, from, Event::Connected { peer });
            connected();
            let mut builder = http::Request::builder()
                .method(request.method.clone())
                .uri(request.path.as_str())
                .header(header::HOST, request.addr.to_string())
                .header(MIRRORED_HEADER, "true");
            if let Some(range) = request.range.header_value() {
                builder = builder.header(header::RANGE, range);
            }
            let req = builder
                .body(())
                .map_err(|e| FetchFailure::Connect(e.to_string()))?;
            let answered = service.handle(req).await;
            rt.timer(started + dial + link.ttfb).await;
            let mut response = match answered {
                Ok(r) => r,
                Err(e) => {
                    net.record(&rt, from, Event::FetchFailed { peer });
                    return Err(FetchFailure::Broken(format!("{}: {e}", request.addr)));
                }
            };
            if link.lies {
                let lie = Digest::sha256_of(b"a lie");
                if let Ok(v) = HeaderValue::from_str(lie.as_str()) {
                    response.headers_mut().insert(DOCKER_CONTENT_DIGEST, v);
                }
            }
            let facts = fetch_response(&response);
            net.record(
                &rt,
                from,
                Event::Responded {
                    peer,
                    status: facts.status,
                    content_range: facts.content_range,
                },
            );
            let expected = facts.content_length;
            let response = response.map(|inner| {
                LinkBody {
                    inner,
                    link,
                    rt: rt.clone(),
                    net: net.clone(),
                    from,
                    peer,
                    expected,
                    buf: Bytes::new(),
                    delivered: 0,
                    free_at: None,
                    pending: None,
                    stalled: false,
                    end: None,
                    recorded: false,
                }
                .boxed_unsync()
            });
            Ok((
                facts,
                PeerResponse {
                    addr: request.addr,
                    response,
                },
            ))
        })
    }

    fn describe(&self, response: &PeerResponse) -> String {
        response.addr.to_string()
    }
}

/// A peer's body as the simulated link delivers it: chunks on simulated time at the link's
/// bandwidth, broken or stalled where the link says.
struct LinkBody {
    inner: ResponseBody,
    link: Link,
    rt: SimRuntime,
    net: Net,
    from: u32,
    peer: u32,
    expected: Option<u64>,
    /// Bytes of the peer's body not sent over the link yet.
    buf: Bytes,
    delivered: u64,
    /// When the link has sent everything handed to it so far.
    free_at: Option<Instant>,
    /// A chunk on its way, and the timer of its arrival.
    pending: Option<(Bytes, SimTimer)>,
    stalled: bool,
    end: Option<BodyEnd>,
    recorded: bool,
}

impl LinkBody {
    fn finish(&mut self, end: BodyEnd) {
        self.end = Some(end);
        if !self.recorded {
            self.recorded = true;
            self.net.record(
                &self.rt,
                self.from,
                Event::Body {
                    peer: self.peer,
                    delivered: self.delivered,
                    end,
                },
            );
        }
    }

    /// Bytes the link may still deliver before it breaks or stalls.
    fn allowance(&self) -> u64 {
        [self.link.break_after, self.link.stall_after]
            .into_iter()
            .flatten()
            .map(|limit| limit.saturating_sub(self.delivered))
            .min()
            .unwrap_or(u64::MAX)
    }
}

impl Body for LinkBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some((_, timer)) = &mut this.pending {
                ready!(Pin::new(timer).poll(cx));
                let Some((chunk, _)) = this.pending.take() else {
                    continue;
                };
                this.delivered += chunk.len() as u64;
                if this.expected == Some(this.delivered) {
                    this.finish(BodyEnd::Complete);
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.end.is_some() {
                return Poll::Ready(None);
            }
            if this.link.stall_after.is_some_and(|s| this.delivered >= s) {
                // Open and silent: nothing ever wakes this body; dropping it is the way out.
                this.stalled = true;
                return Poll::Pending;
            }
            if this.link.break_after.is_some_and(|b| this.delivered >= b) {
                this.finish(BodyEnd::Broke);
                return Poll::Ready(Some(Err("the simulated link broke".into())));
            }
            if this.buf.is_empty() {
                match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    None => {
                        this.finish(BodyEnd::Complete);
                        return Poll::Ready(None);
                    }
                    Some(Err(e)) => {
                        this.finish(BodyEnd::Broke);
                        return Poll::Ready(Some(Err(e)));
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            this.buf = data;
                        }
                        continue;
                    }
                }
            }
            let n = this
                .buf
                .len()
                .min(this.link.chunk.max(1))
                .min(usize::try_from(this.allowance()).unwrap_or(usize::MAX));
            let chunk = this.buf.split_to(n);
            let now = this.rt.now();
            let start = this.free_at.map_or(now, |f| f.max(now));
            let nanos = (n as u64).saturating_mul(1_000_000) / this.link.bytes_per_ms.max(1);
            let due = start + Duration::from_nanos(nanos);
            this.free_at = Some(due);
            this.pending = Some((chunk, this.rt.timer(due)));
        }
    }
}

impl Drop for LinkBody {
    fn drop(&mut self) {
        let end = if self.expected == Some(self.delivered) {
            BodyEnd::Complete
        } else if self.stalled {
            BodyEnd::Stalled
        } else {
            BodyEnd::Dropped
        };
        self.finish(end);
    }
}
