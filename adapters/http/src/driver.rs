//! The driver: one future that owns the core [`Node`] and executes its commands.
//!
//! Every fact reaches the driver over a channel: client requests from the registry server
//! (through a [`DriverHandle`]), and the reports of the tasks the driver spawned (lookups,
//! fetches, pipes, store re-checks), and store events from the content source's stream. For
//! each fact the driver calls the node's `handle_*`, drains `poll_output` and executes every
//! command, then arms one timer at `poll_timeout` (the core contract).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::channel::{mpsc, oneshot};
use futures::future::{AbortHandle, Abortable, BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use http_body_util::BodyExt;
use speil_core::Key;
use speil_core::error::OciError;
use speil_core::mirror::{FetchFailure, FetchId, LookupId, RequestId};
use speil_core::node::{Local, Node, Output};
use speil_core::range::ByteRange;
use speil_core::request::ContentRequest;
use speil_core::store::{ImageState, StoreEvent};

use crate::auth::Credentials;
use crate::body::ResponseBody;
use crate::client;
use crate::metrics::Metrics;
use crate::pipe::{PeerBody, Pipe, PipeControl, PipeEvent, Stall};
use crate::source::{ContentSource, Provider, Router};
use speil_driver::{Runtime, RuntimeExt};

/// How the driver reaches peers.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The registry port of every peer (this node's own registry port: SPEC.md §5).
    pub registry_port: u16,
    /// Credentials sent to peers when basic auth is on.
    pub credentials: Option<Credentials>,
}

/// What the driver decided about a client request.
pub enum Decision {
    /// Serve it from the local store.
    ServeLocal,
    /// Answer with this error.
    Fail(OciError),
    /// Answer with this response (a peer's, relayed; its body is a [`Pipe`]).
    Relay(http::Response<ResponseBody>),
    /// Abort the connection.
    Abort,
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::ServeLocal => f.write_str("ServeLocal"),
            Decision::Fail(e) => f.debug_tuple("Fail").field(e).finish(),
            Decision::Relay(r) => f.debug_tuple("Relay").field(&r.status()).finish(),
            Decision::Abort => f.write_str("Abort"),
        }
    }
}

/// A message from the registry server.
enum ClientMsg {
    Request {
        id: RequestId,
        request: ContentRequest,
        local: Local,
        reply: oneshot::Sender<Decision>,
    },
    Closed {
        id: RequestId,
    },
}

/// A report of a task the driver started.
enum Event<P> {
    Providers {
        lookup: LookupId,
        providers: Vec<Provider<P>>,
    },
    LookupFinished {
        lookup: LookupId,
    },
    FetchConnected {
        fetch: FetchId,
    },
    FetchFailed {
        fetch: FetchId,
        why: FetchFailure,
    },
    FetchResponded {
        fetch: FetchId,
        response: http::Response<PeerBody>,
    },
    Pipe {
        request: RequestId,
        event: PipeEvent,
    },
    Store(StoreEvent),
}

/// One image as the debug page shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageSummary {
    /// The image name.
    pub name: String,
    /// The digest it points at.
    pub digest: String,
    /// How many of its blobs are present.
    pub present: usize,
}

/// State shared by the driver, the servers and the runtime.
pub struct Shared {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    store_connected: AtomicBool,
    shutting_down: AtomicBool,
    next_request: AtomicU64,
    active: AtomicU64,
    images: Mutex<Vec<ImageSummary>>,
    last_success: Mutex<Option<SystemTime>>,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
    peers: Box<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("store_connected", &self.store_connected)
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Whether the store is connected (a snapshot arrived since the last disconnect).
    pub fn store_connected(&self) -> bool {
        self.store_connected.load(Ordering::Relaxed)
    }

    /// Whether the router is ready and the store connected (`/readyz`).
    pub fn ready(&self) -> bool {
        (self.ready)() && self.store_connected()
    }

    /// Whether shutdown began (new requests get 503).
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Begins shutdown: from now on new registry requests get 503; requests in flight finish.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The images of the store, as last reported.
    pub fn images(&self) -> Vec<ImageSummary> {
        self.images.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The peers the router knows.
    pub fn peers(&self) -> Vec<String> {
        (self.peers)()
    }

    /// When the last mirrored response was completed.
    pub fn last_success(&self) -> Option<SystemTime> {
        self.last_success.lock().ok().and_then(|g| *g)
    }

    /// Requests being mirrored and fetches in progress, as of the driver's last step.
    pub fn mirror_activity(&self) -> (u64, u64) {
        let v = self.active.load(Ordering::Relaxed);
        (v >> 32, v & 0xffff_ffff)
    }

    fn next_request_id(&self) -> RequestId {
        RequestId(self.next_request.fetch_add(1, Ordering::Relaxed))
    }
}

/// The registry server's way to the driver. Cheap to clone.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::UnboundedSender<ClientMsg>,
    shared: Arc<Shared>,
}

impl fmt::Debug for DriverHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverHandle").finish_non_exhaustive()
    }
}

impl DriverHandle {
    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Asks what to do with a content request. The returned guard reports the client's
    /// departure to the driver when dropped before a decision was taken.
    pub fn decide(
        &self,
        request: ContentRequest,
        local: Local,
    ) -> impl Future<Output = Decision> + Send + 'static {
        let id = self.shared.next_request_id();
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .unbounded_send(ClientMsg::Request {
                id,
                request,
                local,
                reply,
            })
            .is_ok();
        let mut guard = CloseGuard {
            id,
            tx: self.tx.clone(),
            armed: sent,
        };
        async move {
            let decision = rx.await;
            guard.disarm();
            decision.unwrap_or_else(|_| {
                Decision::Fail(OciError::unavailable("the node is shutting down"))
            })
        }
    }
}

/// Tells the driver that a client left while its request was being decided.
struct CloseGuard {
    id: RequestId,
    tx: mpsc::UnboundedSender<ClientMsg>,
    armed: bool,
}

impl CloseGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.unbounded_send(ClientMsg::Closed { id: self.id });
        }
    }
}

/// What the driver needs from outside.
pub struct Parts<P, R> {
    /// The node.
    pub node: Node<P>,
    /// The runtime.
    pub runtime: R,
    /// The content store (for re-checks).
    pub source: Arc<dyn ContentSource>,
    /// The DHT.
    pub router: Arc<dyn Router<P>>,
    /// Store events (snapshot at start-up, then changes), e.g. from containerd's event stream.
    pub store_events: BoxStream<'static, StoreEvent>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// How to reach peers.
    pub config: DriverConfig,
}

/// Builds the driver: the handle for the registry server, and the future to spawn. The
/// future ends when every [`DriverHandle`] is dropped.
pub fn start<P, R>(parts: Parts<P, R>) -> (DriverHandle, BoxFuture<'static, ()>)
where
    P: Clone + Ord + fmt::Debug + Send + Sync + 'static,
    R: Runtime,
{
    let (client_tx, client_rx) = mpsc::unbounded();
    let (event_tx, event_rx) = mpsc::unbounded();
    let ready_router = parts.router.clone();
    let peers_router = parts.router.clone();
    let shared = Arc::new(Shared {
        metrics: parts.metrics,
        store_connected: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        next_request: AtomicU64::new(0),
        active: AtomicU64::new(0),
        images: Mutex::new(Vec::new()),
        last_success: Mutex::new(None),
        ready: Box::new(move || ready_router.ready()),
        peers: Box::new(move || peers_router.peers()),
    });
    let (router_tx, router_rx) = mpsc::unbounded();
    let driver = Driver {
        node: parts.node,
        rt: parts.runtime,
        source: parts.source,
        router: parts.router,
        shared: shared.clone(),
        config: parts.config,
        events: event_tx,
        router_tx,
        requests: BTreeMap::new(),
        fetches: BTreeMap::new(),
        lookups: BTreeMap::new(),
        peer_ips: BTreeMap::new(),
        responded: BTreeMap::new(),
        queue: VecDeque::new(),
    };
    let handle = DriverHandle {
        tx: client_tx,
        shared,
    };
    let fut = driver
        .run(client_rx, event_rx, parts.store_events, router_rx)
        .boxed();
    (handle, fut)
}

/// The shortest timer the driver arms.
const MIN_SLEEP: Duration = Duration::from_millis(1);

enum RouterCmd {
    Advertise(Vec<Key>),
    Withdraw(Vec<Key>),
}

struct ReqState {
    request: ContentRequest,
    reply: Option<oneshot::Sender<Decision>>,
    pipe: Option<mpsc::UnboundedSender<PipeControl>>,
    /// Whether the request went to the mirror (counted as a hit or a miss).
    mirroring: bool,
}

/// The registry address a peer response came from (kept in the response's extensions).
#[derive(Debug, Clone, Copy)]
struct PeerAddr(SocketAddr);

struct FetchTask {
    abort: AbortHandle,
    /// The peer's registry, for the log.
    addr: SocketAddr,
}

struct Driver<P, R> {
    node: Node<P>,
    rt: R,
    source: Arc<dyn ContentSource>,
    router: Arc<dyn Router<P>>,
    shared: Arc<Shared>,
    config: DriverConfig,
    events: mpsc::UnboundedSender<Event<P>>,
    router_tx: mpsc::UnboundedSender<RouterCmd>,
    requests: BTreeMap<RequestId, ReqState>,
    fetches: BTreeMap<FetchId, FetchTask>,
    lookups: BTreeMap<LookupId, AbortHandle>,
    peer_ips: BTreeMap<P, Vec<IpAddr>>,
    responded: BTreeMap<FetchId, http::Response<PeerBody>>,
    /// Facts produced while executing commands, handled before waiting again.
    queue: VecDeque<Event<P>>,
}

impl<P, R> Driver<P, R>
where
    P: Clone + Ord + fmt::Debug + Send + Sync + 'static,
    R: Runtime,
{
    async fn run(
        mut self,
        mut clients: mpsc::UnboundedReceiver<ClientMsg>,
        mut events: mpsc::UnboundedReceiver<Event<P>>,
        store: BoxStream<'static, StoreEvent>,
        router_rx: mpsc::UnboundedReceiver<RouterCmd>,
    ) {
        // Advertise and withdraw in the order the node decided them.
        let router = self.router.clone();
        self.rt.spawn(
            router_rx
                .for_each(move |cmd| match cmd {
                    RouterCmd::Advertise(keys) => router.advertise(keys),
                    RouterCmd::Withdraw(keys) => router.withdraw(keys),
                })
                .boxed(),
        );
        let mut store = store.fuse();
        loop {
            while let Some(ev) = self.queue.pop_front() {
                self.handle_event(ev);
            }
            let m = self.node.mirror();
            let packed = ((m.active_requests() as u64).min(0xffff_ffff) << 32)
                | (m.active_fetches() as u64).min(0xffff_ffff);
            self.shared.active.store(packed, Ordering::Relaxed);
            let mut timer = match self.node.poll_timeout() {
                // At least 1 ms: a deadline that stays in the past cannot spin the loop.
                Some((at, _)) => self
                    .rt
                    .sleep(at.saturating_duration_since(self.rt.now()).max(MIN_SLEEP))
                    .boxed()
                    .fuse(),
                None => futures::future::pending().boxed().fuse(),
            };
            // Reports about work in flight (and the timer) go before new requests.
            futures::select_biased! {
                () = timer => {
                    self.node.handle_timeout(self.rt.now());
                    self.drain();
                }
                ev = events.next() => {
                    if let Some(ev) = ev {
                        self.handle_event(ev);
                    }
                }
                ev = store.next() => {
                    if let Some(ev) = ev {
                        self.handle_event(Event::Store(ev));
                    }
                }
                msg = clients.next() => match msg {
                    Some(msg) => self.handle_client(msg),
                    None => break,
                },
            }
        }
        for (_, f) in std::mem::take(&mut self.fetches) {
            f.abort.abort();
        }
        for (_, l) in std::mem::take(&mut self.lookups) {
            l.abort();
        }
    }

    fn handle_client(&mut self, msg: ClientMsg) {
        let now = self.rt.now();
        match msg {
            ClientMsg::Request {
                id,
                request,
                local,
                reply,
            } => {
                let outcome = self.node.handle_request(now, id, &request, local);
                self.requests.insert(
                    id,
                    ReqState {
                        request,
                        reply: Some(reply),
                        pipe: None,
                        mirroring: false,
                    },
                );
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "request refused by the node");
                    self.reply(id, Decision::Fail(OciError::unavailable(e.to_string())));
                    self.requests.remove(&id);
                }
                self.drain();
                // Whatever was not answered at once went to the mirror.
                if let Some(state) = self.requests.get_mut(&id) {
                    state.mirroring = true;
                }
            }
            ClientMsg::Closed { id } => {
                self.requests.remove(&id);
                if let Err(e) = self.node.handle_request_closed(now, id) {
                    tracing::trace!(error = %e, "closed request was not mirrored");
                }
                self.drain();
            }
        }
    }

    fn handle_event(&mut self, ev: Event<P>) {
        let now = self.rt.now();
        let result = match ev {
            Event::Providers { lookup, providers } => {
                let mut peers = Vec::with_capacity(providers.len());
                for p in providers {
                    if !p.ips.is_empty() {
                        self.peer_ips.insert(p.peer.clone(), p.ips);
                        peers.push(p.peer);
                    }
                }
                self.node.handle_providers(now, lookup, peers)
            }
            Event::LookupFinished { lookup } => {
                self.lookups.remove(&lookup);
                self.node.handle_lookup_finished(now, lookup)
            }
            Event::FetchConnected { fetch } => self.node.handle_fetch_connected(now, fetch),
            Event::FetchFailed { fetch, why } => {
                self.fetches.remove(&fetch);
                tracing::debug!(?fetch, ?why, "fetch failed");
                self.node.handle_fetch_failed(now, fetch, why)
            }
            Event::FetchResponded {
                fetch,
                mut response,
            } => {
                if let Some(task) = self.fetches.remove(&fetch) {
                    response.extensions_mut().insert(PeerAddr(task.addr));
                }
                let facts = client::fetch_response(&response);
                tracing::debug!(?fetch, status = facts.status, "fetch responded");
                self.responded.insert(fetch, response);
                let r = self.node.handle_fetch_responded(now, fetch, facts);
                self.drain();
                // A response the node did not pick is dropped (its connection closes).
                self.responded.remove(&fetch);
                r
            }
            Event::Pipe { request, event } => match event {
                PipeEvent::Finished => {
                    self.requests.remove(&request);
                    *self
                        .shared
                        .last_success
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
                    self.shared.metrics.mirror_success(SystemTime::now());
                    self.node.handle_pipe_finished(now, request)
                }
                PipeEvent::Interrupted { written } => {
                    self.node.handle_pipe_interrupted(now, request, written)
                }
                PipeEvent::Closed => {
                    self.requests.remove(&request);
                    self.node.handle_request_closed(now, request)
                }
            },
            Event::Store(ev) => {
                self.node.handle_store_event(now, ev);
                self.store_changed();
                Ok(())
            }
        };
        if let Err(e) = result {
            // A late report about something already finished: nothing to do.
            tracing::trace!(error = %e, "stale report");
        }
        self.drain();
    }

    fn store_changed(&mut self) {
        self.shared
            .store_connected
            .store(self.node.store_connected(), Ordering::Relaxed);
        let images: Vec<ImageSummary> = self
            .node
            .images()
            .map(|i: &ImageState| ImageSummary {
                name: i.name.clone(),
                digest: i.target.as_str().to_owned(),
                present: i.present.len(),
            })
            .collect();
        if let Ok(mut g) = self.shared.images.lock() {
            *g = images;
        }
        self.shared
            .metrics
            .set_advertised(self.node.advertised_counts());
    }

    fn reply(&mut self, id: RequestId, decision: Decision) {
        if let Some(state) = self.requests.get_mut(&id)
            && let Some(reply) = state.reply.take()
        {
            // The client may be gone; its guard reports that separately.
            let _ = reply.send(decision);
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.node.poll_output() {
            self.execute(out);
        }
    }

    fn execute(&mut self, out: Output<P>) {
        match out {
            Output::ServeLocal { request } => {
                self.reply(request, Decision::ServeLocal);
                self.requests.remove(&request);
            }
            Output::Fail {
                request,
                error,
                reason,
            } => {
                if error.status == http::StatusCode::NOT_FOUND {
                    self.shared.metrics.not_found(reason);
                }
                if let Some(state) = self.requests.get(&request)
                    && state.mirroring
                {
                    let registry = state.request.ns().unwrap_or("").to_owned();
                    self.shared.metrics.mirror_request(&registry, false);
                }
                self.reply(request, Decision::Fail(error));
                self.requests.remove(&request);
            }
            Output::Lookup { id, key, count } => self.start_lookup(id, key, count),
            Output::CancelLookup { id } => {
                if let Some(h) = self.lookups.remove(&id) {
                    h.abort();
                }
            }
            Output::Fetch {
                id,
                request,
                peer,
                range,
            } => self.start_fetch(id, request, peer, range),
            Output::CancelFetch { id } => {
                if let Some(f) = self.fetches.remove(&id) {
                    f.abort.abort();
                }
                self.responded.remove(&id);
            }
            Output::Serve { request, fetch } => self.serve(request, fetch),
            Output::Continue { request, fetch } => {
                self.shared.metrics.peer_resumes.inc();
                let response = self.responded.remove(&fetch);
                if let (Some(r), Some(state)) = (&response, self.requests.get(&request)) {
                    tracing::info!(
                        source = "peer",
                        peer = %r.extensions().get::<PeerAddr>().map_or_else(|| "?".to_owned(), |p| p.0.to_string()),
                        path = %state.request.path_and_query(),
                        content_range = r.headers().get(http::header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or(""),
                        "resumed"
                    );
                }
                let body = response.map(|r| r.into_body());
                let pipe = self.requests.get(&request).and_then(|s| s.pipe.clone());
                match (body, pipe) {
                    (Some(body), Some(pipe)) => {
                        let _ = pipe.unbounded_send(PipeControl::Continue(body));
                    }
                    _ => tracing::warn!(?request, ?fetch, "continue without a body or a pipe"),
                }
            }
            Output::Abort { request } => {
                if let Some(mut state) = self.requests.remove(&request) {
                    if let Some(pipe) = state.pipe.take() {
                        let _ = pipe.unbounded_send(PipeControl::Abort);
                    } else if let Some(reply) = state.reply.take() {
                        let _ = reply.send(Decision::Abort);
                    }
                }
            }
            Output::Advertise(keys) => {
                let _ = self.router_tx.unbounded_send(RouterCmd::Advertise(keys));
            }
            Output::Withdraw(keys) => {
                let _ = self.router_tx.unbounded_send(RouterCmd::Withdraw(keys));
            }
            Output::RecheckStore => {
                let source = self.source.clone();
                let events = self.events.clone();
                self.rt.spawn(
                    async move {
                        match source.snapshot().await {
                            Ok(images) => {
                                let _ = events
                                    .unbounded_send(Event::Store(StoreEvent::Snapshot(images)));
                            }
                            Err(e) => tracing::warn!(error = %e, "store re-check failed"),
                        }
                    }
                    .boxed(),
                );
            }
        }
    }

    fn start_lookup(&mut self, id: LookupId, key: Key, count: usize) {
        let mut stream = self.router.lookup(&key, count);
        let events = self.events.clone();
        let metrics = self.shared.metrics.clone();
        let label = crate::metrics::RouterLabel {
            router: self.router.name().to_owned(),
        };
        let (abort, reg) = AbortHandle::new_pair();
        let rt = self.rt.clone();
        let task = async move {
            let started = rt.now();
            let mut observed = false;
            while let Some(p) = stream.next().await {
                if !observed {
                    observed = true;
                    metrics
                        .resolve_duration
                        .get_or_create(&label)
                        .observe(rt.now().saturating_duration_since(started).as_secs_f64());
                }
                let _ = events.unbounded_send(Event::Providers {
                    lookup: id,
                    providers: vec![p],
                });
            }
            if !observed {
                metrics
                    .resolve_duration
                    .get_or_create(&label)
                    .observe(rt.now().saturating_duration_since(started).as_secs_f64());
            }
            let _ = events.unbounded_send(Event::LookupFinished { lookup: id });
        };
        self.lookups.insert(id, abort);
        self.rt.spawn(Abortable::new(task, reg).map(|_| ()).boxed());
    }

    fn start_fetch(&mut self, id: FetchId, request: RequestId, peer: P, range: Option<(u64, u64)>) {
        let Some(state) = self.requests.get(&request) else {
            self.queue.push_back(Event::FetchFailed {
                fetch: id,
                why: FetchFailure::Connect("the request is gone".into()),
            });
            return;
        };
        let Some(ip) = self
            .peer_ips
            .get(&peer)
            .and_then(|ips| ips.first())
            .copied()
        else {
            self.queue.push_back(Event::FetchFailed {
                fetch: id,
                why: FetchFailure::Connect(format!("no address known for peer {peer:?}")),
            });
            return;
        };
        let addr = SocketAddr::new(ip, self.config.registry_port);
        let range = match range {
            Some((start, end)) => Some(ByteRange::FromTo { start, end }),
            None => state.request.range().copied(),
        };
        let req = client::peer_request(
            &state.request,
            addr,
            range.as_ref(),
            self.config.credentials.as_ref(),
        );
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                self.queue.push_back(Event::FetchFailed {
                    fetch: id,
                    why: FetchFailure::Connect(e.to_string()),
                });
                return;
            }
        };
        let events = self.events.clone();
        let rt = self.rt.clone();
        let (abort, reg) = AbortHandle::new_pair();
        let task = async move {
            let connected = {
                let events = events.clone();
                move || {
                    let _ = events.unbounded_send(Event::FetchConnected { fetch: id });
                }
            };
            let ev = match client::fetch(&rt, addr, req, connected).await {
                Ok(response) => Event::FetchResponded {
                    fetch: id,
                    response: response.map(|b| b.map_err(Into::into).boxed_unsync()),
                },
                Err(why) => Event::FetchFailed { fetch: id, why },
            };
            let _ = events.unbounded_send(ev);
        };
        self.fetches.insert(id, FetchTask { abort, addr });
        self.rt.spawn(Abortable::new(task, reg).map(|_| ()).boxed());
    }

    fn serve(&mut self, request: RequestId, fetch: FetchId) {
        fn parts_status<B>(r: &http::Response<B>) -> u16 {
            r.status().as_u16()
        }
        let Some(response) = self.responded.remove(&fetch) else {
            tracing::warn!(?request, ?fetch, "serve without a response");
            return;
        };
        let Some(state) = self.requests.get_mut(&request) else {
            return;
        };
        let registry = state.request.ns().unwrap_or("").to_owned();
        self.shared.metrics.mirror_request(&registry, true);
        let head = state.request.head();
        tracing::info!(
            source = "peer",
            peer = %response.extensions().get::<PeerAddr>().map_or_else(|| "?".to_owned(), |p| p.0.to_string()),
            method = %state.request.method(),
            path = %state.request.path_and_query(),
            status = parts_status(&response),
            "mirrored"
        );
        let (parts, body) = response.into_parts();
        let expected = if head {
            None
        } else {
            client::content_length(&parts.headers)
        };
        let (pipe_tx, pipe_rx) = mpsc::unbounded();
        let events = self.events.clone();
        let notify = Box::new(move |event: PipeEvent| {
            let _ = events.unbounded_send(Event::Pipe { request, event });
        });
        let rt = self.rt.clone();
        let stall = Stall::new(self.node.mirror().config().stall_timeout, move |d| {
            rt.sleep(d).boxed()
        });
        let pipe = Pipe::new(body, expected, pipe_rx, notify).with_stall(stall);
        let relayed = client::relay(parts, pipe.boxed_unsync());
        state.pipe = Some(pipe_tx);
        let reply = state.reply.take();
        if let Some(reply) = reply {
            // When the client is gone, the pipe is dropped with the decision and reports it.
            let _ = reply.send(Decision::Relay(relayed));
        }
    }
}
