//! The node: one surface over the request policy, the mirror and the advertiser.
//!
//! The adapter parses a request ([`crate::request::parse_request`]), asks its content store
//! whether the content is local, and hands both facts to [`Node::handle_request`]. The node
//! decides: serve locally, refuse (filtered, not mirrored, or a peer's request for something
//! this node does not hold), or mirror from a peer. Store facts go to
//! [`Node::handle_store_event`]; lookup and fetch facts to the `handle_*` methods below.
//! After any of them, drain [`Node::poll_output`], then arm one timer at
//! [`Node::poll_timeout`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::advertise::{AdvertiseOutput, AdvertisedCounts, Advertiser};
use crate::error::OciError;
use crate::filter::RegistryFilter;
use crate::keys::Key;
use crate::mirror::{
    FetchFailure, FetchId, FetchResponse, LookupId, Mirror, MirrorConfig, MirrorError,
    MirrorRequest, Output as MirrorOutput, RequestId, TimeoutReason,
};
use crate::request::{ContentRequest, Target};
use crate::store::{ImageState, StoreEvent};

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig<P> {
    /// This node's own peer (never fetched from).
    pub local: P,
    /// The mirroring policy.
    pub mirror: MirrorConfig,
    /// Mirrored registries and registry filters.
    pub filter: RegistryFilter,
    /// Interval of the full store re-check (60 s).
    pub recheck_interval: Duration,
    /// Longest wait for one answer of the content store (and for each chunk of a blob it
    /// streams): a store that stops answering must not hang requests.
    pub store_timeout: Duration,
    /// Seed of the node's random choices.
    pub seed: u64,
}

impl<P> NodeConfig<P> {
    /// Spegel's defaults for everything but the peer.
    pub fn new(local: P) -> Self {
        NodeConfig {
            local,
            mirror: MirrorConfig::default(),
            filter: RegistryFilter::default(),
            recheck_interval: Duration::from_secs(60),
            store_timeout: Duration::from_secs(3),
            seed: 0,
        }
    }
}

/// Whether the requested content is in this node's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// The store holds it.
    Present,
    /// The store does not hold it.
    Absent,
    /// The store could not tell (unreachable, or no answer within the store budget).
    Unknown,
}

/// A command for the adapters.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<P> {
    /// Serve the request from the local store.
    ServeLocal {
        /// The client request.
        request: RequestId,
    },
    /// Answer with this error (a 404 that says why, in most cases).
    Fail {
        /// The client request.
        request: RequestId,
        /// The error to send.
        error: OciError,
        /// Why, as a fixed label.
        reason: crate::FailReason,
    },
    /// Look up providers of `key` (see [`MirrorOutput::Lookup`]).
    Lookup {
        /// The lookup.
        id: LookupId,
        /// What to look up.
        key: Key,
        /// How many providers to ask for.
        count: usize,
    },
    /// Stop a lookup.
    CancelLookup {
        /// The lookup.
        id: LookupId,
    },
    /// Fetch from a peer (see [`MirrorOutput::Fetch`]).
    Fetch {
        /// The fetch.
        id: FetchId,
        /// The client request.
        request: RequestId,
        /// The peer.
        peer: P,
        /// `None`: forward the client's `Range`; `Some((a, b))`: `Range: bytes=a-b`.
        range: Option<(u64, u64)>,
    },
    /// Stop a fetch.
    CancelFetch {
        /// The fetch.
        id: FetchId,
    },
    /// Relay this fetch's response to the client.
    Serve {
        /// The client request.
        request: RequestId,
        /// The fetch.
        fetch: FetchId,
    },
    /// Continue the client's body with this fetch's body.
    Continue {
        /// The client request.
        request: RequestId,
        /// The fetch.
        fetch: FetchId,
    },
    /// Abort the client's connection (the body cannot be completed).
    Abort {
        /// The client request.
        request: RequestId,
    },
    /// Announce these keys.
    Advertise(Vec<Key>),
    /// Stop announcing these keys.
    Withdraw(Vec<Key>),
    /// Read the whole store and report a [`StoreEvent::Snapshot`].
    RecheckStore,
}

/// Why the node wants to be woken up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeTimeout {
    /// The mirror's reason.
    Mirror(TimeoutReason),
    /// The periodic store re-check.
    Recheck,
}

/// How a mirrored request's 404 is phrased.
#[derive(Debug, Clone)]
struct Pending {
    target: Target,
}

/// The node's state machine.
#[derive(Debug)]
pub struct Node<P> {
    filter: RegistryFilter,
    mirror: Mirror<P>,
    advertiser: Advertiser,
    pending: BTreeMap<RequestId, Pending>,
    outputs: std::collections::VecDeque<Output<P>>,
    mirror_hits: u64,
    mirror_misses: u64,
}

impl<P: Clone + Ord + fmt::Debug> Node<P> {
    /// A node.
    pub fn new(config: NodeConfig<P>) -> Self {
        Node {
            mirror: Mirror::new(config.mirror, config.local, config.seed),
            advertiser: Advertiser::new(config.filter.clone(), config.recheck_interval),
            filter: config.filter,
            pending: BTreeMap::new(),
            outputs: Default::default(),
            mirror_hits: 0,
            mirror_misses: 0,
        }
    }

    // ---- getters ----

    /// The mirror (for its estimates and counters).
    pub fn mirror(&self) -> &Mirror<P> {
        &self.mirror
    }

    /// Keys currently announced.
    pub fn advertised(&self) -> &std::collections::BTreeSet<Key> {
        self.advertiser.advertised()
    }

    /// Per-registry counts of what is announced.
    pub fn advertised_counts(&self) -> &BTreeMap<String, AdvertisedCounts> {
        self.advertiser.counts()
    }

    /// The images known from the store.
    pub fn images(&self) -> impl Iterator<Item = &ImageState> {
        self.advertiser.images()
    }

    /// Whether the content store is connected.
    pub fn store_connected(&self) -> bool {
        self.advertiser.store_connected()
    }

    /// Whether `registry/repository[:tag]` is served and advertised.
    pub fn allows(&self, registry: &str, repository: &str, tag: Option<&str>) -> bool {
        self.filter.allows(registry, repository, tag)
    }

    // ---- inputs ----

    /// A content request (manifest or blob). `local` says whether the store holds it.
    pub fn handle_request(
        &mut self,
        now: Instant,
        id: RequestId,
        req: &ContentRequest,
        local: Local,
    ) -> Result<(), MirrorError> {
        if self.pending.contains_key(&id) {
            return Err(MirrorError::DuplicateRequest(id));
        }
        if let Some(ns) = req.ns() {
            if !self.filter.mirrors_registry(ns) {
                let msg = format!("registry {ns} is not mirrored by this node");
                self.fail(id, req.target(), msg, crate::FailReason::NotMirrored);
                return Ok(());
            }
            if !self.filter.allows(ns, req.name(), req.tag()) {
                let msg = format!("{ns}/{} is excluded by a registry filter", req.name());
                self.fail(id, req.target(), msg, crate::FailReason::Filtered);
                return Ok(());
            }
        }
        match (local, req.mirrored()) {
            (Local::Present, _) => {
                self.outputs.push_back(Output::ServeLocal { request: id });
                return Ok(());
            }
            // A peer's request is only ever served locally: this prevents loops. The peer
            // moves on to its next provider on either answer.
            (Local::Absent, true) => {
                self.fail(
                    id,
                    req.target(),
                    "not present on this node".to_owned(),
                    crate::FailReason::NotPresent,
                );
                return Ok(());
            }
            (Local::Unknown, true) => {
                self.outputs.push_back(Output::Fail {
                    request: id,
                    error: OciError::unavailable("this node's content store is not answering"),
                    reason: crate::FailReason::StoreUnavailable,
                });
                return Ok(());
            }
            // This node's own client: the content may well be on a peer.
            (Local::Absent | Local::Unknown, false) => {}
        }
        self.pending.insert(
            id,
            Pending {
                target: req.target().clone(),
            },
        );
        let mreq = MirrorRequest {
            key: req.key(),
            digest: req.digest().cloned(),
            manifest: req.is_manifest(),
            head: req.head(),
            range: req.range().copied(),
        };
        let r = self.mirror.handle_request(now, id, mreq);
        self.drain_mirror();
        r
    }

    /// Providers found by a lookup.
    pub fn handle_providers(
        &mut self,
        now: Instant,
        id: LookupId,
        providers: Vec<P>,
    ) -> Result<(), MirrorError> {
        let r = self.mirror.handle_providers(now, id, providers);
        self.drain_mirror();
        r
    }

    /// A lookup finished.
    pub fn handle_lookup_finished(
        &mut self,
        now: Instant,
        id: LookupId,
    ) -> Result<(), MirrorError> {
        let r = self.mirror.handle_lookup_finished(now, id);
        self.drain_mirror();
        r
    }

    /// A fetch connected and sent its request.
    pub fn handle_fetch_connected(&mut self, now: Instant, id: FetchId) -> Result<(), MirrorError> {
        let r = self.mirror.handle_fetch_connected(now, id);
        self.drain_mirror();
        r
    }

    /// A fetch failed before its headers.
    pub fn handle_fetch_failed(
        &mut self,
        now: Instant,
        id: FetchId,
        why: FetchFailure,
    ) -> Result<(), MirrorError> {
        let r = self.mirror.handle_fetch_failed(now, id, why);
        self.drain_mirror();
        r
    }

    /// A fetch's headers arrived.
    pub fn handle_fetch_responded(
        &mut self,
        now: Instant,
        id: FetchId,
        resp: FetchResponse,
    ) -> Result<(), MirrorError> {
        let r = self.mirror.handle_fetch_responded(now, id, resp);
        self.drain_mirror();
        r
    }

    /// A mirrored response is complete.
    pub fn handle_pipe_finished(&mut self, now: Instant, id: RequestId) -> Result<(), MirrorError> {
        self.pending.remove(&id);
        let r = self.mirror.handle_pipe_finished(now, id);
        self.drain_mirror();
        r
    }

    /// A mirrored body broke after `written` bytes reached the client.
    pub fn handle_pipe_interrupted(
        &mut self,
        now: Instant,
        id: RequestId,
        written: u64,
    ) -> Result<(), MirrorError> {
        let r = self.mirror.handle_pipe_interrupted(now, id, written);
        self.drain_mirror();
        r
    }

    /// The client of a mirrored request went away.
    pub fn handle_request_closed(
        &mut self,
        now: Instant,
        id: RequestId,
    ) -> Result<(), MirrorError> {
        self.pending.remove(&id);
        let r = self.mirror.handle_request_closed(now, id);
        self.drain_mirror();
        r
    }

    /// A fact about the store.
    pub fn handle_store_event(&mut self, now: Instant, event: StoreEvent) {
        self.advertiser.handle_store_event(now, event);
        self.drain_advertiser();
    }

    /// Time passed. Early calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.mirror.handle_timeout(now);
        self.drain_mirror();
        self.advertiser.handle_timeout(now);
        self.drain_advertiser();
    }

    // ---- outputs ----

    /// The next command.
    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.outputs.pop_front()
    }

    /// When to call [`Node::handle_timeout`], and why.
    pub fn poll_timeout(&self) -> Option<(Instant, NodeTimeout)> {
        let m = self
            .mirror
            .poll_timeout()
            .map(|(t, r)| (t, NodeTimeout::Mirror(r)));
        let a = self
            .advertiser
            .poll_timeout()
            .map(|t| (t, NodeTimeout::Recheck));
        match (m, a) {
            (Some(m), Some(a)) => Some(if a.0 < m.0 { a } else { m }),
            (m, a) => m.or(a),
        }
    }

    /// Mirrored requests answered by a peer (`cache="hit"`) and not (`cache="miss"`).
    pub fn mirror_counts(&self) -> (u64, u64) {
        (self.mirror_hits, self.mirror_misses)
    }

    // ---- internals ----

    fn fail(&mut self, id: RequestId, target: &Target, message: String, reason: crate::FailReason) {
        let error = match target {
            Target::Blob(d) => OciError::blob_unknown(d, message),
            Target::ManifestDigest(d) => OciError::manifest_unknown(d.as_str(), message),
            Target::ManifestTag(t) => OciError::manifest_unknown(t, message),
        };
        self.outputs.push_back(Output::Fail {
            request: id,
            error,
            reason,
        });
    }

    fn drain_mirror(&mut self) {
        while let Some(o) = self.mirror.poll_output() {
            let out = match o {
                MirrorOutput::Lookup { id, key, count } => Output::Lookup { id, key, count },
                MirrorOutput::CancelLookup { id } => Output::CancelLookup { id },
                MirrorOutput::Fetch {
                    id,
                    request,
                    peer,
                    range,
                } => Output::Fetch {
                    id,
                    request,
                    peer,
                    range,
                },
                MirrorOutput::CancelFetch { id } => Output::CancelFetch { id },
                MirrorOutput::Serve { request, fetch } => {
                    self.mirror_hits += 1;
                    Output::Serve { request, fetch }
                }
                MirrorOutput::Continue { request, fetch } => Output::Continue { request, fetch },
                MirrorOutput::NotFound {
                    request,
                    reason,
                    cause,
                } => {
                    self.mirror_misses += 1;
                    match self.pending.remove(&request) {
                        Some(p) => {
                            self.fail(request, &p.target, reason, cause);
                            continue;
                        }
                        None => Output::Abort { request },
                    }
                }
                MirrorOutput::Abort { request } => {
                    self.pending.remove(&request);
                    Output::Abort { request }
                }
            };
            self.outputs.push_back(out);
        }
    }

    fn drain_advertiser(&mut self) {
        while let Some(o) = self.advertiser.poll_output() {
            self.outputs.push_back(match o {
                AdvertiseOutput::Advertise(k) => Output::Advertise(k),
                AdvertiseOutput::Withdraw(k) => Output::Withdraw(k),
                AdvertiseOutput::RecheckStore => Output::RecheckStore,
            });
        }
    }
}

#[cfg(test)]
// A test picks any origin for its simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::error::ErrorCode;
    use crate::request::{RegistryRequest, parse_request};
    use http::{HeaderMap, HeaderValue, Method};

    fn content(method: Method, path: &str, mirrored: bool) -> ContentRequest {
        let mut headers = HeaderMap::new();
        if mirrored {
            headers.insert("x-spegel-mirrored", HeaderValue::from_static("true"));
        }
        match parse_request(&method, path, &headers).unwrap() {
            RegistryRequest::Content(c) => c,
            other => panic!("not content: {other:?}"),
        }
    }

    fn drain(n: &mut Node<u32>) -> Vec<Output<u32>> {
        std::iter::from_fn(|| n.poll_output()).collect()
    }

    #[test]
    fn local_mirror_and_refusals() {
        let t0 = Instant::now();
        let mut cfg = NodeConfig::new(0u32);
        cfg.filter = RegistryFilter::new(&["http://127.0.0.1:5000"], &[":secret$"]).unwrap();
        let mut n = Node::new(cfg);
        let d = Digest::sha256_of(b"layer");
        let blob = content(
            Method::GET,
            &format!("/v2/test/small/blobs/{d}?ns=127.0.0.1%3A5000"),
            false,
        );
        n.handle_request(t0, RequestId(1), &blob, Local::Present)
            .unwrap();
        assert_eq!(
            drain(&mut n),
            vec![Output::ServeLocal {
                request: RequestId(1)
            }]
        );

        // Not local: looked up.
        n.handle_request(t0, RequestId(2), &blob, Local::Absent)
            .unwrap();
        let out = drain(&mut n);
        assert!(
            matches!(&out[0], Output::Lookup { key, count: 3, .. } if *key == Key::digest(&d)),
            "{out:?}"
        );

        // A peer's request for something absent: 404, no lookup (no loops).
        let from_peer = content(Method::GET, &format!("/v2/test/small/blobs/{d}"), true);
        n.handle_request(t0, RequestId(3), &from_peer, Local::Absent)
            .unwrap();
        let out = drain(&mut n);
        let [Output::Fail { error, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(error.code, ErrorCode::BlobUnknown);
        assert_eq!(error.status.as_u16(), 404);

        // Registries not mirrored and filtered repositories are refused even when local.
        let other = content(Method::GET, "/v2/x/manifests/v1?ns=ghcr.io", false);
        n.handle_request(t0, RequestId(4), &other, Local::Present)
            .unwrap();
        let out = drain(&mut n);
        let [Output::Fail { error, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(error.code, ErrorCode::ManifestUnknown);
        assert!(error.message.contains("not mirrored"));
        let secret = content(
            Method::HEAD,
            "/v2/x/manifests/secret?ns=127.0.0.1%3A5000",
            false,
        );
        n.handle_request(t0, RequestId(5), &secret, Local::Present)
            .unwrap();
        assert!(matches!(drain(&mut n).as_slice(), [Output::Fail { .. }]));
    }

    #[test]
    fn an_unknown_store_answer_mirrors_or_refuses_peers_with_503() {
        let t0 = Instant::now();
        let mut n = Node::new(NodeConfig::new(0u32));
        let d = Digest::sha256_of(b"layer");
        let own = content(Method::GET, &format!("/v2/x/blobs/{d}"), false);
        n.handle_request(t0, RequestId(1), &own, Local::Unknown)
            .unwrap();
        assert!(matches!(drain(&mut n)[0], Output::Lookup { .. }));
        let from_peer = content(Method::GET, &format!("/v2/x/blobs/{d}"), true);
        n.handle_request(t0, RequestId(2), &from_peer, Local::Unknown)
            .unwrap();
        let out = drain(&mut n);
        let [Output::Fail { error, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(error.status.as_u16(), 503);
    }

    #[test]
    fn mirror_miss_becomes_an_oci_404_that_says_why() {
        let t0 = Instant::now();
        let mut n = Node::new(NodeConfig::new(0u32));
        let tag = content(
            Method::HEAD,
            "/v2/test/small/manifests/v1?ns=127.0.0.1%3A5000",
            false,
        );
        n.handle_request(t0, RequestId(1), &tag, Local::Absent)
            .unwrap();
        let out = drain(&mut n);
        let Output::Lookup { id, key, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(key.as_str(), "127.0.0.1:5000/test/small:v1");
        n.handle_lookup_finished(t0, *id).unwrap();
        let out = drain(&mut n);
        let [Output::Fail { request, error, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(*request, RequestId(1));
        assert_eq!(error.code, ErrorCode::ManifestUnknown);
        assert_eq!(
            error.message,
            "could not find peer for 127.0.0.1:5000/test/small:v1"
        );
        assert_eq!(n.mirror_counts(), (0, 1));
    }

    #[test]
    fn store_events_drive_advertising_and_recheck_timer() {
        let t0 = Instant::now();
        let mut n = Node::new(NodeConfig::new(0u32));
        assert!(!n.store_connected());
        let target = Digest::sha256_of(b"m");
        n.handle_store_event(
            t0,
            StoreEvent::Snapshot(vec![ImageState {
                name: "127.0.0.1:5000/test/small:v1".into(),
                target: target.clone(),
                present: vec![target.clone()],
            }]),
        );
        assert!(n.store_connected());
        let out = drain(&mut n);
        assert!(matches!(&out[0], Output::Advertise(k) if k.len() == 2));
        assert_eq!(
            n.poll_timeout(),
            Some((t0 + Duration::from_secs(60), NodeTimeout::Recheck))
        );
        n.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(drain(&mut n), vec![Output::RecheckStore]);
    }
}
