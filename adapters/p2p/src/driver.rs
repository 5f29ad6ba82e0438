//! The task that owns the swarm: applies commands from the handles, turns swarm events into
//! lookup results and published state, and re-bootstraps while the routing table is empty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::{BoxFuture, Either};
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use libp2p::core::transport::ListenerId;
use libp2p::kad;
use libp2p::kad::store::RecordStore as _;

/// Most addresses kept of what a peer announces through identify.
const MAX_IDENTIFIED_ADDRS: usize = 8;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{self, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify};
use speil_driver::{Runtime, RuntimeExt as _, Timer as _};

use crate::addr::{ip_of, is_advertisable, provider_ips, tcp_multiaddr};
use crate::behaviour::{Behaviour, BehaviourEvent, ListenFilter};
use crate::bootstrap::{Bootstrap, BootstrapError, BootstrapPeer};
use crate::transport::BoxedTransport;
use crate::{Command, Config, Error, Handle, KAD_PROTOCOL, Provider, Shared};

/// Rounds of work the driver does before yielding to other tasks.
const POLL_BUDGET: usize = 64;

/// How often the routing table is checked while it is not empty.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the swarm on `transport`, starts listening, and returns the handle and the driver
/// future. The caller spawns the future on `rt`, which also runs the connection tasks and
/// supplies the driver's timers ([`crate::start`] does all of it with the TCP transport).
/// Must be called where `rt` can be used (inside the tokio runtime, for tokio). The driver
/// ends on [`Handle::shutdown`] or when every handle is dropped.
pub fn start_with_transport<R: Runtime>(
    rt: R,
    config: Config,
    transport: BoxedTransport,
) -> Result<(Handle, impl Future<Output = ()> + Send + 'static), Error> {
    let peer_id = config.keypair.public().to_peer_id();

    let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kad_config
        .set_provider_record_ttl(Some(config.provider_record_ttl))
        .set_provider_publication_interval(Some(config.provider_publication_interval));
    let store = crate::store::Store::new(peer_id, config.store);
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    kad.set_mode(Some(kad::Mode::Server));
    let identify = identify::Behaviour::new(
        identify::Config::new("ipfs/0.1.0".to_owned(), config.keypair.public())
            .with_agent_version(format!("speil/{}", env!("CARGO_PKG_VERSION")))
            // Only the external addresses the driver confirms are announced.
            .with_hide_listen_addrs(true),
    );
    let bounds = config.connections;
    let limits = libp2p::connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(bounds.max_pending_incoming))
        .with_max_established_incoming(Some(bounds.max_established_incoming))
        .with_max_established(Some(bounds.max_established))
        .with_max_established_per_peer(Some(bounds.max_established_per_peer));
    let behaviour = Behaviour {
        limits: libp2p::connection_limits::Behaviour::new(limits),
        kad: ListenFilter::new(kad),
        identify,
    };
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        swarm::Config::with_executor(crate::RuntimeExecutor(rt.clone()))
            .with_idle_connection_timeout(config.idle_connection_timeout),
    );
    let wildcard = listen_all(&mut swarm, &config.listen)?;
    swarm.behaviour_mut().kad.wildcard = wildcard.clone();

    let (commands_tx, commands) = mpsc::unbounded();
    let shared = Arc::new(Mutex::new(Shared {
        running: true,
        ..Shared::default()
    }));
    let handle = Handle {
        commands: commands_tx,
        shared: shared.clone(),
        local_peer_id: peer_id,
    };
    let mut driver = Driver {
        swarm,
        commands,
        shared,
        local: peer_id,
        wildcard,
        lookups: HashMap::new(),
        cancels: FuturesUnordered::new(),
        awaiting: HashMap::new(),
        identified: HashMap::new(),
        connections: BTreeMap::new(),
        bootstrap: config.bootstrap.clone(),
        bootstrap_timeout: config.bootstrap_timeout,
        bootstrapping: None,
        backoff: config.rebootstrap_backoff.clone(),
        timer: rt.timer(rt.now()),
        rt,
        routing_table_size: 0,
        republish_after_bootstrap: false,
        dirty: true,
        published_records: 0,
        alone: false,
    };
    let run = async move {
        futures::future::poll_fn(|cx| driver.poll(cx)).await;
        driver
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running = false;
    };
    Ok((handle, run))
}

/// Listens on every address of `listen`. An unspecified address that cannot be listened on
/// (its family is missing on this host) is skipped with a warning as long as another address
/// is listened on; a specific IP that cannot be listened on is an error. Returns the listeners
/// on unspecified IPs.
fn listen_all(
    swarm: &mut Swarm<Behaviour>,
    listen: &[SocketAddr],
) -> Result<HashSet<ListenerId>, Error> {
    let mut wildcard = HashSet::new();
    let mut listening = 0;
    let mut skipped: Vec<(SocketAddr, String)> = Vec::new();
    for addr in listen {
        match swarm.listen_on(tcp_multiaddr(*addr)) {
            Ok(id) => {
                listening += 1;
                if addr.ip().is_unspecified() {
                    wildcard.insert(id);
                }
            }
            Err(e) if addr.ip().is_unspecified() => skipped.push((*addr, e.to_string())),
            Err(e) => {
                return Err(Error::Listen {
                    addr: *addr,
                    reason: e.to_string(),
                });
            }
        }
    }
    if listening == 0 {
        return Err(match skipped.into_iter().next() {
            Some((addr, reason)) => Error::Listen { addr, reason },
            None => Error::NoListenAddress,
        });
    }
    for (addr, reason) in skipped {
        let family = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
        tracing::warn!(
            %addr,
            error = %reason,
            "p2p: cannot listen on {family} (not available on this host?); listening on the other family only"
        );
    }
    Ok(wildcard)
}

struct LookupState {
    tx: mpsc::UnboundedSender<Provider>,
    remaining: usize,
    seen: HashSet<PeerId>,
    /// Providers whose address is being learnt by dialling them.
    dialling: usize,
    query_done: bool,
}

type BootstrapResult = Result<Vec<BootstrapPeer>, BootstrapError>;

struct Driver<R: Runtime> {
    rt: R,
    swarm: Swarm<Behaviour>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Mutex<Shared>>,
    local: PeerId,
    /// The listeners on an unspecified IP (their loopback addresses are not advertised).
    wildcard: HashSet<ListenerId>,
    lookups: HashMap<kad::QueryId, LookupState>,
    cancels: FuturesUnordered<BoxFuture<'static, kad::QueryId>>,
    /// Providers without a known address, dialled to learn one, and the lookups waiting.
    awaiting: HashMap<PeerId, Vec<kad::QueryId>>,
    /// Addresses peers announced through identify.
    identified: HashMap<PeerId, Vec<Multiaddr>>,
    /// Remote addresses of open connections, per peer, and whether this node dialled them
    /// (then the peer proved, by answering there, that it is at that address).
    connections: BTreeMap<PeerId, Vec<(libp2p::swarm::ConnectionId, Multiaddr, bool)>>,
    bootstrap: Option<Arc<dyn Bootstrap>>,
    bootstrap_timeout: Duration,
    bootstrapping: Option<BoxFuture<'static, BootstrapResult>>,
    backoff: speil_core::backoff::Backoff,
    /// The next routing table check (or re-bootstrap).
    timer: R::Timer,
    routing_table_size: usize,
    republish_after_bootstrap: bool,
    /// Whether connections or the routing table changed since the state was last published.
    dirty: bool,
    /// The record count last published (it is published on its own when it changes: a flood
    /// of records must not cost a walk over every connection per record).
    published_records: usize,
    /// The last bootstrap named only this node.
    alone: bool,
}

fn record_key(key: &speil_core::Key) -> kad::RecordKey {
    kad::RecordKey::new(&key.multihash())
}

impl<R: Runtime> Driver<R> {
    fn in_routing_table(&mut self, peer: &PeerId) -> bool {
        self.kad()
            .kbuckets()
            .any(|b| b.iter().any(|e| e.node.key.preimage() == peer))
    }

    fn kad(&mut self) -> &mut kad::Behaviour<crate::store::Store> {
        &mut self.swarm.behaviour_mut().kad.inner
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..POLL_BUDGET {
            let mut progressed = false;
            match self.commands.poll_next_unpin(cx) {
                Poll::Ready(Some(Command::Shutdown)) | Poll::Ready(None) => {
                    return Poll::Ready(());
                }
                Poll::Ready(Some(command)) => {
                    self.command(command);
                    progressed = true;
                }
                Poll::Pending => {}
            }
            match self.swarm.poll_next_unpin(cx) {
                Poll::Ready(Some(event)) => {
                    self.swarm_event(event);
                    progressed = true;
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            while let Poll::Ready(Some(id)) = self.cancels.poll_next_unpin(cx) {
                if self.lookups.remove(&id).is_some()
                    && let Some(mut query) = self.kad().query_mut(&id)
                {
                    query.finish();
                }
            }
            if let Some(fut) = self.bootstrapping.as_mut()
                && let Poll::Ready(result) = fut.poll_unpin(cx)
            {
                self.bootstrapping = None;
                self.bootstrapped(result);
                progressed = true;
            }
            if self.timer.poll_unpin(cx).is_ready() {
                self.tick();
                progressed = true;
            }
            if self.dirty {
                self.dirty = false;
                self.publish();
            }
            let records = self.kad().store_mut().other_records();
            if records != self.published_records {
                self.published_records = records;
                self.shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stored_records = records;
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        // Still busy: let the other tasks of this thread run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Advertise(keys) => {
                for key in keys {
                    if let Err(e) = self.kad().start_providing(record_key(&key)) {
                        tracing::warn!(%key, error = %e, "cannot advertise key");
                    }
                }
            }
            Command::Withdraw(keys) => {
                for key in keys {
                    self.kad().stop_providing(&record_key(&key));
                }
            }
            Command::Lookup {
                key,
                count,
                tx,
                cancelled,
            } => {
                if count == 0 || tx.is_closed() {
                    return;
                }
                let id = self.kad().get_providers(record_key(&key));
                tracing::debug!(?id, %key, count, "lookup");
                self.lookups.insert(
                    id,
                    LookupState {
                        tx,
                        remaining: count,
                        seen: HashSet::new(),
                        dialling: 0,
                        query_done: false,
                    },
                );
                self.cancels.push(
                    async move {
                        let _ = cancelled.await;
                        id
                    }
                    .boxed(),
                );
            }
            Command::Shutdown => {}
        }
    }

    /// The addresses known for a peer: what it announced, else its routing table entry, else
    /// the remote addresses of its connections.
    fn addrs_of(&mut self, peer: PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self.identified.get(&peer).cloned().unwrap_or_default();
        if addrs.is_empty()
            && let Some(bucket) = self.kad().kbucket(peer)
            && let Some(entry) = bucket.iter().find(|e| e.node.key.preimage() == &peer)
        {
            addrs.extend(entry.node.value.iter().cloned());
        }
        if addrs.is_empty()
            && let Some(conns) = self.connections.get(&peer)
        {
            addrs.extend(conns.iter().map(|(_, a, _)| a.clone()));
        }
        addrs.dedup();
        addrs
    }

    /// A provider as the core may fetch from it. Its IPs are only those of connections this
    /// node dialled and the peer answered (authenticated by noise), never merely what it
    /// announced: a DHT member must not be able to point fetches, and their credentials, at
    /// another host. (An inbound connection's source IP is not used either: it need not be an
    /// address the peer listens on.) Without such a connection there is none: the caller
    /// dials the peer first.
    fn provider(&mut self, peer: PeerId) -> Option<Provider> {
        let answered: Vec<Multiaddr> = self
            .connections
            .get(&peer)
            .map(|c| {
                c.iter()
                    .filter(|(_, _, dialled)| *dialled)
                    .map(|(_, a, _)| a.clone())
                    .collect()
            })
            .unwrap_or_default();
        let ips = provider_ips(&answered);
        if ips.is_empty() {
            return None;
        }
        let addrs = self.addrs_of(peer);
        Some(Provider { peer, addrs, ips })
    }

    fn providers_found(&mut self, id: kad::QueryId, providers: Vec<PeerId>) {
        // Delivered in the order found, never sorted: sorting would hand every node the same
        // lowest peer ids and pile the load on them. Which provider to use is the core's choice.
        for peer in providers {
            if peer == self.local {
                continue;
            }
            let Some(lookup) = self.lookups.get_mut(&id) else {
                return;
            };
            if lookup.remaining == 0 || !lookup.seen.insert(peer) {
                continue;
            }
            match self.provider(peer) {
                Some(provider) => {
                    tracing::debug!(?id, %peer, "provider found");
                    self.deliver(id, provider)
                }
                None => {
                    tracing::debug!(?id, %peer, "provider found, dialling it for its address");
                    // Kademlia knows the provider's addresses from the query but does not hand
                    // them out: dial the peer (it uses them) and report it once connected.
                    // Also when the peer is connected to us: only a connection this node
                    // dials proves an address (see `provider`).
                    let opts = DialOpts::peer_id(peer)
                        .condition(PeerCondition::NotDialing)
                        .build();
                    let waiting = self.awaiting.entry(peer).or_default();
                    let first = waiting.is_empty();
                    waiting.push(id);
                    if let Some(lookup) = self.lookups.get_mut(&id) {
                        lookup.dialling += 1;
                    }
                    if first {
                        match self.swarm.dial(opts) {
                            Ok(()) => {}
                            // A dial is already under way: its outcome resolves this one too.
                            Err(DialError::DialPeerConditionFalse(_)) => {}
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "cannot dial provider");
                                self.dial_resolved(peer);
                            }
                        }
                    }
                }
            }
        }
        self.close_if_done(id);
    }

    fn deliver(&mut self, id: kad::QueryId, provider: Provider) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        if lookup.remaining == 0 {
            return;
        }
        if lookup.tx.unbounded_send(provider).is_err() {
            lookup.remaining = 0;
        } else {
            lookup.remaining -= 1;
        }
    }

    fn close_if_done(&mut self, id: kad::QueryId) {
        let Some(lookup) = self.lookups.get(&id) else {
            return;
        };
        let done = lookup.remaining == 0 || (lookup.query_done && lookup.dialling == 0);
        if done {
            self.lookups.remove(&id);
            if let Some(mut query) = self.kad().query_mut(&id) {
                query.finish();
            }
        }
    }

    /// A dial to learn a provider's address ended (connected or failed).
    fn dial_resolved(&mut self, peer: PeerId) {
        let Some(ids) = self.awaiting.remove(&peer) else {
            return;
        };
        let provider = self.provider(peer);
        for id in ids {
            if let Some(lookup) = self.lookups.get_mut(&id) {
                lookup.dialling = lookup.dialling.saturating_sub(1);
            }
            if let Some(provider) = provider.clone() {
                self.deliver(id, provider);
            }
            self.close_if_done(id);
        }
    }

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        // Only these change what `publish` computes (peers, routing table size).
        let changes_state = matches!(
            event,
            SwarmEvent::Behaviour(BehaviourEvent::Kad(
                kad::Event::RoutingUpdated { .. }
                    | kad::Event::UnroutablePeer { .. }
                    | kad::Event::RoutablePeer { .. }
                    | kad::Event::PendingRoutablePeer { .. }
            )) | SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { .. }))
                | SwarmEvent::ConnectionEstablished { .. }
                | SwarmEvent::ConnectionClosed { .. }
                | SwarmEvent::OutgoingConnectionError { .. }
        );
        if changes_state {
            self.dirty = true;
        }
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.identify_event(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.connections.entry(peer_id).or_default().push((
                    connection_id,
                    endpoint.get_remote_address().clone(),
                    endpoint.is_dialer(),
                ));
                self.dial_resolved(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|(c, _, _)| *c != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                // Per-peer state lives as long as the peer is connected or in the routing
                // table: a stream of strangers that connect and go cannot grow it.
                if num_established == 0 && !self.in_routing_table(&peer_id) {
                    self.identified.remove(&peer_id);
                }
                // The last connection to a peer broke (it was not closed for idleness): dial it
                // again. If that fails the peer leaves the routing table (see the dial error
                // below), so that a node whose peers are all gone bootstraps again.
                if num_established == 0 && cause.is_some() {
                    let opts = DialOpts::peer_id(peer_id)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(peer = %peer_id, error = %e, "cannot redial peer");
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let Some(peer) = peer_id {
                    self.dial_resolved(peer);
                    // A peer that cannot be reached at any address leaves the routing table,
                    // so that an unreachable cluster empties it and bootstrapping starts again.
                    let unreachable = matches!(
                        error,
                        DialError::Transport(_) | DialError::WrongPeerId { .. }
                    );
                    if unreachable && !self.connections.contains_key(&peer) {
                        self.kad().remove_peer(&peer);
                        self.identified.remove(&peer);
                    }
                }
                tracing::debug!(?peer_id, %error, "dial failed");
            }
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                let advertise = is_advertisable(&address, self.wildcard.contains(&listener_id));
                tracing::info!(%address, advertised = advertise, "p2p listening");
                if advertise {
                    self.swarm.add_external_address(address.clone());
                }
                let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                if advertise {
                    shared.advertised_addrs.push(address.clone());
                }
                shared.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
                let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                shared.listen_addrs.retain(|a| *a != address);
                shared.advertised_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "p2p listener error");
            }
            _ => {}
        }
    }

    fn kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetProviders(result) => {
                    if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                        self.providers_found(id, providers.into_iter().collect());
                    }
                    if step.last {
                        if let Some(lookup) = self.lookups.get_mut(&id) {
                            lookup.query_done = true;
                        }
                        self.close_if_done(id);
                    }
                }
                kad::QueryResult::Bootstrap(result) => {
                    let finished = match &result {
                        Ok(ok) => ok.num_remaining == 0,
                        Err(_) => true,
                    };
                    if finished && step.last && self.republish_after_bootstrap {
                        self.republish_after_bootstrap = false;
                        self.republish();
                    }
                }
                kad::QueryResult::StartProviding(Err(e)) => {
                    tracing::debug!(error = ?e, "publishing a provider record failed");
                }
                _ => {}
            },
            kad::Event::RoutingUpdated { peer, old_peer, .. } => {
                tracing::debug!(%peer, "routing table updated");
                // A peer pushed out of the routing table is forgotten once it is not
                // connected either.
                if let Some(old) = old_peer
                    && !self.connections.contains_key(&old)
                {
                    self.identified.remove(&old);
                }
            }
            _ => {}
        }
    }

    /// Publishes every key this node provides again (after joining, so that keys advertised
    /// while the node was alone reach the network without waiting for the republish interval).
    fn republish(&mut self) {
        let keys: Vec<kad::RecordKey> = self
            .kad()
            .store_mut()
            .provided()
            .map(|r| r.key.clone())
            .collect();
        for key in keys {
            if let Err(e) = self.kad().start_providing(key) {
                tracing::warn!(error = %e, "cannot republish key");
            }
        }
    }

    fn identify_event(&mut self, event: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = event {
            let addrs: Vec<Multiaddr> = info
                .listen_addrs
                .into_iter()
                .filter(|a| ip_of(a).is_some_and(|ip| !ip.is_unspecified()))
                .collect();
            let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
            if speaks_kad {
                for addr in &addrs {
                    self.kad().add_address(&peer_id, addr.clone());
                }
            }
            if !addrs.is_empty() {
                let mut addrs = addrs;
                addrs.truncate(MAX_IDENTIFIED_ADDRS);
                self.identified.insert(peer_id, addrs);
            }
        }
    }

    fn tick(&mut self) {
        // Routing table entries can also change without an event (pending entries applied).
        self.publish();
        let next = if self.routing_table_size == 0 {
            self.start_bootstrap();
            self.backoff.next_delay()
        } else {
            self.backoff.reset();
            CHECK_INTERVAL
        };
        self.timer.reset(self.rt.now() + next);
    }

    fn start_bootstrap(&mut self) {
        if self.bootstrapping.is_some() {
            return;
        }
        let Some(bootstrap) = self.bootstrap.clone() else {
            return;
        };
        let timeout = self.bootstrap_timeout;
        let peers = bootstrap.peers();
        let timer = self.rt.sleep(timeout);
        self.bootstrapping = Some(
            async move {
                match futures::future::select(peers, timer).await {
                    Either::Left((result, _)) => result,
                    Either::Right(_) => Err(BootstrapError::Io {
                        what: "bootstrap".to_owned(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer within {timeout:?}"),
                        ),
                    }),
                }
            }
            .boxed(),
        );
    }

    fn bootstrapped(&mut self, result: BootstrapResult) {
        let peers = match result {
            Ok(peers) => peers,
            Err(e) => {
                tracing::warn!(error = %e, "bootstrap failed");
                return;
            }
        };
        if peers.is_empty() {
            tracing::debug!("bootstrap found no peers");
        }
        let alone = !peers.is_empty()
            && peers.iter().all(|p| match p {
                BootstrapPeer::Local => true,
                BootstrapPeer::Known { peer, .. } => *peer == self.local,
                BootstrapPeer::Address(_) => false,
            });
        if alone != self.alone {
            self.alone = alone;
            self.dirty = true;
        }
        for peer in peers {
            let (opts, what) = match peer {
                BootstrapPeer::Local => continue,
                BootstrapPeer::Known { peer, .. } if peer == self.local => continue,
                BootstrapPeer::Known { peer, addrs } => (
                    DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build(),
                    peer.to_string(),
                ),
                BootstrapPeer::Address(addr) => {
                    let what = addr.to_string();
                    (DialOpts::unknown_peer_id().address(addr).build(), what)
                }
            };
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(peer = %what, error = %e, "cannot dial bootstrap peer");
            }
        }
    }

    /// Publishes the state the handles read; starts a bootstrap when the routing table just
    /// became empty, and a Kademlia bootstrap when it just stopped being empty.
    fn publish(&mut self) {
        let size: usize = self.kad().kbuckets().map(|b| b.num_entries()).sum();
        if size != self.routing_table_size {
            if size == 0 {
                self.backoff.reset();
                self.timer.reset(self.rt.now());
            } else if self.routing_table_size == 0 {
                // Fill the routing table, then republish what was advertised meanwhile.
                self.republish_after_bootstrap = self.kad().bootstrap().is_ok();
            }
            self.routing_table_size = size;
        }
        let peers: BTreeMap<PeerId, Vec<Multiaddr>> = self
            .connections
            .iter()
            .map(|(peer, conns)| {
                let addrs = match self.identified.get(peer) {
                    Some(addrs) => addrs.clone(),
                    None => conns.iter().map(|(_, a, _)| a.clone()).collect(),
                };
                (*peer, addrs)
            })
            .collect();
        let active_queries = self.kad().iter_queries().count();
        let known_peers = self.identified.len();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.known_peers = known_peers;
        shared.routing_table_size = size;
        shared.active_queries = active_queries;
        shared.alone = self.alone;
        if shared.peers != peers {
            shared.peers = peers;
        }
    }
}
