//! The mirroring state machine: what to do with a request whose content is not on this node.
//!
//! For each such request the machine looks the key up (one shared DHT query per key, results
//! cached for a few seconds), picks the least-used peer (ties broken by the seeded RNG), starts
//! a fetch, hedges with further fetches at the observed p80/p85/p90 of time-to-first-byte, and
//! gives up within its budgets so that containerd always gets a status it can fall back from.
//! When the winning peer's body breaks mid-stream, it resumes from another peer with a `Range`
//! that starts where the client's body stopped; when nobody can continue it aborts the
//! connection rather than end a 200 with a short body.
//!
//! Blob bytes never pass through here: [`Output::Serve`] and [`Output::Continue`] tell the
//! adapter which fetch feeds which response, and the adapter reports back with
//! [`Mirror::handle_pipe_finished`] / [`Mirror::handle_pipe_interrupted`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::digest::Digest;
use crate::keys::Key;
use crate::range::ByteRange;

/// Identifies a client request; allocated by the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Identifies a fetch from a peer; allocated by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FetchId(pub u64);

/// Identifies a DHT lookup; allocated by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupId(pub u64);

/// The mirroring policy's numbers (SPEC.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// Longest wait for a first peer when nothing is in flight (`--mirror-resolve-timeout`).
    pub resolve_timeout: Duration,
    /// Providers asked for per lookup (`--mirror-resolve-retries`).
    pub resolve_count: usize,
    /// How long the providers found for a key are reused by later requests.
    pub lookup_cache_ttl: Duration,
    /// Manifest and HEAD requests end after this long.
    pub manifest_budget: Duration,
    /// Lower bound of the header budget (`max(2 × p90, this)`).
    pub min_header_budget: Duration,
    /// A peer that does not accept the connection within this long is skipped.
    pub dial_timeout: Duration,
    /// A body being relayed that delivers no byte for this long is treated as broken (and
    /// resumed from another peer): a stalled peer must not hang the client.
    pub stall_timeout: Duration,
    /// The time-to-first-byte estimate used before anything was observed.
    pub default_ttfb: Duration,
    /// Hedged fetches start at these percentiles of recent time-to-first-byte.
    pub hedge_percentiles: Vec<u8>,
    /// How many time-to-first-byte observations are kept.
    pub ttfb_window: usize,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            resolve_timeout: Duration::from_millis(20),
            resolve_count: 3,
            lookup_cache_ttl: Duration::from_secs(5),
            manifest_budget: Duration::from_secs(3),
            min_header_budget: Duration::from_millis(100),
            dial_timeout: Duration::from_millis(200),
            stall_timeout: Duration::from_secs(5),
            default_ttfb: Duration::from_millis(50),
            hedge_percentiles: vec![80, 85, 90],
            ttfb_window: 128,
        }
    }
}

/// A request the node decided to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRequest {
    /// The key to look up (tag key or digest key).
    pub key: Key,
    /// The digest the client asked for, when it asked by digest: a peer answering with another
    /// `Docker-Content-Digest` is rejected.
    pub digest: Option<Digest>,
    /// A manifest request (as opposed to a blob request).
    pub manifest: bool,
    /// A HEAD request.
    pub head: bool,
    /// The client's `Range`, when it sent one: a peer's partial answer must match it.
    pub range: Option<ByteRange>,
}

impl MirrorRequest {
    fn bounded(&self) -> bool {
        self.manifest || self.head
    }
}

/// What a peer answered, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    /// HTTP status.
    pub status: u16,
    /// The `Docker-Content-Digest` header, when present.
    pub digest: Option<String>,
    /// The `Content-Length` header, when present.
    pub content_length: Option<u64>,
    /// The parsed `Content-Range: bytes a-b/size` header, when present.
    pub content_range: Option<ContentRange>,
}

/// A `Content-Range: bytes start-end/size` value (inclusive end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
    /// The whole blob's size.
    pub size: u64,
}

/// Why a fetch failed, as reported by the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    /// The connection could not be made.
    Connect(String),
    /// The connection broke before the headers arrived.
    Broken(String),
}

/// A command for the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P> {
    /// Look up providers of `key`; report them with [`Mirror::handle_providers`] and the end of
    /// the query with [`Mirror::handle_lookup_finished`].
    Lookup {
        /// The lookup.
        id: LookupId,
        /// What to look up.
        key: Key,
        /// How many providers to ask for.
        count: usize,
    },
    /// Stop a lookup nobody waits for any more.
    CancelLookup {
        /// The lookup.
        id: LookupId,
    },
    /// Send the request to `peer`'s registry with `X-Spegel-Mirrored: true`.
    Fetch {
        /// The fetch.
        id: FetchId,
        /// The client request it serves.
        request: RequestId,
        /// The peer to ask.
        peer: P,
        /// `None`: forward the client's own `Range` (if any). `Some`: send
        /// `Range: bytes=start-end` instead (a resumed body).
        range: Option<(u64, u64)>,
    },
    /// Stop a fetch and drop its connection.
    CancelFetch {
        /// The fetch.
        id: FetchId,
    },
    /// Answer the client with this fetch's status, headers and body.
    Serve {
        /// The client request.
        request: RequestId,
        /// The fetch whose response to relay.
        fetch: FetchId,
    },
    /// Continue the client's interrupted body with this fetch's body.
    Continue {
        /// The client request.
        request: RequestId,
        /// The fetch whose body continues the response.
        fetch: FetchId,
    },
    /// Answer 404 with an OCI error whose message is `reason`.
    NotFound {
        /// The client request.
        request: RequestId,
        /// Why (`could not find peer for <key>`, `all <n> attempts failed for <key>`).
        reason: String,
        /// The same as a fixed label: [`crate::FailReason::NoPeer`] or
        /// [`crate::FailReason::AllAttemptsFailed`].
        cause: crate::FailReason,
    },
    /// Abort the client's connection: the body cannot be completed.
    Abort {
        /// The client request.
        request: RequestId,
    },
}

/// Why the machine wants to be woken up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutReason {
    /// A request waits for a first peer.
    Resolve,
    /// A hedged fetch is due.
    Hedge,
    /// A fetch has not connected in time.
    Dial,
    /// A fetch has not answered with headers in time.
    Headers,
    /// A manifest or HEAD request reaches its budget.
    Budget,
    /// A cached lookup expires.
    CacheExpiry,
}

/// Misuse of the machine by an adapter (an unknown or finished id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// The request id is already in use.
    #[error("request {0:?} already exists")]
    DuplicateRequest(RequestId),
    /// The request id is not known (finished or never started).
    #[error("unknown request {0:?}")]
    UnknownRequest(RequestId),
    /// The fetch id is not known (finished, cancelled or never started).
    #[error("unknown fetch {0:?}")]
    UnknownFetch(FetchId),
    /// The lookup id is not known.
    #[error("unknown lookup {0:?}")]
    UnknownLookup(LookupId),
}

#[derive(Debug)]
struct Lookup<P> {
    id: LookupId,
    providers: Vec<P>,
    finished_at: Option<Instant>,
    waiters: BTreeSet<RequestId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchState {
    Dialing {
        deadline: Instant,
    },
    Waiting {
        deadline: Instant,
        connected: Instant,
    },
    Serving,
}

#[derive(Debug)]
struct Fetch<P> {
    request: RequestId,
    peer: P,
    state: FetchState,
    /// For a resume: the exact range asked for.
    resume: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Looking for a first good response.
    Resolving,
    /// Relaying a body covering `span` (`[start, end]` of the blob; `None` when the body's
    /// extent is unknown, which makes it impossible to resume).
    Streaming {
        fetch: FetchId,
        span: Option<(u64, u64)>,
    },
    /// The body broke after `written` bytes; looking for a peer to continue.
    Resuming { start: u64, end: u64, written: u64 },
}

#[derive(Debug)]
struct Request<P> {
    req: MirrorRequest,
    started: Instant,
    phase: Phase,
    candidates: Vec<P>,
    tried: BTreeSet<P>,
    attempts: usize,
    in_flight: BTreeSet<FetchId>,
    first_fetch_at: Option<Instant>,
    /// Hedge thresholds passed since the first fetch.
    hedges_due: usize,
    /// Since when nothing has been in flight (for the resolve budget).
    idle_since: Instant,
    lookup_finished: bool,
}

/// The mirroring state machine. `P` is the peer type (`libp2p::PeerId` in the node, a small
/// integer in simulations).
#[derive(Debug)]
pub struct Mirror<P> {
    config: MirrorConfig,
    local: P,
    rng: SmallRng,
    lookups: BTreeMap<Key, Lookup<P>>,
    lookup_keys: BTreeMap<LookupId, Key>,
    requests: BTreeMap<RequestId, Request<P>>,
    fetches: BTreeMap<FetchId, Fetch<P>>,
    peer_load: BTreeMap<P, usize>,
    ttfb: VecDeque<Duration>,
    outputs: VecDeque<Output<P>>,
    next_fetch: u64,
    next_lookup: u64,
}

impl<P: Clone + Ord + fmt::Debug> Mirror<P> {
    /// A machine for the node whose own peer is `local` (never fetched from).
    pub fn new(config: MirrorConfig, local: P, seed: u64) -> Self {
        Mirror {
            config,
            local,
            rng: SmallRng::seed_from_u64(seed),
            lookups: BTreeMap::new(),
            lookup_keys: BTreeMap::new(),
            requests: BTreeMap::new(),
            fetches: BTreeMap::new(),
            peer_load: BTreeMap::new(),
            ttfb: VecDeque::new(),
            outputs: VecDeque::new(),
            next_fetch: 0,
            next_lookup: 0,
        }
    }

    // ---- getters ----

    /// The configuration.
    pub fn config(&self) -> &MirrorConfig {
        &self.config
    }

    /// Number of requests being mirrored.
    pub fn active_requests(&self) -> usize {
        self.requests.len()
    }

    /// Number of fetches in progress.
    pub fn active_fetches(&self) -> usize {
        self.fetches.len()
    }

    /// The current time-to-first-byte estimate at percentile `pct` (0–100).
    pub fn ttfb_percentile(&self, pct: u8) -> Duration {
        if self.ttfb.is_empty() {
            return self.config.default_ttfb;
        }
        let mut sorted: Vec<Duration> = self.ttfb.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest-rank percentile.
        let rank = (usize::from(pct.min(100)) * sorted.len()).div_ceil(100);
        sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
    }

    /// How long a connected fetch may wait for its headers: `max(2 × p90, min_header_budget)`.
    pub fn header_budget(&self) -> Duration {
        (self.ttfb_percentile(90) * 2).max(self.config.min_header_budget)
    }

    // ---- inputs ----

    /// A request to mirror.
    pub fn handle_request(
        &mut self,
        now: Instant,
        id: RequestId,
        req: MirrorRequest,
    ) -> Result<(), MirrorError> {
        if self.requests.contains_key(&id) {
            return Err(MirrorError::DuplicateRequest(id));
        }
        self.expire_cache(now);
        let key = req.key.clone();
        let mut request = Request {
            req,
            started: now,
            phase: Phase::Resolving,
            candidates: Vec::new(),
            tried: BTreeSet::new(),
            attempts: 0,
            in_flight: BTreeSet::new(),
            first_fetch_at: None,
            hedges_due: 0,
            idle_since: now,
            lookup_finished: false,
        };
        match self.lookups.get_mut(&key) {
            Some(lookup) => {
                for p in &lookup.providers {
                    if *p != self.local && !request.candidates.contains(p) {
                        request.candidates.push(p.clone());
                    }
                }
                request.lookup_finished = lookup.finished_at.is_some();
                lookup.waiters.insert(id);
            }
            None => {
                let lid = LookupId(self.next_lookup);
                self.next_lookup += 1;
                let mut waiters = BTreeSet::new();
                waiters.insert(id);
                self.lookups.insert(
                    key.clone(),
                    Lookup {
                        id: lid,
                        providers: Vec::new(),
                        finished_at: None,
                        waiters,
                    },
                );
                self.lookup_keys.insert(lid, key.clone());
                self.outputs.push_back(Output::Lookup {
                    id: lid,
                    key,
                    count: self.config.resolve_count,
                });
            }
        }
        self.requests.insert(id, request);
        self.pump(now, id);
        Ok(())
    }

    /// Providers found by a lookup (may be called several times per lookup).
    pub fn handle_providers(
        &mut self,
        now: Instant,
        id: LookupId,
        providers: Vec<P>,
    ) -> Result<(), MirrorError> {
        let key = self.lookup_key(id)?;
        let Some(lookup) = self.lookups.get_mut(&key) else {
            return Err(MirrorError::UnknownLookup(id));
        };
        let mut fresh = Vec::new();
        for p in providers {
            if p != self.local && !lookup.providers.contains(&p) {
                lookup.providers.push(p.clone());
                fresh.push(p);
            }
        }
        let waiters: Vec<RequestId> = lookup.waiters.iter().copied().collect();
        for rid in waiters {
            if let Some(r) = self.requests.get_mut(&rid) {
                for p in &fresh {
                    if !r.candidates.contains(p) {
                        r.candidates.push(p.clone());
                    }
                }
            }
            self.pump(now, rid);
        }
        Ok(())
    }

    /// A lookup finished (or failed): no more providers will come from it.
    pub fn handle_lookup_finished(
        &mut self,
        now: Instant,
        id: LookupId,
    ) -> Result<(), MirrorError> {
        let key = self.lookup_key(id)?;
        let Some(lookup) = self.lookups.get_mut(&key) else {
            return Err(MirrorError::UnknownLookup(id));
        };
        lookup.finished_at = Some(now);
        let waiters: Vec<RequestId> = lookup.waiters.iter().copied().collect();
        // Only found providers are worth remembering; a miss is asked again next time.
        if lookup.providers.is_empty() {
            self.lookups.remove(&key);
            self.lookup_keys.remove(&id);
        }
        for rid in waiters {
            if let Some(r) = self.requests.get_mut(&rid) {
                r.lookup_finished = true;
            }
            self.pump(now, rid);
        }
        Ok(())
    }

    /// The fetch's connection is up and the request was sent.
    pub fn handle_fetch_connected(&mut self, now: Instant, id: FetchId) -> Result<(), MirrorError> {
        let budget = self.header_budget();
        let fetch = self
            .fetches
            .get_mut(&id)
            .ok_or(MirrorError::UnknownFetch(id))?;
        if let FetchState::Dialing { .. } = fetch.state {
            fetch.state = FetchState::Waiting {
                deadline: now + budget,
                connected: now,
            };
        }
        Ok(())
    }

    /// The fetch failed before its headers arrived.
    pub fn handle_fetch_failed(
        &mut self,
        now: Instant,
        id: FetchId,
        _why: FetchFailure,
    ) -> Result<(), MirrorError> {
        let fetch = self.fetches.get(&id).ok_or(MirrorError::UnknownFetch(id))?;
        if fetch.state == FetchState::Serving {
            // A serving fetch breaks through `handle_pipe_interrupted`.
            return Ok(());
        }
        let rid = fetch.request;
        self.finish_fetch(now, id);
        self.pump(now, rid);
        Ok(())
    }

    /// The fetch's status and headers arrived.
    pub fn handle_fetch_responded(
        &mut self,
        now: Instant,
        id: FetchId,
        resp: FetchResponse,
    ) -> Result<(), MirrorError> {
        let fetch = self.fetches.get(&id).ok_or(MirrorError::UnknownFetch(id))?;
        let (rid, state, resume) = (fetch.request, fetch.state, fetch.resume);
        if let FetchState::Waiting { connected, .. } = state {
            self.observe_ttfb(now.saturating_duration_since(connected));
        }
        let Some(request) = self.requests.get(&rid) else {
            self.finish_fetch(now, id);
            return Ok(());
        };
        // Content asked for by digest must come with that digest: a peer that sends another
        // one, or none, is not trusted with the body.
        let digest_ok = match (&request.req.digest, &resp.digest) {
            (Some(want), Some(got)) => want.as_str() == got,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let accepted = match (request.phase, resume) {
            (Phase::Resolving, None) => match resp.status {
                200 => digest_ok,
                // A part must be exactly the part the client asked for.
                206 => {
                    digest_ok
                        && match (request.req.range, resp.content_range) {
                            (Some(asked), Some(cr)) => asked
                                .resolve(cr.size)
                                .is_ok_and(|r| r.start == cr.start && r.end == cr.end),
                            _ => false,
                        }
                }
                // The client's range is outside the blob: that answer is relayed, not retried.
                416 => request.req.range.is_some(),
                _ => false,
            },
            (
                Phase::Resuming {
                    start,
                    end,
                    written,
                },
                Some(range),
            ) => {
                digest_ok
                    && resp.status == 206
                    && range == (start + written, end)
                    && resp
                        .content_range
                        .is_some_and(|cr| cr.start == range.0 && cr.end == range.1)
            }
            _ => false,
        };
        if !accepted {
            self.finish_fetch(now, id);
            self.pump(now, rid);
            return Ok(());
        }
        let Some(request) = self.requests.get_mut(&rid) else {
            return Ok(());
        };
        match request.phase {
            Phase::Resolving => {
                let span = match (resp.status, resp.content_range, resp.content_length) {
                    (206, Some(cr), _) => Some((cr.start, cr.end)),
                    // Without a length (or with an empty body) there is nothing to resume.
                    (200, _, Some(len)) if len > 0 => Some((0, len - 1)),
                    _ => None,
                };
                request.phase = Phase::Streaming { fetch: id, span };
                let others: Vec<FetchId> = request
                    .in_flight
                    .iter()
                    .copied()
                    .filter(|f| *f != id)
                    .collect();
                self.mark_serving(id);
                for f in others {
                    self.cancel_fetch(now, f);
                }
                self.outputs.push_back(Output::Serve {
                    request: rid,
                    fetch: id,
                });
            }
            Phase::Resuming { start, end, .. } => {
                request.phase = Phase::Streaming {
                    fetch: id,
                    span: Some((start, end)),
                };
                self.mark_serving(id);
                self.outputs.push_back(Output::Continue {
                    request: rid,
                    fetch: id,
                });
            }
            Phase::Streaming { .. } => {}
        }
        Ok(())
    }

    /// The response to the client is complete.
    pub fn handle_pipe_finished(&mut self, now: Instant, id: RequestId) -> Result<(), MirrorError> {
        if !self.requests.contains_key(&id) {
            return Err(MirrorError::UnknownRequest(id));
        }
        self.end_request(now, id);
        Ok(())
    }

    /// The peer's body broke after the client received `written` bytes of the body in total
    /// (across every fetch that fed it).
    pub fn handle_pipe_interrupted(
        &mut self,
        now: Instant,
        id: RequestId,
        written: u64,
    ) -> Result<(), MirrorError> {
        let request = self
            .requests
            .get_mut(&id)
            .ok_or(MirrorError::UnknownRequest(id))?;
        let Phase::Streaming { fetch, span } = request.phase else {
            return Ok(());
        };
        let head = request.req.head;
        self.finish_fetch(now, fetch);
        match span {
            // Everything was delivered after all.
            Some((start, end)) if start.saturating_add(written) > end => {
                self.end_request(now, id);
            }
            Some((start, end)) if !head => {
                if let Some(request) = self.requests.get_mut(&id) {
                    request.phase = Phase::Resuming {
                        start,
                        end,
                        written,
                    };
                    request.idle_since = now;
                }
                self.pump(now, id);
            }
            // A body of unknown extent cannot be resumed.
            _ => {
                self.outputs.push_back(Output::Abort { request: id });
                self.end_request(now, id);
            }
        }
        Ok(())
    }

    /// The client went away: stop everything for this request.
    pub fn handle_request_closed(
        &mut self,
        now: Instant,
        id: RequestId,
    ) -> Result<(), MirrorError> {
        if !self.requests.contains_key(&id) {
            return Err(MirrorError::UnknownRequest(id));
        }
        self.end_request(now, id);
        Ok(())
    }

    /// Time passed. Early calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_cache(now);
        let expired: Vec<FetchId> = self
            .fetches
            .iter()
            .filter(|(_, f)| match f.state {
                FetchState::Dialing { deadline } | FetchState::Waiting { deadline, .. } => {
                    deadline <= now
                }
                FetchState::Serving => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for f in expired {
            self.cancel_fetch(now, f);
        }
        let budget = self.config.manifest_budget;
        let over_budget: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| {
                r.req.bounded() && matches!(r.phase, Phase::Resolving) && r.started + budget <= now
            })
            .map(|(id, _)| *id)
            .collect();
        for rid in over_budget {
            self.give_up(now, rid);
        }
        let all: Vec<RequestId> = self.requests.keys().copied().collect();
        for rid in all {
            self.pump(now, rid);
        }
    }

    // ---- outputs ----

    /// The next command for the adapter.
    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.outputs.pop_front()
    }

    /// When to call [`Mirror::handle_timeout`] next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, TimeoutReason)> {
        let mut best: Option<(Instant, TimeoutReason)> = None;
        let mut consider = |at: Instant, why: TimeoutReason| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, why));
            }
        };
        for f in self.fetches.values() {
            match f.state {
                FetchState::Dialing { deadline } => consider(deadline, TimeoutReason::Dial),
                FetchState::Waiting { deadline, .. } => consider(deadline, TimeoutReason::Headers),
                FetchState::Serving => {}
            }
        }
        for r in self.requests.values() {
            if r.req.bounded() && matches!(r.phase, Phase::Resolving) {
                consider(
                    r.started + self.config.manifest_budget,
                    TimeoutReason::Budget,
                );
            }
            if matches!(r.phase, Phase::Streaming { .. }) {
                continue;
            }
            if r.in_flight.is_empty() {
                consider(
                    r.idle_since + self.config.resolve_timeout,
                    TimeoutReason::Resolve,
                );
            } else if let Some(at) = self.next_hedge_at(r)
                && !self.untried(r).is_empty()
            {
                consider(at, TimeoutReason::Hedge);
            }
        }
        for l in self.lookups.values() {
            if let Some(done) = l.finished_at {
                consider(
                    done + self.config.lookup_cache_ttl,
                    TimeoutReason::CacheExpiry,
                );
            }
        }
        best
    }

    // ---- internals ----

    fn lookup_key(&self, id: LookupId) -> Result<Key, MirrorError> {
        self.lookup_keys
            .get(&id)
            .cloned()
            .ok_or(MirrorError::UnknownLookup(id))
    }

    fn observe_ttfb(&mut self, d: Duration) {
        if self.ttfb.len() >= self.config.ttfb_window.max(1) {
            self.ttfb.pop_front();
        }
        self.ttfb.push_back(d);
    }

    fn hedge_offsets(&self) -> Vec<Duration> {
        self.config
            .hedge_percentiles
            .iter()
            .map(|p| self.ttfb_percentile(*p))
            .collect()
    }

    /// How many fetches may run at once for `r` at `now`: one, plus one per hedge threshold
    /// passed since the first fetch started.
    fn allowed_in_flight(&self, r: &Request<P>, now: Instant) -> usize {
        match r.phase {
            Phase::Resolving => {
                let passed = r.first_fetch_at.map_or(0, |first| {
                    self.hedge_offsets()
                        .iter()
                        .filter(|o| first + **o <= now)
                        .count()
                });
                1 + passed.max(r.hedges_due)
            }
            // A resume is sequential: one continuation at a time.
            Phase::Resuming { .. } => 1,
            Phase::Streaming { .. } => 0,
        }
    }

    fn next_hedge_at(&self, r: &Request<P>) -> Option<Instant> {
        if !matches!(r.phase, Phase::Resolving) {
            return None;
        }
        let first = r.first_fetch_at?;
        let mut offsets = self.hedge_offsets();
        offsets.sort_unstable();
        offsets.get(r.hedges_due).map(|o| first + *o)
    }

    fn untried(&self, r: &Request<P>) -> Vec<P> {
        r.candidates
            .iter()
            .filter(|p| !r.tried.contains(*p))
            .cloned()
            .collect()
    }

    /// Starts what may start for request `rid`, and ends it when nothing is left to try.
    fn pump(&mut self, now: Instant, rid: RequestId) {
        loop {
            let Some(r) = self.requests.get(&rid) else {
                return;
            };
            if matches!(r.phase, Phase::Streaming { .. }) {
                return;
            }
            let allowed = self.allowed_in_flight(r, now);
            let untried = self.untried(r);
            if let Some(r) = self.requests.get_mut(&rid) {
                r.hedges_due = r.hedges_due.max(allowed - 1);
            }
            if untried.is_empty() || self.requests[&rid].in_flight.len() >= allowed {
                break;
            }
            let peer = self.choose(&untried);
            self.start_fetch(now, rid, peer);
        }
        let Some(r) = self.requests.get(&rid) else {
            return;
        };
        if !r.in_flight.is_empty() || !self.untried(r).is_empty() {
            return;
        }
        // Nothing in flight and nobody left to ask.
        if r.lookup_finished || r.idle_since + self.config.resolve_timeout <= now {
            self.give_up(now, rid);
        }
    }

    /// Least-used peer first; ties broken by the seeded RNG.
    fn choose(&mut self, untried: &[P]) -> P {
        let load = |p: &P| self.peer_load.get(p).copied().unwrap_or(0);
        let min = untried.iter().map(load).min().unwrap_or(0);
        let least: Vec<&P> = untried.iter().filter(|p| load(p) == min).collect();
        let pick = if least.len() > 1 {
            self.rng.random_range(0..least.len())
        } else {
            0
        };
        least[pick].clone()
    }

    fn start_fetch(&mut self, now: Instant, rid: RequestId, peer: P) {
        let Some(r) = self.requests.get_mut(&rid) else {
            return;
        };
        let id = FetchId(self.next_fetch);
        self.next_fetch += 1;
        r.tried.insert(peer.clone());
        r.attempts += 1;
        r.in_flight.insert(id);
        let range = match r.phase {
            Phase::Resuming {
                start,
                end,
                written,
                ..
            } => Some((start + written, end)),
            _ => None,
        };
        if r.first_fetch_at.is_none() && matches!(r.phase, Phase::Resolving) {
            r.first_fetch_at = Some(now);
        }
        *self.peer_load.entry(peer.clone()).or_insert(0) += 1;
        self.fetches.insert(
            id,
            Fetch {
                request: rid,
                peer: peer.clone(),
                state: FetchState::Dialing {
                    deadline: now + self.config.dial_timeout,
                },
                resume: range,
            },
        );
        self.outputs.push_back(Output::Fetch {
            id,
            request: rid,
            peer,
            range,
        });
    }

    fn mark_serving(&mut self, id: FetchId) {
        if let Some(f) = self.fetches.get_mut(&id) {
            f.state = FetchState::Serving;
        }
    }

    /// Forgets a fetch (finished or failed) without telling the adapter.
    fn finish_fetch(&mut self, now: Instant, id: FetchId) {
        let Some(f) = self.fetches.remove(&id) else {
            return;
        };
        if let Some(load) = self.peer_load.get_mut(&f.peer) {
            *load = load.saturating_sub(1);
            if *load == 0 {
                self.peer_load.remove(&f.peer);
            }
        }
        if let Some(r) = self.requests.get_mut(&f.request) {
            r.in_flight.remove(&id);
            if r.in_flight.is_empty() {
                r.idle_since = now;
            }
        }
    }

    fn cancel_fetch(&mut self, now: Instant, id: FetchId) {
        if self.fetches.contains_key(&id) {
            self.finish_fetch(now, id);
            self.outputs.push_back(Output::CancelFetch { id });
        }
    }

    fn give_up(&mut self, now: Instant, rid: RequestId) {
        let Some(r) = self.requests.get(&rid) else {
            return;
        };
        match r.phase {
            Phase::Resuming { .. } | Phase::Streaming { .. } => {
                self.outputs.push_back(Output::Abort { request: rid });
            }
            Phase::Resolving => {
                let key = r.req.key.as_str();
                let (reason, cause) = if r.attempts == 0 {
                    (
                        format!("could not find peer for {key}"),
                        crate::FailReason::NoPeer,
                    )
                } else {
                    (
                        format!("all {} attempts failed for {key}", r.attempts),
                        crate::FailReason::AllAttemptsFailed,
                    )
                };
                self.outputs.push_back(Output::NotFound {
                    request: rid,
                    reason,
                    cause,
                });
            }
        }
        self.end_request(now, rid);
    }

    fn end_request(&mut self, now: Instant, rid: RequestId) {
        let Some(r) = self.requests.remove(&rid) else {
            return;
        };
        for f in r.in_flight.iter().copied() {
            let serving = self
                .fetches
                .get(&f)
                .is_some_and(|x| x.state == FetchState::Serving);
            if serving {
                self.finish_fetch(now, f);
            } else {
                self.cancel_fetch(now, f);
            }
        }
        if let Some(lookup) = self.lookups.get_mut(&r.req.key) {
            lookup.waiters.remove(&rid);
            if lookup.waiters.is_empty() && lookup.finished_at.is_none() {
                let id = lookup.id;
                self.lookups.remove(&r.req.key);
                self.lookup_keys.remove(&id);
                self.outputs.push_back(Output::CancelLookup { id });
            }
        }
    }

    fn expire_cache(&mut self, now: Instant) {
        let ttl = self.config.lookup_cache_ttl;
        let expired: Vec<Key> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.finished_at.is_some_and(|t| t + ttl <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(l) = self.lookups.remove(&k) {
                self.lookup_keys.remove(&l.id);
            }
        }
    }
}

#[cfg(test)]
// A test picks any origin for its simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SELF: u32 = 0;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(m: &mut Mirror<u32>) -> Vec<Output<u32>> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn blob_req(key: &str) -> MirrorRequest {
        let digest = Digest::sha256_of(key.as_bytes());
        MirrorRequest {
            key: Key::digest(&digest),
            digest: Some(digest),
            manifest: false,
            head: false,
            range: None,
        }
    }

    fn ok_200(req: &MirrorRequest, len: u64) -> FetchResponse {
        FetchResponse {
            status: 200,
            digest: req.digest.as_ref().map(|d| d.to_string()),
            content_length: Some(len),
            content_range: None,
        }
    }

    fn lookup_id(outs: &[Output<u32>]) -> LookupId {
        outs.iter()
            .find_map(|o| match o {
                Output::Lookup { id, .. } => Some(*id),
                _ => None,
            })
            .expect("a lookup")
    }

    type Started = (FetchId, u32, Option<(u64, u64)>);

    fn fetches(outs: &[Output<u32>]) -> Vec<Started> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Fetch {
                    id, peer, range, ..
                } => Some((*id, *peer, *range)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn serves_from_a_peer_and_never_from_itself() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 1);
        let req = blob_req("a");
        m.handle_request(t0, RequestId(1), req.clone()).unwrap();
        let outs = drain(&mut m);
        let lid = lookup_id(&outs);
        assert!(matches!(outs[0], Output::Lookup { count: 3, .. }));
        m.handle_providers(t0, lid, vec![SELF, 7]).unwrap();
        let outs = drain(&mut m);
        let f = fetches(&outs);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1, 7, "never self");
        m.handle_fetch_connected(t0 + ms(1), f[0].0).unwrap();
        m.handle_fetch_responded(t0 + ms(3), f[0].0, ok_200(&req, 10))
            .unwrap();
        assert_eq!(
            drain(&mut m),
            vec![Output::Serve {
                request: RequestId(1),
                fetch: f[0].0
            }]
        );
        m.handle_pipe_finished(t0 + ms(5), RequestId(1)).unwrap();
        assert_eq!(m.active_requests(), 0);
        assert_eq!(m.active_fetches(), 0);
        assert_eq!(m.ttfb_percentile(90), ms(2));
    }

    #[test]
    fn only_self_is_not_found() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 1);
        let req = blob_req("a");
        m.handle_request(t0, RequestId(1), req.clone()).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![SELF]).unwrap();
        m.handle_lookup_finished(t0 + ms(2), lid).unwrap();
        let outs = drain(&mut m);
        assert_eq!(
            outs,
            vec![Output::NotFound {
                request: RequestId(1),
                reason: format!("could not find peer for {}", req.key),
                cause: crate::FailReason::NoPeer,
            }]
        );
    }

    #[test]
    fn resolve_timeout_without_peers() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 1);
        m.handle_request(t0, RequestId(1), blob_req("a")).unwrap();
        let lid = lookup_id(&drain(&mut m));
        let (at, why) = m.poll_timeout().unwrap();
        assert_eq!((at, why), (t0 + ms(20), TimeoutReason::Resolve));
        m.handle_timeout(t0 + ms(19));
        assert!(drain(&mut m).is_empty(), "early timeouts are harmless");
        m.handle_timeout(t0 + ms(20));
        let outs = drain(&mut m);
        assert!(matches!(outs[0], Output::NotFound { .. }));
        assert_eq!(outs[1], Output::CancelLookup { id: lid });
        assert!(m.poll_timeout().is_none());
    }

    #[test]
    fn lookups_are_shared_and_cached() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 1);
        let req = blob_req("a");
        m.handle_request(t0, RequestId(1), req.clone()).unwrap();
        m.handle_request(t0, RequestId(2), req.clone()).unwrap();
        let outs = drain(&mut m);
        let lookups = outs
            .iter()
            .filter(|o| matches!(o, Output::Lookup { .. }))
            .count();
        assert_eq!(lookups, 1);
        let lid = lookup_id(&outs);
        m.handle_providers(t0 + ms(1), lid, vec![5]).unwrap();
        m.handle_lookup_finished(t0 + ms(2), lid).unwrap();
        let f = fetches(&drain(&mut m));
        assert_eq!(f.len(), 2, "both requests fetch");
        for (id, _, _) in &f {
            m.handle_fetch_failed(t0 + ms(3), *id, FetchFailure::Connect("refused".into()))
                .unwrap();
        }
        let outs = drain(&mut m);
        assert!(outs.iter().all(
            |o| matches!(o, Output::NotFound { reason, .. } if reason.starts_with("all 1 attempts failed"))
        ));
        // Within 5 s the providers are reused without a lookup.
        m.handle_request(t0 + ms(4000), RequestId(3), req.clone())
            .unwrap();
        let outs = drain(&mut m);
        assert!(outs.iter().all(|o| !matches!(o, Output::Lookup { .. })));
        assert_eq!(fetches(&outs).len(), 1);
        m.handle_request_closed(t0 + ms(4001), RequestId(3))
            .unwrap();
        drain(&mut m);
        // After 5 s, a new lookup.
        m.handle_request(t0 + ms(5003), RequestId(4), req).unwrap();
        let outs = drain(&mut m);
        assert!(outs.iter().any(|o| matches!(o, Output::Lookup { .. })));
    }

    #[test]
    fn hedges_at_the_observed_percentiles() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 3);
        // Observe 100 fetches with ttfb 1..=100 ms.
        for i in 1..=100u64 {
            let req = blob_req(&format!("warm{i}"));
            let rid = RequestId(1000 + i);
            let t = t0 + ms(i * 1000);
            m.handle_request(t, rid, req.clone()).unwrap();
            let lid = lookup_id(&drain(&mut m));
            m.handle_providers(t, lid, vec![1]).unwrap();
            let f = fetches(&drain(&mut m))[0].0;
            m.handle_fetch_connected(t, f).unwrap();
            m.handle_fetch_responded(t + ms(i), f, ok_200(&req, 1))
                .unwrap();
            m.handle_pipe_finished(t + ms(i), rid).unwrap();
            drain(&mut m);
        }
        assert_eq!(m.ttfb_percentile(80), ms(80));
        assert_eq!(m.ttfb_percentile(90), ms(90));
        assert_eq!(m.header_budget(), ms(180));
        let t1 = t0 + ms(500_000);
        let req = blob_req("hedged");
        m.handle_request(t1, RequestId(1), req.clone()).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t1, lid, vec![1, 2, 3, 4, 5]).unwrap();
        let first = fetches(&drain(&mut m));
        assert_eq!(first.len(), 1);
        m.handle_fetch_connected(t1 + ms(1), first[0].0).unwrap();
        let mut starts = vec![];
        let mut now = t1;
        while let Some((at, why)) = m.poll_timeout() {
            if at > t1 + ms(100) {
                break;
            }
            assert_eq!(why, TimeoutReason::Hedge);
            now = at;
            m.handle_timeout(now);
            for f in fetches(&drain(&mut m)) {
                starts.push(((now - t1).as_millis(), f.1));
                m.handle_fetch_connected(now, f.0).unwrap();
            }
        }
        assert_eq!(
            starts.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![80, 85, 90]
        );
        let peers: BTreeSet<u32> = starts.iter().map(|s| s.1).chain([first[0].1]).collect();
        assert_eq!(peers.len(), 4, "each hedge goes to another peer");
        // The second hedge answers first: it wins, the others are cancelled.
        let winner = FetchId(first[0].0.0 + 2);
        m.handle_fetch_responded(now + ms(1), winner, ok_200(&req, 5))
            .unwrap();
        let outs = drain(&mut m);
        assert_eq!(
            outs.iter()
                .filter(|o| matches!(o, Output::CancelFetch { .. }))
                .count(),
            3
        );
        assert!(outs.contains(&Output::Serve {
            request: RequestId(1),
            fetch: winner
        }));
        assert_eq!(m.active_fetches(), 1);
    }

    #[test]
    fn default_hedge_is_50ms_and_dial_budget_skips_dead_peers() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 3);
        m.handle_request(t0, RequestId(1), blob_req("x")).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![1, 2]).unwrap();
        let first = fetches(&drain(&mut m));
        assert_eq!(m.poll_timeout(), Some((t0 + ms(50), TimeoutReason::Hedge)));
        m.handle_timeout(t0 + ms(50));
        let second = fetches(&drain(&mut m));
        assert_eq!(second.len(), 1);
        assert_ne!(first[0].1, second[0].1);
        // Neither connects: both are dropped at their dial deadline and the request ends 404
        // once the lookup is over.
        m.handle_lookup_finished(t0 + ms(60), lid).unwrap();
        assert_eq!(m.poll_timeout(), Some((t0 + ms(200), TimeoutReason::Dial)));
        m.handle_timeout(t0 + ms(200));
        let outs = drain(&mut m);
        assert!(outs.contains(&Output::CancelFetch { id: first[0].0 }));
        m.handle_timeout(t0 + ms(250));
        let outs = drain(&mut m);
        assert!(outs.contains(&Output::CancelFetch { id: second[0].0 }));
        assert!(outs.iter().any(
            |o| matches!(o, Output::NotFound { reason, .. } if reason.starts_with("all 2 attempts failed"))
        ));
    }

    #[test]
    fn header_budget_and_manifest_budget() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 3);
        let req = MirrorRequest {
            key: Key::tag("127.0.0.1:5000", "test/small", "v1"),
            digest: None,
            manifest: true,
            head: true,
            range: None,
        };
        m.handle_request(t0, RequestId(1), req).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![1]).unwrap();
        let f = fetches(&drain(&mut m))[0].0;
        m.handle_fetch_connected(t0 + ms(5), f).unwrap();
        assert_eq!(
            m.poll_timeout(),
            Some((t0 + ms(105), TimeoutReason::Headers))
        );
        m.handle_timeout(t0 + ms(105));
        assert!(drain(&mut m).contains(&Output::CancelFetch { id: f }));
        // The lookup never finishes and no peer comes: the resolve budget ends it.
        m.handle_timeout(t0 + ms(125));
        let outs = drain(&mut m);
        assert!(matches!(outs[0], Output::NotFound { .. }), "{outs:?}");

        // A slow trickle of peers that accept but never answer: the 3 s budget ends it.
        let req = MirrorRequest {
            key: Key::tag("127.0.0.1:5000", "test/small", "v2"),
            digest: None,
            manifest: true,
            head: false,
            range: None,
        };
        let t1 = t0 + ms(10_000);
        m.handle_request(t1, RequestId(2), req).unwrap();
        let lid = lookup_id(&drain(&mut m));
        let mut now = t1;
        let mut peer = 100;
        let mut ended = None;
        for _ in 0..1000 {
            peer += 1;
            m.handle_providers(now, lid, vec![peer]).unwrap();
            for f in fetches(&drain(&mut m)) {
                m.handle_fetch_connected(now, f.0).unwrap();
            }
            now += ms(10);
            m.handle_timeout(now);
            if drain(&mut m)
                .iter()
                .any(|o| matches!(o, Output::NotFound { .. }))
            {
                ended = Some(now - t1);
                break;
            }
        }
        assert_eq!(ended, Some(ms(3000)));
    }

    #[test]
    fn rejects_a_peer_with_another_digest() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
        let req = blob_req("d");
        m.handle_request(t0, RequestId(1), req.clone()).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![1, 2]).unwrap();
        let f = fetches(&drain(&mut m));
        let mut lie = ok_200(&req, 4);
        lie.digest = Some(Digest::sha256_of(b"other").to_string());
        m.handle_fetch_connected(t0, f[0].0).unwrap();
        m.handle_fetch_responded(t0 + ms(1), f[0].0, lie).unwrap();
        let outs = drain(&mut m);
        let next = fetches(&outs);
        assert_eq!(next.len(), 1, "the next peer is tried: {outs:?}");
        assert_ne!(next[0].1, f[0].1);
        assert!(!outs.iter().any(|o| matches!(o, Output::Serve { .. })));
    }

    #[test]
    fn peer_answers_must_match_what_was_asked() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
        let mut req = blob_req("strict");
        req.range = Some(ByteRange::FromTo { start: 10, end: 19 });
        m.handle_request(t0, RequestId(1), req.clone()).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![1, 2, 3, 4]).unwrap();
        m.handle_lookup_finished(t0, lid).unwrap();
        let digest = req.digest.as_ref().map(|d| d.to_string());
        let part = |start, end| FetchResponse {
            status: 206,
            digest: digest.clone(),
            content_length: Some(end - start + 1),
            content_range: Some(ContentRange {
                start,
                end,
                size: 100,
            }),
        };
        // No Docker-Content-Digest for a digest request: not trusted.
        let f = fetches(&drain(&mut m))[0].0;
        let mut anonymous = part(10, 19);
        anonymous.digest = None;
        m.handle_fetch_responded(t0, f, anonymous).unwrap();
        let out = drain(&mut m);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Serve { .. })),
            "{out:?}"
        );
        // Another part than the one asked for: not relayed.
        let f = fetches(&out)[0].0;
        m.handle_fetch_responded(t0, f, part(0, 9)).unwrap();
        let out = drain(&mut m);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Serve { .. })),
            "{out:?}"
        );
        // The right part is.
        let f = fetches(&out)[0].0;
        m.handle_fetch_responded(t0, f, part(10, 19)).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![Output::Serve {
                request: RequestId(1),
                fetch: f
            }]
        );
    }

    #[test]
    fn an_unsatisfiable_range_is_relayed_not_retried() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
        let mut req = blob_req("short");
        req.range = Some(ByteRange::From { start: 1000 });
        m.handle_request(t0, RequestId(1), req).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![1, 2]).unwrap();
        let f = fetches(&drain(&mut m))[0].0;
        let too_far = FetchResponse {
            status: 416,
            digest: None,
            content_length: Some(0),
            content_range: None,
        };
        m.handle_fetch_responded(t0, f, too_far).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![Output::Serve {
                request: RequestId(1),
                fetch: f
            }]
        );
    }

    #[test]
    fn resumes_a_broken_body_from_another_peer() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
        let req = blob_req("big");
        m.handle_request(t0, RequestId(1), req.clone()).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![1, 2, 3]).unwrap();
        m.handle_lookup_finished(t0, lid).unwrap();
        let f = fetches(&drain(&mut m))[0];
        m.handle_fetch_connected(t0, f.0).unwrap();
        m.handle_fetch_responded(t0 + ms(1), f.0, ok_200(&req, 1000))
            .unwrap();
        drain(&mut m);
        m.handle_pipe_interrupted(t0 + ms(10), RequestId(1), 400)
            .unwrap();
        let r = fetches(&drain(&mut m));
        assert_eq!(r.len(), 1);
        assert_ne!(r[0].1, f.1);
        assert_eq!(r[0].2, Some((400, 999)));
        // A peer that answers with the wrong range is not used.
        m.handle_fetch_connected(t0 + ms(11), r[0].0).unwrap();
        let wrong = FetchResponse {
            status: 206,
            digest: None,
            content_length: Some(1000),
            content_range: Some(ContentRange {
                start: 0,
                end: 999,
                size: 1000,
            }),
        };
        m.handle_fetch_responded(t0 + ms(12), r[0].0, wrong)
            .unwrap();
        let r2 = fetches(&drain(&mut m));
        assert_eq!(r2.len(), 1);
        assert_eq!(r2[0].2, Some((400, 999)));
        m.handle_fetch_connected(t0 + ms(13), r2[0].0).unwrap();
        let right = FetchResponse {
            status: 206,
            digest: req.digest.as_ref().map(|d| d.to_string()),
            content_length: Some(600),
            content_range: Some(ContentRange {
                start: 400,
                end: 999,
                size: 1000,
            }),
        };
        m.handle_fetch_responded(t0 + ms(14), r2[0].0, right)
            .unwrap();
        assert_eq!(
            drain(&mut m),
            vec![Output::Continue {
                request: RequestId(1),
                fetch: r2[0].0
            }]
        );
        // It breaks again with no peer left: the connection is aborted, never a short 200.
        m.handle_pipe_interrupted(t0 + ms(20), RequestId(1), 700)
            .unwrap();
        let outs = drain(&mut m);
        assert_eq!(
            outs,
            vec![Output::Abort {
                request: RequestId(1)
            }]
        );
        assert_eq!(m.active_requests(), 0);
        assert_eq!(m.active_fetches(), 0);
    }

    #[test]
    fn resume_of_a_client_range_keeps_its_end() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
        let mut req = blob_req("ranged");
        req.range = Some(ByteRange::FromTo {
            start: 100,
            end: 199,
        });
        m.handle_request(t0, RequestId(1), req.clone()).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![1, 2]).unwrap();
        let f = fetches(&drain(&mut m))[0];
        assert_eq!(f.2, None, "the first fetch forwards the client's Range");
        let partial = FetchResponse {
            status: 206,
            digest: req.digest.as_ref().map(|d| d.to_string()),
            content_length: Some(100),
            content_range: Some(ContentRange {
                start: 100,
                end: 199,
                size: 1000,
            }),
        };
        m.handle_fetch_responded(t0, f.0, partial).unwrap();
        drain(&mut m);
        m.handle_pipe_interrupted(t0, RequestId(1), 30).unwrap();
        assert_eq!(fetches(&drain(&mut m))[0].2, Some((130, 199)));
    }

    #[test]
    fn least_used_peer_first() {
        let t0 = Instant::now();
        let mut m = Mirror::new(MirrorConfig::default(), SELF, 5);
        // Request 1 occupies peer 1 or 2; request 2 must pick the other one.
        m.handle_request(t0, RequestId(1), blob_req("k")).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t0, lid, vec![1, 2]).unwrap();
        let a = fetches(&drain(&mut m))[0].1;
        m.handle_request(t0, RequestId(2), blob_req("k")).unwrap();
        let b = fetches(&drain(&mut m))[0].1;
        assert_ne!(a, b);
    }

    /// Random adapter behaviour: any sequence of inputs, never a panic, every request ends,
    /// and the same seed gives the same trace.
    #[derive(Debug, Clone)]
    enum Step {
        Request(u8, bool, bool),
        Providers(u8, Vec<u8>),
        LookupDone(u8),
        Connected(u8),
        Responded(u8, u16, bool, Option<(u64, u64)>),
        Failed(u8),
        PipeFinished(u8),
        PipeInterrupted(u8, u64),
        Closed(u8),
        Advance(u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6, any::<bool>(), any::<bool>()).prop_map(|(a, b, c)| Step::Request(a, b, c)),
            (0u8..6, proptest::collection::vec(0u8..8, 0..4))
                .prop_map(|(a, b)| Step::Providers(a, b)),
            (0u8..6).prop_map(Step::LookupDone),
            (0u8..12).prop_map(Step::Connected),
            (
                0u8..12,
                prop_oneof![Just(200u16), Just(206), Just(404), Just(500)],
                any::<bool>(),
                proptest::option::of((0u64..2000, 0u64..2000))
            )
                .prop_map(|(a, b, c, d)| Step::Responded(a, b, c, d)),
            (0u8..12).prop_map(Step::Failed),
            (0u8..6).prop_map(Step::PipeFinished),
            (0u8..6, 0u64..2000).prop_map(|(a, b)| Step::PipeInterrupted(a, b)),
            (0u8..6).prop_map(Step::Closed),
            (0u16..4000).prop_map(Step::Advance),
        ]
    }

    type Run = (Vec<Output<u32>>, Mirror<u32>, Instant);

    fn run(seed: u64, steps: &[Step]) -> Run {
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = Mirror::new(MirrorConfig::default(), SELF, seed);
        let mut trace = Vec::new();
        for s in steps {
            let _ = match s.clone() {
                Step::Request(r, manifest, head) => {
                    let mut req = blob_req(&format!("k{}", r % 3));
                    req.manifest = manifest;
                    req.head = head;
                    m.handle_request(now, RequestId(r.into()), req).map(|_| ())
                }
                Step::Providers(l, ps) => m.handle_providers(
                    now,
                    LookupId(l.into()),
                    ps.into_iter().map(u32::from).collect(),
                ),
                Step::LookupDone(l) => m.handle_lookup_finished(now, LookupId(l.into())),
                Step::Connected(f) => m.handle_fetch_connected(now, FetchId(f.into())),
                Step::Responded(f, status, good, range) => {
                    let resp = FetchResponse {
                        status,
                        digest: (!good).then(|| "sha256:bad".to_string()),
                        content_length: Some(1000),
                        content_range: range.map(|(a, b)| ContentRange {
                            start: a.min(b),
                            end: a.max(b),
                            size: 2000,
                        }),
                    };
                    m.handle_fetch_responded(now, FetchId(f.into()), resp)
                }
                Step::Failed(f) => {
                    m.handle_fetch_failed(now, FetchId(f.into()), FetchFailure::Broken("x".into()))
                }
                Step::PipeFinished(r) => m.handle_pipe_finished(now, RequestId(r.into())),
                Step::PipeInterrupted(r, w) => {
                    m.handle_pipe_interrupted(now, RequestId(r.into()), w)
                }
                Step::Closed(r) => m.handle_request_closed(now, RequestId(r.into())),
                Step::Advance(d) => {
                    now += ms(d.into());
                    m.handle_timeout(now);
                    Ok(())
                }
            };
            trace.extend(std::iter::from_fn(|| m.poll_output()));
            if let Some((at, _)) = m.poll_timeout() {
                // Timers are never in the past once handled.
                if at <= now {
                    m.handle_timeout(now);
                    trace.extend(std::iter::from_fn(|| m.poll_output()));
                }
            }
        }
        (trace, m, now)
    }

    proptest! {
        #[test]
        fn any_input_sequence_is_safe_and_deterministic(
            seed in any::<u64>(),
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            let (a, mut m, mut now) = run(seed, &steps);
            let (b, _, _) = run(seed, &steps);
            prop_assert_eq!(&a, &b);
            for o in &a {
                if let Output::Fetch { peer, .. } = o {
                    prop_assert_ne!(*peer, SELF);
                }
            }
            // With no more input, every request that is not streaming ends within the budgets.
            for _ in 0..100 {
                match m.poll_timeout() {
                    Some((at, _)) => {
                        now = now.max(at);
                        m.handle_timeout(now);
                        while m.poll_output().is_some() {}
                    }
                    None => break,
                }
            }
            prop_assert!(m.poll_timeout().is_none(), "timers left: {:?}", m.poll_timeout());
        }
    }
}
