//! The driver: one future that owns the core [`Node`] and executes its commands.
//!
//! Every fact reaches the driver over a channel: client requests from the registry server
//! (through a [`DriverHandle`]), the reports of the tasks the driver spawned (store answers,
//! lookups, fetches, pipes, store re-checks), and store events from the content store's
//! stream. For each fact the driver calls [`Node::handle`], drains `poll_output` and executes
//! every command, then resets its one timer to `poll_timeout` (the core contract). Time comes
//! only from the [`Runtime`], so the simulated cluster runs this same loop on simulated time.
//!
//! The driver keeps no policy and no per-request facts of its own: commands are
//! self-contained (a fetch names its address and exact range, a local answer its digest, size
//! and range). It keeps only the handles of what it runs — the reply channel of a request
//! being decided, the control channel of a pipe, the abort handles of lookups and fetches, a
//! peer's response until the core picks or drops it.
//!
//! The channels are unbounded in type, and bounded in what can be in them by the limits the
//! core owns: a client message is a request or its departure, and a server connection has at
//! most one request being decided (`--max-connections`, 1,024, per server); a task report
//! belongs to a lookup (its providers, at most the count asked for, then its end; at most 256
//! lookups at once) or to a fetch (connected, then answered or failed; fetches belong to the
//! at most 1,024 mirrored requests); a pipe has at most one report outstanding per command the
//! node sent it; store events come through the store's own bounded stream. Nothing outside the
//! node can add a message without holding one of those slots. The driver's loop also takes the
//! reports about work in flight before new requests, so a burst of requests cannot starve the
//! reports that end earlier ones. The node's notes ([`Node::poll_note`]) are drained after
//! every step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::channel::{mpsc, oneshot};
use futures::future::{AbortHandle, Abortable, BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use speil_core::digest::Digest;
use speil_core::error::OciError;
use speil_core::mirror::{FetchId, FetchResponse, LookupId, RequestId};
use speil_core::node::{Input, Local, Node, Note, Output, StatTarget};
use speil_core::range::ResolvedRange;
use speil_core::request::ContentRequest;
use speil_core::store::{ImageState, StoreEvent};
use speil_core::{FailReason, Key};

use crate::metrics::{Metrics, RouterLabel};
use crate::ports::{ContentStore, PeerClient, PeerRequest, Router};
use crate::runtime::{Runtime, Timer};

/// How the driver reaches peers.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The registry port of every peer (this node's own registry port: SPEC.md §5).
    pub registry_port: u16,
}

/// What the driver decided about a client request. `B` is the peer client's response type.
pub enum Decision<B> {
    /// Serve exactly this from the local store.
    ServeLocal {
        /// The content.
        digest: Digest,
        /// Its size.
        size: u64,
        /// `Some`: a 206 with these bytes.
        range: Option<ResolvedRange>,
        /// Headers only.
        head: bool,
    },
    /// Answer with this error.
    Fail(OciError),
    /// Relay a peer's response (the server builds the body that the driver steers).
    Relay(Relay<B>),
    /// Abort the connection.
    Abort,
}

impl<B> fmt::Debug for Decision<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::ServeLocal {
                digest,
                size,
                range,
                head,
            } => f
                .debug_struct("ServeLocal")
                .field("digest", digest)
                .field("size", size)
                .field("range", range)
                .field("head", head)
                .finish(),
            Decision::Fail(e) => f.debug_tuple("Fail").field(e).finish(),
            Decision::Relay(_) => f.write_str("Relay"),
            Decision::Abort => f.write_str("Abort"),
        }
    }
}

/// A peer's response to relay, and the channels by which the driver steers its body.
pub struct Relay<B> {
    /// The first peer's response.
    pub response: B,
    /// What the driver tells the body: continue with another peer's response, stop, abort.
    pub control: mpsc::UnboundedReceiver<PipeControl<B>>,
    /// Where the body reports how it ended.
    pub reporter: PipeReporter,
    /// Body bytes written to the client so far; the body adds to it, the driver reads it
    /// when the core polls the progress.
    pub written: Arc<AtomicU64>,
    /// `Some`: the body is the whole content of this digest (also across continuations):
    /// the body hashes what it relays and, when the last bytes would complete a body that
    /// does not match, aborts the client's connection instead and reports
    /// [`PipeEvent::Mismatch`].
    pub verify: Option<Digest>,
    /// With `verify`: send nothing before all of the body arrived and matched.
    pub hold: bool,
}

/// What the driver tells a relayed body.
pub enum PipeControl<B> {
    /// Continue with this response's body (the rest, from where it broke).
    Continue(B),
    /// Drop the current peer body (it stalled) and report [`PipeEvent::Interrupted`].
    Interrupt,
    /// Nobody can continue: abort the client's connection.
    Abort,
}

/// What a relayed body tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeEvent {
    /// The whole body reached the client.
    Finished,
    /// The peer's body broke (or was interrupted) after `written` bytes in total reached the
    /// client.
    Interrupted {
        /// Bytes of the body delivered so far.
        written: u64,
    },
    /// The client went away before the end.
    Closed,
    /// The body (relayed with [`Relay::verify`]) did not hash to its digest: the client's
    /// connection was aborted before the last byte.
    Mismatch,
}

/// A relayed body's way to report to the driver.
#[derive(Debug, Clone)]
pub struct PipeReporter {
    request: RequestId,
    tx: mpsc::UnboundedSender<(RequestId, PipeEvent)>,
}

impl PipeReporter {
    /// Reports `event`.
    pub fn report(&self, event: PipeEvent) {
        let _ = self.tx.unbounded_send((self.request, event));
    }
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
    records: Box<dyn Fn() -> Option<usize> + Send + Sync>,
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

    /// The records the router holds for other peers ([`Router::records`]).
    pub fn router_records(&self) -> Option<usize> {
        (self.records)()
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

/// A message from the registry server.
enum ClientMsg<B> {
    Request {
        id: RequestId,
        request: ContentRequest,
        reply: oneshot::Sender<Decision<B>>,
    },
    Closed {
        id: RequestId,
    },
}

/// The registry server's way to the driver. Cheap to clone.
pub struct DriverHandle<B> {
    tx: mpsc::UnboundedSender<ClientMsg<B>>,
    shared: Arc<Shared>,
}

impl<B> Clone for DriverHandle<B> {
    fn clone(&self) -> Self {
        DriverHandle {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<B> fmt::Debug for DriverHandle<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverHandle").finish_non_exhaustive()
    }
}

impl<B: Send + 'static> DriverHandle<B> {
    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Asks what to do with a content request. When the returned future is dropped before
    /// a decision arrived, the driver is told that the client left.
    pub fn decide(
        &self,
        request: ContentRequest,
    ) -> impl Future<Output = Decision<B>> + Send + 'static {
        let id = self.shared.next_request_id();
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .unbounded_send(ClientMsg::Request { id, request, reply })
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
struct CloseGuard<B> {
    id: RequestId,
    tx: mpsc::UnboundedSender<ClientMsg<B>>,
    armed: bool,
}

impl<B> CloseGuard<B> {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl<B> Drop for CloseGuard<B> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.unbounded_send(ClientMsg::Closed { id: self.id });
        }
    }
}

/// What the driver needs from outside.
pub struct Parts<P, R, C> {
    /// The node.
    pub node: Node<P>,
    /// The runtime.
    pub runtime: R,
    /// The content store (local answers and re-checks).
    pub store: Arc<dyn ContentStore>,
    /// The DHT.
    pub router: Arc<dyn Router<P>>,
    /// The peer client.
    pub client: Arc<C>,
    /// Store events (snapshot at start-up, then changes), e.g. from containerd's event stream.
    pub store_events: BoxStream<'static, StoreEvent>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// How to reach peers.
    pub config: DriverConfig,
}

/// Builds the driver: the handle for the registry server, and the future to spawn. The
/// future ends when every [`DriverHandle`] is dropped.
pub fn start<P, R, C>(parts: Parts<P, R, C>) -> (DriverHandle<C::Response>, BoxFuture<'static, ()>)
where
    P: Clone + Ord + fmt::Debug + Send + Sync + 'static,
    R: Runtime,
    C: PeerClient,
{
    let (client_tx, client_rx) = mpsc::unbounded();
    let (event_tx, event_rx) = mpsc::unbounded();
    let (pipe_tx, pipe_rx) = mpsc::unbounded();
    let ready_router = parts.router.clone();
    let peers_router = parts.router.clone();
    let records_router = parts.router.clone();
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
        records: Box::new(move || records_router.records()),
    });
    let (router_tx, router_rx) = mpsc::unbounded();
    let driver = Driver {
        node: parts.node,
        rt: parts.runtime,
        store: parts.store,
        router: parts.router,
        client: parts.client,
        shared: shared.clone(),
        config: parts.config,
        events: event_tx,
        pipes: pipe_tx,
        router_tx,
        requests: BTreeMap::new(),
        fetches: BTreeMap::new(),
        lookups: BTreeMap::new(),
        responded: BTreeMap::new(),
    };
    let handle = DriverHandle {
        tx: client_tx,
        shared,
    };
    let fut = driver
        .run(client_rx, event_rx, pipe_rx, parts.store_events, router_rx)
        .boxed();
    (handle, fut)
}

/// A report of a task the driver started: a fact for the node, or a peer's response (whose
/// facts go to the node while the driver keeps the response itself).
enum Event<P, B> {
    Input(Input<P>),
    FetchResponded {
        fetch: FetchId,
        facts: FetchResponse,
        response: B,
    },
}

/// What woke the driver up.
enum Step<P, B> {
    Timer,
    Pipe(Option<(RequestId, PipeEvent)>),
    Event(Option<Event<P, B>>),
    Store(Option<StoreEvent>),
    Client(Option<ClientMsg<B>>),
}

enum RouterCmd {
    Advertise(Vec<Key>),
    Withdraw(Vec<Key>),
}

/// The handles of one client request.
struct ReqState<B> {
    /// Until the decision is sent.
    reply: Option<oneshot::Sender<Decision<B>>>,
    /// Once relaying.
    pipe: Option<mpsc::UnboundedSender<PipeControl<B>>>,
    written: Arc<AtomicU64>,
    /// The request's `ns`, which the mirror metrics label as the core bounds it.
    ns: Option<String>,
    /// For logs.
    path: String,
    method: http::Method,
}

struct Driver<P, R, C: PeerClient> {
    node: Node<P>,
    rt: R,
    store: Arc<dyn ContentStore>,
    router: Arc<dyn Router<P>>,
    client: Arc<C>,
    shared: Arc<Shared>,
    config: DriverConfig,
    events: mpsc::UnboundedSender<Event<P, C::Response>>,
    pipes: mpsc::UnboundedSender<(RequestId, PipeEvent)>,
    router_tx: mpsc::UnboundedSender<RouterCmd>,
    requests: BTreeMap<RequestId, ReqState<C::Response>>,
    fetches: BTreeMap<FetchId, AbortHandle>,
    lookups: BTreeMap<LookupId, AbortHandle>,
    /// Peers' responses the core has not picked or dropped yet.
    responded: BTreeMap<FetchId, C::Response>,
}

impl<P, R, C> Driver<P, R, C>
where
    P: Clone + Ord + fmt::Debug + Send + Sync + 'static,
    R: Runtime,
    C: PeerClient,
{
    async fn run(
        mut self,
        mut clients: mpsc::UnboundedReceiver<ClientMsg<C::Response>>,
        mut events: mpsc::UnboundedReceiver<Event<P, C::Response>>,
        mut pipes: mpsc::UnboundedReceiver<(RequestId, PipeEvent)>,
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
        // The one timer, reset after every step to the node's next deadline.
        let mut timer = self.rt.timer(self.rt.now());
        loop {
            let m = self.node.mirror();
            let packed = ((m.active_requests() as u64).min(0xffff_ffff) << 32)
                | (m.active_fetches() as u64).min(0xffff_ffff);
            self.shared.active.store(packed, Ordering::Relaxed);
            let armed = match self.node.poll_timeout() {
                Some((at, _)) => {
                    timer.reset(at);
                    true
                }
                None => false,
            };
            let step = {
                let fired = async {
                    if armed {
                        (&mut timer).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                }
                .fuse();
                futures::pin_mut!(fired);
                // Reports about work in flight (and the timer) go before new requests.
                futures::select_biased! {
                    () = fired => Step::Timer,
                    ev = pipes.next() => Step::Pipe(ev),
                    ev = events.next() => Step::Event(ev),
                    ev = store.next() => Step::Store(ev),
                    msg = clients.next() => Step::Client(msg),
                }
            };
            match step {
                Step::Timer => {
                    self.node.handle_timeout(self.rt.now());
                    self.drain();
                }
                Step::Pipe(Some((request, ev))) => self.handle_pipe(request, ev),
                Step::Event(Some(ev)) => self.handle_event(ev),
                Step::Store(Some(ev)) => self.handle_event(Event::Input(Input::Store(ev))),
                Step::Client(Some(msg)) => self.handle_client(msg),
                Step::Client(None) => break,
                Step::Pipe(None) | Step::Event(None) | Step::Store(None) => {}
            }
        }
        for (_, f) in std::mem::take(&mut self.fetches) {
            f.abort();
        }
        for (_, l) in std::mem::take(&mut self.lookups) {
            l.abort();
        }
    }

    /// Feeds one fact to the node and executes what it decided.
    fn input(&mut self, input: Input<P>) {
        let now = self.rt.now();
        if let Err(e) = self.node.handle(now, input) {
            // A late report about something already finished: nothing to do.
            tracing::trace!(error = %e, "stale report");
        }
        self.drain();
    }

    fn handle_client(&mut self, msg: ClientMsg<C::Response>) {
        match msg {
            ClientMsg::Request { id, request, reply } => {
                self.requests.insert(
                    id,
                    ReqState {
                        reply: Some(reply),
                        pipe: None,
                        written: Arc::default(),
                        ns: request.ns().map(str::to_owned),
                        path: request.path_and_query(),
                        method: request.method().clone(),
                    },
                );
                let now = self.rt.now();
                if let Err(e) = self.node.handle(now, Input::Request { id, request }) {
                    tracing::warn!(error = %e, "request refused by the node");
                    self.reply(id, Decision::Fail(OciError::unavailable(e.to_string())));
                    self.requests.remove(&id);
                }
                self.drain();
            }
            ClientMsg::Closed { id } => {
                self.requests.remove(&id);
                self.input(Input::RequestClosed { request: id });
            }
        }
    }

    fn handle_pipe(&mut self, request: RequestId, ev: PipeEvent) {
        match ev {
            PipeEvent::Finished => {
                self.requests.remove(&request);
                let now = SystemTime::now();
                *self
                    .shared
                    .last_success
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now);
                self.shared.metrics.mirror_success(now);
                self.input(Input::PipeFinished { request });
            }
            PipeEvent::Interrupted { written } => {
                self.input(Input::PipeInterrupted { request, written });
            }
            PipeEvent::Closed => {
                self.requests.remove(&request);
                self.input(Input::RequestClosed { request });
            }
            PipeEvent::Mismatch => {
                if let Some(state) = self.requests.remove(&request) {
                    tracing::warn!(
                        method = %state.method,
                        path = %state.path,
                        "a relayed body did not match its digest: the client's connection was \
                         aborted before the last byte, and the peers that sent it are not asked \
                         for it again for a while"
                    );
                }
                self.shared.metrics.body_mismatch();
                self.input(Input::PipeMismatch { request });
            }
        }
    }

    fn handle_event(&mut self, ev: Event<P, C::Response>) {
        match ev {
            Event::Input(input) => {
                // The handles of what ended.
                match &input {
                    Input::LookupFinished { lookup } => {
                        self.lookups.remove(lookup);
                    }
                    Input::FetchFailed { fetch, why } => {
                        self.fetches.remove(fetch);
                        tracing::debug!(?fetch, ?why, "fetch failed");
                    }
                    _ => {}
                }
                let store_changed = matches!(input, Input::Store(_));
                self.input(input);
                if store_changed {
                    self.store_changed();
                }
            }
            Event::FetchResponded {
                fetch,
                facts,
                response,
            } => {
                self.fetches.remove(&fetch);
                tracing::debug!(?fetch, status = facts.status, "fetch responded");
                self.responded.insert(fetch, response);
                self.input(Input::FetchResponded {
                    fetch,
                    response: facts,
                });
                // A response the node did not pick is dropped (its connection closes).
                self.responded.remove(&fetch);
            }
        }
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

    fn reply(&mut self, id: RequestId, decision: Decision<C::Response>) {
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
        while let Some(note) = self.node.poll_note() {
            self.report(note);
        }
    }

    /// Logs and counts what the node noted.
    fn report(&mut self, note: Note<P>) {
        match note {
            Note::PeerAnswerRejected { request, peer, why } => {
                self.shared.metrics.peer_answer_rejected(why.label());
                let path = self.requests.get(&request).map(|r| r.path.as_str());
                if why.is_gone() {
                    tracing::debug!(?peer, path, reason = %why, "a peer no longer has the content; asking the next");
                } else {
                    tracing::warn!(
                        ?peer,
                        path,
                        reason = %why,
                        "a peer's answer was not relayed; it is not asked again for this request"
                    );
                }
            }
        }
    }

    fn execute(&mut self, out: Output<P>) {
        match out {
            Output::StatLocal { request, what } => self.stat_local(request, what),
            Output::ServeLocal {
                request,
                digest,
                size,
                range,
                head,
            } => {
                self.reply(
                    request,
                    Decision::ServeLocal {
                        digest,
                        size,
                        range,
                        head,
                    },
                );
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
                if matches!(reason, FailReason::NoPeer | FailReason::AllAttemptsFailed)
                    && let Some(state) = self.requests.get(&request)
                {
                    let counts = self.node.advertised_counts();
                    self.shared.metrics.mirror_request(
                        self.node.filter(),
                        state.ns.as_deref(),
                        |r| counts.contains_key(r),
                        false,
                    );
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
                addr,
                method,
                path,
                range,
            } => {
                tracing::trace!(?id, ?request, ?peer, %addr, "fetch");
                self.start_fetch(
                    id,
                    PeerRequest {
                        addr,
                        method,
                        path,
                        range,
                    },
                );
            }
            Output::CancelFetch { id } => {
                if let Some(f) = self.fetches.remove(&id) {
                    f.abort();
                }
                self.responded.remove(&id);
            }
            Output::Serve {
                request,
                fetch,
                verify,
                hold,
            } => self.serve(request, fetch, verify, hold),
            Output::Continue { request, fetch } => {
                self.shared.metrics.peer_resumes.inc();
                let response = self.responded.remove(&fetch);
                let state = self.requests.get(&request);
                match (response, state.and_then(|s| s.pipe.clone())) {
                    (Some(response), Some(pipe)) => {
                        if let Some(state) = state {
                            tracing::info!(
                                source = "peer",
                                peer = %self.client.describe(&response),
                                path = %state.path,
                                "resumed"
                            );
                        }
                        let _ = pipe.unbounded_send(PipeControl::Continue(response));
                    }
                    _ => tracing::warn!(?request, ?fetch, "continue without a body or a pipe"),
                }
            }
            Output::PollProgress { request } => {
                if let Some(state) = self.requests.get(&request) {
                    let written = state.written.load(Ordering::Relaxed);
                    self.input(Input::PipeProgress { request, written });
                }
            }
            Output::Interrupt { request } => {
                if let Some(pipe) = self.requests.get(&request).and_then(|s| s.pipe.as_ref()) {
                    tracing::debug!(?request, "peer body stalled; interrupting it");
                    let _ = pipe.unbounded_send(PipeControl::Interrupt);
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
                let store = self.store.clone();
                let events = self.events.clone();
                self.rt.spawn(
                    async move {
                        match store.snapshot().await {
                            Ok(images) => {
                                let snapshot = Input::Store(StoreEvent::Snapshot(images));
                                let _ = events.unbounded_send(Event::Input(snapshot));
                            }
                            Err(e) => tracing::warn!(error = %e, "store re-check failed"),
                        }
                    }
                    .boxed(),
                );
            }
        }
    }

    /// Asks the store about a request's content; the core's store budget bounds the wait
    /// (a late answer is a stale report).
    fn stat_local(&mut self, request: RequestId, what: StatTarget) {
        let store = self.store.clone();
        let events = self.events.clone();
        self.rt.spawn(
            async move {
                let answer = match &what {
                    StatTarget::Tag { image } => store.stat_tag(image).await,
                    StatTarget::Digest(d) => store
                        .size(d)
                        .await
                        .map(|size| size.map(|size| (d.clone(), size))),
                };
                let local = match answer {
                    Ok(Some((digest, size))) => Local::Present { digest, size },
                    Ok(None) => Local::Absent,
                    Err(e) => {
                        tracing::warn!(error = %e, "content store unavailable");
                        Local::Unknown
                    }
                };
                let _ =
                    events.unbounded_send(Event::Input(Input::LocalAnswered { request, local }));
            }
            .boxed(),
        );
    }

    fn start_lookup(&mut self, id: LookupId, key: Key, count: usize) {
        let mut stream = self.router.lookup(&key, count);
        let events = self.events.clone();
        let metrics = self.shared.metrics.clone();
        let label = RouterLabel {
            router: self.router.name().to_owned(),
        };
        let (abort, reg) = AbortHandle::new_pair();
        let rt = self.rt.clone();
        let port = self.config.registry_port;
        let task = async move {
            let started = rt.now();
            let mut observed = false;
            let observe = |rt: &R| {
                metrics
                    .resolve_duration
                    .get_or_create(&label)
                    .observe(rt.now().saturating_duration_since(started).as_secs_f64());
            };
            while let Some(p) = stream.next().await {
                if !observed {
                    observed = true;
                    observe(&rt);
                }
                if p.ips.is_empty() {
                    continue;
                }
                let addrs = p.ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
                let _ = events.unbounded_send(Event::Input(Input::Providers {
                    lookup: id,
                    providers: vec![(p.peer, addrs)],
                }));
            }
            if !observed {
                observe(&rt);
            }
            let _ = events.unbounded_send(Event::Input(Input::LookupFinished { lookup: id }));
        };
        self.lookups.insert(id, abort);
        self.rt.spawn(Abortable::new(task, reg).map(|_| ()).boxed());
    }

    fn start_fetch(&mut self, id: FetchId, request: PeerRequest) {
        let events = self.events.clone();
        let connected = {
            let events = events.clone();
            Box::new(move || {
                let _ = events.unbounded_send(Event::Input(Input::FetchConnected { fetch: id }));
            })
        };
        let fetch = self.client.fetch(request, connected);
        let (abort, reg) = AbortHandle::new_pair();
        let task = async move {
            let ev = match fetch.await {
                Ok((facts, response)) => Event::FetchResponded {
                    fetch: id,
                    facts,
                    response,
                },
                Err(why) => Event::Input(Input::FetchFailed { fetch: id, why }),
            };
            let _ = events.unbounded_send(ev);
        };
        self.fetches.insert(id, abort);
        self.rt.spawn(Abortable::new(task, reg).map(|_| ()).boxed());
    }

    fn serve(&mut self, request: RequestId, fetch: FetchId, verify: Option<Digest>, hold: bool) {
        let Some(response) = self.responded.remove(&fetch) else {
            tracing::warn!(?request, ?fetch, "serve without a response");
            return;
        };
        let Some(state) = self.requests.get_mut(&request) else {
            return;
        };
        let counts = self.node.advertised_counts();
        self.shared.metrics.mirror_request(
            self.node.filter(),
            state.ns.as_deref(),
            |r| counts.contains_key(r),
            true,
        );
        tracing::info!(
            source = "peer",
            peer = %self.client.describe(&response),
            method = %state.method,
            path = %state.path,
            "mirrored"
        );
        let (pipe_tx, pipe_rx) = mpsc::unbounded();
        state.pipe = Some(pipe_tx);
        let relay = Relay {
            response,
            control: pipe_rx,
            reporter: PipeReporter {
                request,
                tx: self.pipes.clone(),
            },
            written: state.written.clone(),
            verify,
            hold,
        };
        if let Some(reply) = state.reply.take() {
            // When the client is gone, the relay is dropped with the decision and its body
            // (never built) reports nothing: the close guard reports the departure.
            let _ = reply.send(Decision::Relay(relay));
        }
    }
}
