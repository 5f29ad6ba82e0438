//! speil's P2P routing adapter: a libp2p swarm (TCP, optional pre-shared key, noise, yamux)
//! running Kademlia in server mode on `/spegel/kad/1.0.0` and identify, plus the bootstrap
//! methods by which a fresh node joins the cluster (SPEC.md §5).
//!
//! The swarm is owned by one task, the *driver* (the future returned by [`start`]); the rest of
//! the node talks to it through a cloneable [`Handle`]: [`Handle::advertise`] and
//! [`Handle::withdraw`] batches of [`speil_core::Key`]s, [`Handle::lookup`] a key and receive its
//! providers as they arrive, and read readiness, peers and addresses.
//!
//! The adapter is mechanism only: it does not cache, dedupe across lookups, choose peers or
//! decide timeouts — the core does. Within one lookup, a provider is reported once.
//!
//! # Runtimes
//!
//! The node runs on any [`speil_driver::Runtime`], passed by value: [`start`]`(rt, config)` on
//! `speil_driver::tokio::Tokio` in the tokio build, on `speil_driver::smol::Smol` in the smol
//! build, the same code on both. The runtime supplies everything the node needs from one:
//! - the raw TCP transport, [`TcpTransport`] (std sockets taken in with `Runtime::listen`,
//!   dials with `Runtime::connect`; the same listen and advertise behaviour as `libp2p-tcp`,
//!   see [`tcp`]), upgraded as [`transport::upgrade`] does;
//! - the executor of libp2p's connection tasks, and the spawned driver;
//! - the driver's timers (routing table checks, re-bootstrap backoff, bootstrap timeout);
//! - the bootstrap's TCP connections ([`connector`]) and name resolution
//!   ([`bootstrap::SystemResolver`], `getaddrinfo` through `Runtime::spawn_blocking`);
//! - the HTTP bootstrap `/id` server ([`serve_id`], [`serve_id_on`]).
//!
//! Nothing here names a runtime. (libp2p's own timers inside Kademlia, identify and the swarm
//! are `futures-timer`'s, which needs no runtime.) [`start_with_transport`] builds a node on
//! another transport, e.g. an in-memory one, and returns the driver future to spawn.
//!
//! # Addresses
//!
//! A node listens on every address of [`Config::listen`]; `--router-addr :5001` is
//! [`dual_stack`]`(5001)`, `0.0.0.0:5001` and `[::]:5001` (the transport's IPv6 sockets are
//! IPv6-only, as `libp2p-tcp`'s are, so each family has its own listener). A family the host
//! does not have is skipped with a warning; start-up fails only when no address can be
//! listened on, or a specific IP cannot.
//!
//! What a node advertises (identify, its provider records, `/id`) follows the listen addresses:
//! a specific IP is advertised even if it is loopback (one-machine test clusters on
//! 127.0.0.x); an unspecified one advertises every interface address of its family except
//! loopback and link-local (see [`is_advertisable`]). Peers' registries are reached at the IPs
//! of their advertised addresses, IPv6 ones bracketed (`[2001:db8::12]:5000`, see
//! [`host_port`]).

#![deny(missing_docs)]

mod addr;
mod behaviour;
pub mod bootstrap;
mod driver;
pub mod identity;
mod router;
mod runtime;
pub mod store;
pub mod tcp;
pub mod transport;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::channel::{mpsc, oneshot};
use speil_core::Key;

pub use addr::{dual_stack, host_port, ip_of, is_advertisable, peer_id_of, tcp_multiaddr};
pub use bootstrap::{Bootstrap, BootstrapPeer};
pub use driver::start_with_transport;
pub use libp2p::identity::Keypair;
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
pub use router::P2pRouter;
pub use runtime::{RuntimeConnector, RuntimeExecutor, connector, serve_id, serve_id_on, start};
pub use store::StoreLimits;
pub use tcp::TcpTransport;
pub use transport::BoxedTransport;

/// The Kademlia protocol name Spegel uses.
pub const KAD_PROTOCOL: &str = "/spegel/kad/1.0.0";

/// How often this node republishes its provider records (Spegel's number).
pub const DEFAULT_PROVIDER_PUBLICATION_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// How long other nodes keep a provider record (Spegel's number).
pub const DEFAULT_PROVIDER_RECORD_TTL: Duration = Duration::from_secs(19 * 60);

/// Settings of a node.
#[derive(Clone)]
pub struct Config {
    /// The node's identity (see [`identity`]).
    pub keypair: Keypair,
    /// The TCP addresses to listen on (`--router-addr`; [`dual_stack`] for `:PORT`). An
    /// unspecified address listens on every interface of its family.
    pub listen: Vec<SocketAddr>,
    /// The private-network key; peers without it cannot connect.
    pub psk: Option<PreSharedKey>,
    /// Where to find peers when the routing table is empty; `None` waits to be dialled.
    pub bootstrap: Option<Arc<dyn Bootstrap>>,
    /// How often own provider records are republished.
    pub provider_publication_interval: Duration,
    /// How long provider records received from others stay valid.
    pub provider_record_ttl: Duration,
    /// The bounds of the record store (provider records of others, own keys).
    pub store: StoreLimits,
    /// The bounds of the swarm's connections.
    pub connections: ConnectionBounds,
    /// How long a connection without activity is kept open.
    pub idle_connection_timeout: Duration,
    /// Re-bootstrap backoff while the routing table is empty (the core's policy:
    /// [`speil_core::backoff::Backoff::rebootstrap`], seeded from the peer id).
    pub rebootstrap_backoff: speil_core::backoff::Backoff,
    /// Longest wait for one bootstrap source to answer before trying again.
    pub bootstrap_timeout: Duration,
}

/// The bounds of the swarm's connections (libp2p's connection limits): an unauthenticated
/// flood of connections cannot exhaust the node's file descriptors or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBounds {
    /// Incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Established incoming connections.
    pub max_established_incoming: u32,
    /// Established connections in all.
    pub max_established: u32,
    /// Established connections to one peer.
    pub max_established_per_peer: u32,
}

impl Default for ConnectionBounds {
    fn default() -> Self {
        ConnectionBounds {
            max_pending_incoming: 128,
            max_established_incoming: 1024,
            max_established: 2048,
            max_established_per_peer: 4,
        }
    }
}

impl Config {
    /// Spegel's defaults, listening on `listen` only (see [`Config::listen`] for several).
    pub fn new(keypair: Keypair, listen: SocketAddr) -> Self {
        let seed = seed_of(&keypair.public().to_peer_id());
        Config {
            keypair,
            listen: vec![listen],
            psk: None,
            bootstrap: None,
            provider_publication_interval: DEFAULT_PROVIDER_PUBLICATION_INTERVAL,
            provider_record_ttl: DEFAULT_PROVIDER_RECORD_TTL,
            store: StoreLimits::default(),
            connections: ConnectionBounds::default(),
            idle_connection_timeout: Duration::from_secs(10 * 60),
            rebootstrap_backoff: speil_core::backoff::Backoff::rebootstrap(seed),
            bootstrap_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("peer_id", &self.keypair.public().to_peer_id())
            .field("listen", &self.listen)
            .field(
                "psk",
                &self.psk.as_ref().map(|p| p.fingerprint().to_string()),
            )
            .field("bootstrap", &self.bootstrap.is_some())
            .field(
                "provider_publication_interval",
                &self.provider_publication_interval,
            )
            .field("provider_record_ttl", &self.provider_record_ttl)
            .finish_non_exhaustive()
    }
}

/// Errors of the adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver task has ended (shut down, or its future was dropped).
    #[error("the p2p router has stopped")]
    Stopped,
    /// The noise configuration could not be built from the identity.
    #[error("cannot set up noise: {0}")]
    Noise(#[from] libp2p::noise::Error),
    /// Listening on a router address failed (a specific IP, or every address).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// [`Config::listen`] is empty.
    #[error("no address to listen on")]
    NoListenAddress,
}

/// A peer that provides a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Its peer id.
    pub peer: PeerId,
    /// Its known addresses.
    pub addrs: Vec<Multiaddr>,
    /// The distinct IPs of those addresses (the core adds the registry port).
    pub ips: Vec<IpAddr>,
}

/// A connected peer, for the debug page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer: PeerId,
    /// The addresses it advertises, or the address of the connection when it advertised none.
    pub addrs: Vec<Multiaddr>,
}

/// State the driver publishes for the handles.
#[derive(Debug, Default)]
struct Shared {
    running: bool,
    routing_table_size: usize,
    active_queries: usize,
    alone: bool,
    stored_records: usize,
    known_peers: usize,
    listen_addrs: Vec<Multiaddr>,
    advertised_addrs: Vec<Multiaddr>,
    peers: BTreeMap<PeerId, Vec<Multiaddr>>,
}

enum Command {
    Advertise(Vec<Key>),
    Withdraw(Vec<Key>),
    Lookup {
        key: Key,
        count: usize,
        tx: mpsc::UnboundedSender<Provider>,
        cancelled: oneshot::Receiver<()>,
    },
    Shutdown,
}

/// The node's handle: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Mutex<Shared>>,
    local_peer_id: PeerId,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

impl Handle {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        // The driver never panics while holding the lock; recover the data if it did.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        // The driver marks itself stopped before its command channel is gone: a command sent
        // in between would be accepted and never run.
        if !self.shared().running {
            return Err(Error::Stopped);
        }
        self.commands
            .unbounded_send(command)
            .map_err(|_| Error::Stopped)
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Announces that this node provides `keys` (republished until withdrawn).
    pub fn advertise(&self, keys: Vec<Key>) -> Result<(), Error> {
        self.send(Command::Advertise(keys))
    }

    /// Stops announcing `keys`. Records already held by other nodes expire after the provider
    /// record TTL.
    pub fn withdraw(&self, keys: Vec<Key>) -> Result<(), Error> {
        self.send(Command::Withdraw(keys))
    }

    /// Looks up providers of `key`: up to `count` of them (never this node), each delivered as
    /// soon as it is known. The stream ends when `count` were delivered or the DHT query is
    /// over; dropping it cancels the query.
    pub fn lookup(&self, key: &Key, count: usize) -> Result<Lookup, Error> {
        let (tx, rx) = mpsc::unbounded();
        let (cancel, cancelled) = oneshot::channel();
        self.send(Command::Lookup {
            key: key.clone(),
            count,
            tx,
            cancelled,
        })?;
        Ok(Lookup {
            rx,
            _cancel: cancel,
        })
    }

    /// Ready when the routing table is not empty — or, as in Spegel, when the bootstrap source
    /// names only this node (a one-node cluster is ready).
    pub fn is_ready(&self) -> bool {
        let shared = self.shared();
        shared.running && (shared.routing_table_size > 0 || shared.alone)
    }

    /// Whether the driver is still running.
    pub fn is_running(&self) -> bool {
        self.shared().running
    }

    /// Number of peers in the routing table.
    pub fn routing_table_size(&self) -> usize {
        self.shared().routing_table_size
    }

    /// Number of DHT queries under way (lookups, publications, bootstrap), as of the last
    /// second or the last routing change.
    pub fn active_queries(&self) -> usize {
        self.shared().active_queries
    }

    /// Provider records of other peers the node holds, as of the last second (bounded:
    /// [`StoreLimits::max_records`]).
    pub fn stored_records(&self) -> usize {
        self.shared().stored_records
    }

    /// Peers the node keeps addresses for (connected, or in the routing table), as of the
    /// last second.
    pub fn known_peers(&self) -> usize {
        self.shared().known_peers
    }

    /// The addresses the node listens on (with the port actually bound).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared().listen_addrs.clone()
    }

    /// The addresses the node advertises to others.
    pub fn advertised_addrs(&self) -> Vec<Multiaddr> {
        self.shared().advertised_addrs.clone()
    }

    /// Number of connected peers.
    pub fn connected_peers(&self) -> usize {
        self.shared().peers.len()
    }

    /// The connected peers and their addresses.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.shared()
            .peers
            .iter()
            .map(|(peer, addrs)| PeerInfo {
                peer: *peer,
                addrs: addrs.clone(),
            })
            .collect()
    }

    /// Stops the driver (connections are closed). Other handles then fail with
    /// [`Error::Stopped`].
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
    }
}

/// The providers of one lookup, as they arrive. Dropping it cancels the query.
#[derive(Debug)]
pub struct Lookup {
    rx: mpsc::UnboundedReceiver<Provider>,
    _cancel: oneshot::Sender<()>,
}

impl Stream for Lookup {
    type Item = Provider;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Provider>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

/// A seed for a node's random choices from its peer id: stable per node, different between
/// nodes (the first 8 bytes of the SHA-256 of the peer id's bytes).
pub fn seed_of(peer: &PeerId) -> u64 {
    let digest = speil_core::Digest::sha256_of(&peer.to_bytes());
    u64::from_str_radix(&digest.hex()[..16], 16).unwrap_or(0)
}
