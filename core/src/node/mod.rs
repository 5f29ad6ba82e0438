//! The node: one surface over the request policy, the mirror and the advertiser.
//!
//! Every fact goes in as one [`Input`] through [`Node::handle`]; every command comes out as
//! one [`Output`] from [`Node::poll_output`]. The sub-machines (the mirror, the advertiser)
//! decide in the node's own [`Output`] type, and the node moves their commands into its queue
//! as they are, in the order they were decided.
//!
//! The adapter parses a request ([`crate::request::parse_request`]) and hands it over as
//! [`Input::Request`]. The node refuses what it does not serve (registries not mirrored,
//! filtered repositories), asks the store about the rest ([`Output::StatLocal`], answered by
//! [`Input::LocalAnswered`] within `store_timeout` or decided as unknown), and decides: serve
//! locally (the digest, size and resolved range, or a 416), refuse a peer's request for
//! something this node does not hold, or mirror from a peer. After any input, drain
//! [`Node::poll_output`], then arm one timer at [`Node::poll_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::advertise::{AdvertisedCounts, Advertiser};
use crate::digest::Digest;
use crate::error::OciError;
use crate::filter::RegistryFilter;
use crate::keys::Key;
use crate::manifest::MAX_MANIFEST_SIZE;
use crate::mirror::{Mirror, MirrorConfig, MirrorError, MirrorRequest, RequestId, TimeoutReason};
use crate::request::{ContentRequest, Target};
use crate::store::ImageState;

mod io;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod proptests;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod sim;
#[cfg(test)]
mod tests;

pub use io::{Input, Local, Note, Output, StatTarget};

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
    /// Longest wait for the content store's answer to [`Output::StatLocal`]: a store that
    /// stops answering must not hang requests. Without an answer in time the node decides as
    /// for [`Local::Unknown`] (mirror its own client's request, 503 to a peer).
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

/// Why the node wants to be woken up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeTimeout {
    /// The mirror's reason.
    Mirror(TimeoutReason),
    /// The periodic store re-check.
    Recheck,
    /// The content store did not answer a [`Output::StatLocal`] within `store_timeout`.
    StoreAnswer,
}

/// A request waiting for the store's answer.
#[derive(Debug)]
struct Stat {
    request: ContentRequest,
    deadline: Instant,
}

/// The node's state machine.
#[derive(Debug)]
pub struct Node<P> {
    filter: RegistryFilter,
    mirror: Mirror<P>,
    advertiser: Advertiser<P>,
    stats: BTreeMap<RequestId, Stat>,
    store_timeout: Duration,
    outputs: VecDeque<Output<P>>,
}

impl<P: Clone + Ord + fmt::Debug> Node<P> {
    /// A node.
    pub fn new(config: NodeConfig<P>) -> Self {
        Node {
            mirror: Mirror::new(config.mirror, config.local, config.seed),
            advertiser: Advertiser::new(config.filter.clone(), config.recheck_interval),
            filter: config.filter,
            stats: BTreeMap::new(),
            store_timeout: config.store_timeout,
            outputs: VecDeque::new(),
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

    /// Whether request `id` is still being decided (the store is asked, or it is mirrored).
    pub fn is_active(&self, id: RequestId) -> bool {
        self.stats.contains_key(&id) || self.mirror.has_request(id)
    }

    /// The mirrored registries and registry filters.
    pub fn filter(&self) -> &RegistryFilter {
        &self.filter
    }

    /// Whether `registry/repository[:tag]` is served and advertised.
    pub fn allows(&self, registry: &str, repository: &str, tag: Option<&str>) -> bool {
        self.filter.allows(registry, repository, tag)
    }

    // ---- inputs ----

    /// A fact. Misuse (an unknown or finished id, a request id used twice) is an `Err` and
    /// changes nothing; a late report about something that already ended is such misuse.
    pub fn handle(&mut self, now: Instant, input: Input<P>) -> Result<(), MirrorError> {
        let m = &mut self.mirror;
        let r = match input {
            Input::Request { id, request } => self.request(now, id, request),
            Input::LocalAnswered { request, local } => match self.stats.remove(&request) {
                Some(stat) => self.decide(now, request, &stat.request, local),
                // Too late (decided as unknown), or never asked.
                None => Err(MirrorError::UnknownRequest(request)),
            },
            Input::RequestClosed { request } => match self.stats.remove(&request) {
                Some(_) => Ok(()),
                None => m.handle_request_closed(now, request),
            },
            Input::Providers { lookup, providers } => m.handle_providers(now, lookup, providers),
            Input::LookupFinished { lookup } => m.handle_lookup_finished(now, lookup),
            Input::FetchConnected { fetch } => m.handle_fetch_connected(now, fetch),
            Input::FetchFailed { fetch, why } => m.handle_fetch_failed(now, fetch, why),
            Input::FetchResponded { fetch, response } => {
                m.handle_fetch_responded(now, fetch, response)
            }
            Input::PipeProgress { request, written } => {
                m.handle_pipe_progress(now, request, written)
            }
            Input::PipeFinished { request } => m.handle_pipe_finished(now, request),
            Input::PipeMismatch { request } => m.handle_pipe_mismatch(now, request),
            Input::PipeInterrupted { request, written } => {
                m.handle_pipe_interrupted(now, request, written)
            }
            Input::Store(event) => {
                self.advertiser.handle_store_event(now, event);
                Ok(())
            }
        };
        self.collect();
        r
    }

    /// Time passed. Early calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<RequestId> = self
            .stats
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(stat) = self.stats.remove(&id) {
                // Cannot fail: the id is neither waiting for the store nor mirrored.
                let _ = self.decide(now, id, &stat.request, Local::Unknown);
            }
        }
        self.mirror.handle_timeout(now);
        self.advertiser.handle_timeout(now);
        self.collect();
    }

    // ---- outputs ----

    /// The next command.
    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.outputs.pop_front()
    }

    /// The oldest [`Note`] not read yet (at most [`crate::mirror::MAX_NOTES`] are kept).
    pub fn poll_note(&mut self) -> Option<Note<P>> {
        self.mirror.poll_note()
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
        let s = self
            .stats
            .values()
            .map(|s| s.deadline)
            .min()
            .map(|t| (t, NodeTimeout::StoreAnswer));
        [m, a, s].into_iter().flatten().min_by_key(|(t, _)| *t)
    }

    /// Mirrored requests answered by a peer (`cache="hit"`) and not (`cache="miss"`).
    pub fn mirror_counts(&self) -> (u64, u64) {
        self.mirror.counts()
    }

    // ---- internals ----

    fn request(
        &mut self,
        now: Instant,
        id: RequestId,
        req: ContentRequest,
    ) -> Result<(), MirrorError> {
        if self.stats.contains_key(&id) || self.mirror.has_request(id) {
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
        let what = match (req.target(), req.ns()) {
            (Target::ManifestTag(tag), Some(ns)) => StatTarget::Tag {
                image: format!("{ns}/{}:{tag}", req.name()),
            },
            // A store keeps tags under their registry's name: without one nothing matches.
            (Target::ManifestTag(_), None) => return self.decide(now, id, &req, Local::Absent),
            (Target::ManifestDigest(d) | Target::Blob(d), _) => StatTarget::Digest(d.clone()),
        };
        self.outputs
            .push_back(Output::StatLocal { request: id, what });
        self.stats.insert(
            id,
            Stat {
                request: req,
                deadline: now + self.store_timeout,
            },
        );
        Ok(())
    }

    /// Decides a request once the store's answer is known.
    fn decide(
        &mut self,
        now: Instant,
        id: RequestId,
        req: &ContentRequest,
        local: Local,
    ) -> Result<(), MirrorError> {
        match (local, req.mirrored()) {
            (Local::Present { digest, size }, _) => {
                self.serve_local(id, req, digest, size);
                Ok(())
            }
            // A peer's request is only ever served locally: this prevents loops. The peer
            // moves on to its next provider on either answer.
            (Local::Absent, true) => {
                let msg = "not present on this node".to_owned();
                self.fail(id, req.target(), msg, crate::FailReason::NotPresent);
                Ok(())
            }
            (Local::Unknown, true) => {
                self.outputs.push_back(Output::Fail {
                    request: id,
                    error: OciError::unavailable("this node's content store is not answering"),
                    reason: crate::FailReason::StoreUnavailable,
                });
                Ok(())
            }
            // This node's own client: the content may well be on a peer.
            (Local::Absent | Local::Unknown, false) => {
                self.mirror.handle_request(now, id, MirrorRequest::of(req))
            }
        }
    }

    /// Serves local content: a manifest within the size limit, a blob whole or in the
    /// client's range resolved against its size (416 when the range lies outside it).
    fn serve_local(&mut self, id: RequestId, req: &ContentRequest, digest: Digest, size: u64) {
        if req.is_manifest() && size > MAX_MANIFEST_SIZE as u64 {
            let msg = format!("{digest} is {size} bytes, larger than a manifest may be (4 MiB)");
            self.fail(id, req.target(), msg, crate::FailReason::TooLarge);
            return;
        }
        let range = match req.range().filter(|_| !req.is_manifest()) {
            None => None,
            Some(r) => match r.resolve(size) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.outputs.push_back(Output::Fail {
                        request: id,
                        error: e.into(),
                        reason: crate::FailReason::RangeNotSatisfiable,
                    });
                    return;
                }
            },
        };
        self.outputs.push_back(Output::ServeLocal {
            request: id,
            digest,
            size,
            range,
            head: req.head(),
        });
    }

    fn fail(&mut self, id: RequestId, target: &Target, message: String, reason: crate::FailReason) {
        self.outputs.push_back(Output::Fail {
            request: id,
            error: unknown(target, message),
            reason,
        });
    }

    /// Moves the sub-machines' commands into the node's queue, in the order they were decided.
    fn collect(&mut self) {
        self.mirror.take_outputs(&mut self.outputs);
        self.advertiser.take_outputs(&mut self.outputs);
    }
}

/// The OCI error for content that could not be found: `BLOB_UNKNOWN` or `MANIFEST_UNKNOWN`
/// with `message`.
pub(crate) fn unknown(target: &Target, message: String) -> OciError {
    match target {
        Target::Blob(d) => OciError::blob_unknown(d, message),
        Target::ManifestDigest(d) => OciError::manifest_unknown(d.as_str(), message),
        Target::ManifestTag(t) => OciError::manifest_unknown(t, message),
    }
}
