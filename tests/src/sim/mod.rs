//! The simulated cluster (DESIGN.md §3, layer 2): N nodes, each the REAL driver
//! (`speil_driver::node::start`) owning a real core `Node` behind the real registry service
//! (`speil_http::server::RegistryService`, whose relayed bodies are speil-http's `Pipe`), on
//! a simulated clock ([`runtime::SimRuntime`]).
//!
//! What is fake (and named so, in [`fakes`]): the DHT, the content stores, and the network
//! between the nodes — a fetch is answered by the other node's registry service, as a peer
//! request, over a [`fakes::Link`] with its latency, bandwidth, breaks and stalls. What is not
//! simulated: sockets, the HTTP/1.1 codec and connection loop, hyper's client and `sendfile`
//! (the end-to-end tests run those).
//!
//! ```text
//!  client task ──RegistryService──▶ driver(n) ──Fetch──▶ FakePeers ──Link──▶ RegistryService(p) ──▶ driver(p)
//! ```
//!
//! The test drives time: [`Cluster::run_until`] polls every ready task until none is, then
//! moves the clock to the next deadline somebody waits for, with a bounded number of steps.

pub mod fakes;
pub mod runtime;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::channel::mpsc;
use futures::future::FutureExt;
use http::header;
use http_body_util::BodyExt;
use speil_core::node::{Node, NodeConfig};
use speil_core::store::StoreEvent;
use speil_core::{Digest, Key};
use speil_driver::metrics::Metrics;
use speil_driver::{DriverConfig, Parts, Runtime};
use speil_http::server::{RegistryService, ServerConfig};

pub use fakes::{BodyEnd, Event, Link, Record};
pub use runtime::SimRuntime;

use fakes::{FakeDht, FakePeers, FakeStore, Net, REGISTRY_PORT, ip};

/// Most task polls and clock moves one [`Cluster::run_until`] may take (livelock guard).
pub const MAX_STEPS: usize = 1_000_000;

/// A client request, by the order it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// How a client request ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A success status and a complete body.
    Served {
        /// The status.
        status: u16,
        /// The body's length.
        len: u64,
        /// The body's sha256.
        digest: Digest,
        /// When the body was complete.
        at: Duration,
    },
    /// An error status.
    Failed {
        /// The status.
        status: u16,
        /// The OCI error's message.
        message: String,
        /// When it arrived.
        at: Duration,
    },
    /// The connection was aborted after `written` body bytes.
    Aborted {
        /// Body bytes received.
        written: u64,
        /// When.
        at: Duration,
    },
}

struct SimNode {
    store: Arc<FakeStore>,
    events: mpsc::UnboundedSender<StoreEvent>,
    service: RegistryService,
    metrics: Arc<Metrics>,
}

/// The simulated cluster.
pub struct Cluster {
    rt: SimRuntime,
    net: Net,
    nodes: BTreeMap<u32, SimNode>,
    outcomes: Arc<Mutex<BTreeMap<ClientId, (u32, Outcome)>>>,
    blobs: BTreeMap<Digest, Bytes>,
    next_client: u64,
}

/// The deterministic content of a blob called `name`.
pub fn content(name: &str, size: u64) -> Bytes {
    let mut state = Digest::sha256_of(name.as_bytes())
        .hex()
        .bytes()
        .fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    (0..size)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

impl Cluster {
    /// `n` nodes with Spegel's default policy; node `i` has seed `seed + i`.
    pub fn new(n: u32, seed: u64) -> Cluster {
        Cluster::with_config(n, seed, |_| {})
    }

    /// `n` nodes whose configuration `tune` adjusts.
    pub fn with_config(n: u32, seed: u64, tune: impl Fn(&mut NodeConfig<u32>)) -> Cluster {
        let rt = SimRuntime::new();
        let net = Net::default();
        net.lock().lookup_latency = Duration::from_millis(1);
        let mut nodes = BTreeMap::new();
        for i in 0..n {
            let mut cfg = NodeConfig::new(i);
            cfg.seed = seed.wrapping_add(u64::from(i));
            tune(&mut cfg);
            let store = Arc::new(FakeStore::new(i, net.clone(), rt.clone()));
            let (events, store_events) = mpsc::unbounded();
            let metrics = Arc::new(Metrics::default());
            let (handle, driver) = speil_driver::node::start(Parts {
                node: Node::new(cfg),
                runtime: rt.clone(),
                store: store.clone(),
                router: Arc::new(FakeDht {
                    node: i,
                    net: net.clone(),
                    rt: rt.clone(),
                }),
                client: Arc::new(FakePeers {
                    node: i,
                    net: net.clone(),
                    rt: rt.clone(),
                }),
                store_events: store_events.boxed(),
                metrics: metrics.clone(),
                config: DriverConfig {
                    registry_port: REGISTRY_PORT,
                },
            });
            rt.spawn(driver);
            let service =
                RegistryService::new(handle, store.clone(), ServerConfig { credentials: None });
            {
                let mut w = net.lock();
                w.addrs.insert(ip(i), i);
                w.services.insert(i, service.clone());
                w.links.insert(i, Link::default());
            }
            // The store's event stream starts with a snapshot (as containerd's does).
            let _ = events.unbounded_send(StoreEvent::Snapshot(store.images()));
            nodes.insert(
                i,
                SimNode {
                    store,
                    events,
                    service,
                    metrics,
                },
            );
        }
        rt.run_ready();
        Cluster {
            rt,
            net,
            nodes,
            outcomes: Arc::default(),
            blobs: BTreeMap::new(),
            next_client: 0,
        }
    }

    /// The runtime.
    pub fn runtime(&self) -> &SimRuntime {
        &self.rt
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.rt.elapsed()
    }

    /// Node `node`'s metrics.
    pub fn metrics(&self, node: u32) -> &Metrics {
        &self.nodes[&node].metrics
    }

    /// Changes how `node`'s registry answers every other node.
    pub fn link(&mut self, node: u32, change: impl FnOnce(&mut Link)) {
        change(self.net.lock().links.entry(node).or_default());
    }

    /// How long lookups take to report.
    pub fn set_lookup_latency(&mut self, latency: Duration) {
        self.net.lock().lookup_latency = latency;
    }

    /// Node `node` pulls a blob called `name` of `size` bytes: its store holds it and the
    /// store reports a snapshot (the node advertises it). Returns the blob's digest.
    pub fn give(&mut self, node: u32, name: &str, size: u64) -> Digest {
        let bytes = content(name, size);
        let n = &self.nodes[&node];
        let digest = n.store.put(bytes.clone());
        self.blobs.insert(digest.clone(), bytes);
        let _ = n
            .events
            .unbounded_send(StoreEvent::Snapshot(n.store.images()));
        self.rt.run_ready();
        digest
    }

    /// Node `node`'s store loses everything (garbage collection) and reports it.
    pub fn clear(&mut self, node: u32) {
        let n = &self.nodes[&node];
        n.store.clear();
        let _ = n.events.unbounded_send(StoreEvent::Snapshot(Vec::new()));
        self.rt.run_ready();
    }

    /// Node `node`'s store stops answering (see [`fakes::FakeStore::hang`]).
    pub fn hang_store(&mut self, node: u32) {
        self.nodes[&node].store.hang();
    }

    /// The content of a blob given to some node.
    pub fn blob(&self, digest: &Digest) -> &Bytes {
        &self.blobs[digest]
    }

    /// The providers the DHT knows for `key`.
    pub fn providers(&self, key: &Key) -> BTreeSet<u32> {
        self.net.lock().dht.get(key).cloned().unwrap_or_default()
    }

    /// A client of node `node` asks for blob `digest` (with a `Range` header when given),
    /// through node's registry service. The client reads the whole body.
    pub fn request(&mut self, node: u32, digest: &Digest, range: Option<&str>) -> ClientId {
        self.next_client += 1;
        let id = ClientId(self.next_client);
        let mut builder = http::Request::builder()
            .method(http::Method::GET)
            .uri(format!("/v2/sim/x/blobs/{digest}?ns=127.0.0.1%3A5000"));
        if let Some(r) = range {
            builder = builder.header(header::RANGE, r);
        }
        let req = builder.body(()).expect("a valid request");
        let answer = self.nodes[&node].service.handle(req);
        let (rt, outcomes) = (self.rt.clone(), self.outcomes.clone());
        self.rt.spawn(
            async move {
                let outcome = match answer.await {
                    Err(_) => Outcome::Aborted {
                        written: 0,
                        at: rt.elapsed(),
                    },
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let mut body = response.into_body();
                        let mut got = BytesMut::new();
                        loop {
                            match body.frame().await {
                                Some(Ok(frame)) => {
                                    if let Ok(data) = frame.into_data() {
                                        got.extend_from_slice(&data);
                                    }
                                }
                                Some(Err(_)) => {
                                    break Outcome::Aborted {
                                        written: got.len() as u64,
                                        at: rt.elapsed(),
                                    };
                                }
                                None if status >= 400 => {
                                    break Outcome::Failed {
                                        status,
                                        message: oci_message(&got),
                                        at: rt.elapsed(),
                                    };
                                }
                                None => {
                                    break Outcome::Served {
                                        status,
                                        len: got.len() as u64,
                                        digest: Digest::sha256_of(&got),
                                        at: rt.elapsed(),
                                    };
                                }
                            }
                        }
                    }
                };
                outcomes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, (node, outcome));
            }
            .boxed(),
        );
        self.rt.run_ready();
        id
    }

    /// How request `id` ended, if it did.
    pub fn outcome(&self, id: ClientId) -> Option<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .map(|(_, o)| o.clone())
    }

    /// Every outcome so far.
    pub fn outcomes(&self) -> BTreeMap<ClientId, Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, (_, o))| (*id, o.clone()))
            .collect()
    }

    /// The trace so far.
    pub fn trace(&self) -> Vec<Record> {
        self.net.lock().trace.clone()
    }

    /// The peers whose bodies delivered bytes to node `node`, in order.
    pub fn fed_by(&self, node: u32) -> Vec<u32> {
        self.net
            .lock()
            .trace
            .iter()
            .filter(|r| r.node == node)
            .filter_map(|r| match r.event {
                Event::Body {
                    peer, delivered, ..
                } if delivered > 0 => Some(peer),
                _ => None,
            })
            .collect()
    }

    /// Runs until simulated time `limit`: every ready task is polled until none is, then the
    /// clock moves to the next deadline somebody waits for, as long as it is not after
    /// `limit`. Panics after [`MAX_STEPS`] steps (a livelock).
    pub fn run_until(&mut self, limit: Duration) {
        let mut steps = 0;
        loop {
            steps += self.rt.run_ready() + 1;
            assert!(
                steps < MAX_STEPS,
                "livelock: {steps} steps at {:?}",
                self.now()
            );
            match self.rt.next_deadline() {
                Some(at) if at <= limit => self.rt.advance_to(at),
                _ => break,
            }
        }
        self.rt.advance_to(limit);
        self.rt.run_ready();
    }

    /// Runs until `done` holds (checked whenever no task is ready), and returns the simulated
    /// time it took. Panics when it does not hold by simulated time `limit`, or after
    /// [`MAX_STEPS`] steps.
    pub fn run_until_cond(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> Duration {
        let mut steps = 0;
        loop {
            steps += self.rt.run_ready() + 1;
            assert!(
                steps < MAX_STEPS,
                "livelock: {steps} steps at {:?}",
                self.now()
            );
            if done(self) {
                return self.now();
            }
            match self.rt.next_deadline() {
                Some(at) if at <= limit => self.rt.advance_to(at),
                next => panic!(
                    "not done by {limit:?} (now {:?}, next deadline {next:?})",
                    self.now()
                ),
            }
        }
    }

    /// Runs until every client request made so far has ended; see [`Cluster::run_until_cond`].
    pub fn settle(&mut self, limit: Duration) -> Duration {
        let made = self.next_client;
        self.run_until_cond(limit, |sim| {
            sim.outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u64
                == made
        })
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.now() + d;
        self.run_until(limit);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The registries hold the drivers' handles and the drivers hold the network: break
        // the cycle, then drop every task.
        self.net.lock().services.clear();
        self.rt.shutdown();
    }
}

/// The message of an OCI error body (`{"errors":[{"message":…}]}`).
fn oci_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}
