//! Fetches: which peer next, at which address, when to hedge (the observed time-to-first-byte
//! percentiles), and whether a peer's answer is good enough to relay.
//!
//! Peer choice: among the providers this request may still ask, those it has used the fewest
//! addresses of come first (a fresh peer before a second address of one that could not be
//! reached), then the least-used peer of the node, then the seeded RNG. Address choice: a
//! peer's addresses are dialled in the order the lookup reported them; a connection that fails
//! ([`FetchFailure::Connect`], or no connection within the dial budget) makes the peer
//! eligible again at its next address, while a peer that answered, or whose connection broke
//! after it was made, is not asked again for that request.

use std::fmt;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{
    Fetch, FetchFailure, FetchId, FetchRange, FetchResponse, FetchState, Mirror, MirrorError, Note,
    Output, Phase, Request, RequestId, Watch, WatchState,
};
use crate::manifest::MAX_MANIFEST_SIZE;

/// Why a peer's answer is not relayed. Every reason has the same effect: the peer counts as
/// failed for this request and is not asked again for it; the next peer, a hedge or the 404
/// follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A status that is not relayed (only 200, 206 and, to a ranged request, 416 are).
    Status(u16),
    /// Content asked for by digest came with another `Docker-Content-Digest`, or none.
    Digest,
    /// A 206 for another part than the one asked for, or without a `Content-Range`.
    Range,
    /// A body (a 200 or 206 to a GET) without a `Content-Length`: it could not be bounded.
    NoLength,
    /// A manifest larger than [`MAX_MANIFEST_SIZE`] (by `Content-Length`, or by the size in
    /// its `Content-Range`).
    ManifestTooLarge(u64),
    /// A 206 whose `Content-Length` is not the length of its `Content-Range`.
    LengthNotRange {
        /// The `Content-Length`.
        length: u64,
        /// `end - start + 1` of the `Content-Range`.
        range: u64,
    },
    /// The content's size (a 200's `Content-Length`, a 206's `Content-Range` size) is not
    /// the size this request already knows for it.
    SizeNotKnown {
        /// The size the answer claims.
        claimed: u64,
        /// The size known from the answer being continued.
        known: u64,
    },
}

impl Rejection {
    /// The reason as a fixed label (`speil_peer_answers_rejected_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Status(_) => "status",
            Rejection::Digest => "digest",
            Rejection::Range => "range",
            Rejection::NoLength => "no_length",
            Rejection::ManifestTooLarge(_) => "manifest_too_large",
            Rejection::LengthNotRange { .. } => "length_not_range",
            Rejection::SizeNotKnown { .. } => "size_not_known",
        }
    }

    /// Whether this is a peer that no longer has the content (`404`), as happens when it
    /// removed an image after announcing it: expected, unlike every other reason.
    pub fn is_gone(&self) -> bool {
        *self == Rejection::Status(404)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rejection::Status(s) => write!(f, "status {s} is not relayed"),
            Rejection::Digest => f.write_str("Docker-Content-Digest is not the digest asked for"),
            Rejection::Range => f.write_str("Content-Range is not the range asked for"),
            Rejection::NoLength => f.write_str("a body without Content-Length"),
            Rejection::ManifestTooLarge(n) => write!(
                f,
                "a manifest of {n} bytes, larger than a manifest may be ({MAX_MANIFEST_SIZE})"
            ),
            Rejection::LengthNotRange { length, range } => write!(
                f,
                "Content-Length {length} is not the {range} bytes of its Content-Range"
            ),
            Rejection::SizeNotKnown { claimed, known } => write!(
                f,
                "a size of {claimed} bytes, not the {known} bytes already known for the digest"
            ),
        }
    }
}

/// Whether the answer `resp` to a fetch of `request` may be relayed (`resume`: the exact range
/// a continuation asked for).
pub(super) fn judge<P>(
    request: &Request<P>,
    resume: Option<(u64, u64)>,
    resp: &FetchResponse,
) -> Result<(), Rejection> {
    let req = &request.req;
    let body = matches!(resp.status, 200 | 206);
    // Content asked for by digest must come with that digest: a peer that sends another
    // one, or none, is not trusted with the body.
    let digest_ok = match (&req.digest, &resp.digest) {
        (Some(want), Some(got)) => want.as_str() == got,
        (Some(_), None) => false,
        (None, _) => true,
    };
    match (request.phase, resume, resp.status) {
        (Phase::Resolving, None, 200 | 206) => {}
        // The client's range is outside the blob: that answer is relayed, not retried.
        (Phase::Resolving, None, 416) if req.range.is_some() => return Ok(()),
        (Phase::Resuming { .. }, Some(_), 206) => {}
        (_, _, status) => return Err(Rejection::Status(status)),
    }
    if !digest_ok {
        return Err(Rejection::Digest);
    }
    // A part must be exactly the part the client asked for (a continuation: the part it
    // asked for).
    if resp.status == 206 {
        let cr = resp.content_range.ok_or(Rejection::Range)?;
        let exact = match (request.phase, resume) {
            (
                Phase::Resuming {
                    start,
                    end,
                    written,
                },
                Some(range),
            ) => range == (start + written, end) && (cr.start, cr.end) == range,
            _ => req.range.is_some_and(|asked| {
                asked
                    .resolve(cr.size)
                    .is_ok_and(|r| r.start == cr.start && r.end == cr.end)
            }),
        };
        if !exact {
            return Err(Rejection::Range);
        }
    }
    // The size the answer claims for the whole content.
    let size = match (resp.status, resp.content_range) {
        (206, Some(cr)) => Some(cr.size),
        _ => resp.content_length,
    };
    // A manifest obeys the cap whether it is relayed or only described (HEAD), as a local
    // one does.
    if req.manifest {
        let largest = size.max(resp.content_length).unwrap_or(0);
        if largest > MAX_MANIFEST_SIZE as u64 {
            return Err(Rejection::ManifestTooLarge(largest));
        }
    }
    // A HEAD answer relays no body: its headers are taken as they come.
    if req.head || !body {
        return Ok(());
    }
    let length = resp.content_length.ok_or(Rejection::NoLength)?;
    if let (206, Some(cr)) = (resp.status, resp.content_range) {
        let range = cr.end.saturating_sub(cr.start).saturating_add(1);
        if length != range {
            return Err(Rejection::LengthNotRange { length, range });
        }
    }
    if let (Some(known), Some(claimed)) = (request.size, size)
        && known != claimed
    {
        return Err(Rejection::SizeNotKnown { claimed, known });
    }
    Ok(())
}

impl<P: Clone + Ord + fmt::Debug> Mirror<P> {
    /// The fetch's connection is up and the request was sent.
    pub(crate) fn handle_fetch_connected(
        &mut self,
        now: Instant,
        id: FetchId,
    ) -> Result<(), MirrorError> {
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
    pub(crate) fn handle_fetch_failed(
        &mut self,
        now: Instant,
        id: FetchId,
        why: FetchFailure,
    ) -> Result<(), MirrorError> {
        let fetch = self.fetches.get(&id).ok_or(MirrorError::UnknownFetch(id))?;
        if fetch.state == FetchState::Serving {
            // A serving fetch breaks through `handle_pipe_interrupted`.
            return Ok(());
        }
        let rid = fetch.request;
        if matches!(why, FetchFailure::Connect(_)) {
            self.reopen(id);
        }
        self.finish_fetch(now, id);
        self.pump(now, rid);
        Ok(())
    }

    /// The fetch's status and headers arrived.
    pub(crate) fn handle_fetch_responded(
        &mut self,
        now: Instant,
        id: FetchId,
        resp: FetchResponse,
    ) -> Result<(), MirrorError> {
        let fetch = self.fetches.get(&id).ok_or(MirrorError::UnknownFetch(id))?;
        let (rid, state, resume) = (fetch.request, fetch.state, fetch.resume);
        let peer = fetch.peer.clone();
        if let FetchState::Waiting { connected, .. } = state {
            self.observe_ttfb(now.saturating_duration_since(connected));
            // The observation moves the hedge thresholds: another request's next hedge may
            // be due now, not later.
            let due: Vec<RequestId> = self
                .requests
                .iter()
                .filter(|(id, r)| **id != rid && self.next_hedge_at(r).is_some_and(|t| t <= now))
                .map(|(id, _)| *id)
                .collect();
            for other in due {
                self.pump(now, other);
            }
        }
        let Some(request) = self.requests.get(&rid) else {
            self.finish_fetch(now, id);
            return Ok(());
        };
        // Whatever the reason, the peer counts as failed for this request (not asked again for
        // it); the next peer, a hedge or the 404 follows. The reason goes out as a note.
        if let Err(why) = judge(request, resume, &resp) {
            self.note(Note::PeerAnswerRejected {
                request: rid,
                peer,
                why,
            });
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
                    // Without a length (a HEAD) or with an empty body there is nothing to
                    // resume.
                    (200, _, Some(len)) if len > 0 => Some((0, len - 1)),
                    _ => None,
                };
                request.size = match (resp.status, resp.content_range) {
                    (206, Some(cr)) => Some(cr.size),
                    (200, _) => resp.content_length,
                    _ => None,
                };
                request.phase = Phase::Streaming {
                    fetch: id,
                    span,
                    watch: Watch {
                        last: 0,
                        due: now + self.config.stall_timeout,
                        state: WatchState::Idle,
                    },
                };
                // The whole content passes through the response: its bytes can be checked
                // against the digest asked for.
                let verify = match (&request.req.digest, span, request.size) {
                    (Some(d), Some((0, end)), Some(size))
                        if !request.req.head && end + 1 == size =>
                    {
                        Some(d.clone())
                    }
                    _ => None,
                };
                // A checked body small enough, while the budget lasts, is held until it
                // matched.
                let hold = match (&verify, request.size) {
                    (Some(_), Some(size))
                        if size <= self.config.hold_max
                            && self.held.saturating_add(size) <= self.config.hold_budget =>
                    {
                        size
                    }
                    _ => 0,
                };
                request.held = hold;
                self.held += hold;
                request.fed_by.push(peer);
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
                self.hits += 1;
                self.outputs.push_back(Output::Serve {
                    request: rid,
                    fetch: id,
                    verify,
                    hold: hold > 0,
                });
            }
            Phase::Resuming {
                start,
                end,
                written,
            } => {
                request.phase = Phase::Streaming {
                    fetch: id,
                    span: Some((start, end)),
                    watch: Watch {
                        last: written,
                        due: now + self.config.stall_timeout,
                        state: WatchState::Idle,
                    },
                };
                request.fed_by.push(peer);
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

    pub(super) fn observe_ttfb(&mut self, d: Duration) {
        if self.ttfb.len() >= self.config.ttfb_window.max(1) {
            self.ttfb.pop_front();
        }
        self.ttfb.push_back(d);
    }

    pub(super) fn hedge_offsets(&self) -> Vec<Duration> {
        self.config
            .hedge_percentiles
            .iter()
            .map(|p| self.ttfb_percentile(*p))
            .collect()
    }

    /// How many fetches may run at once for `r` at `now`: one, plus one per hedge threshold
    /// passed since the first fetch started.
    pub(super) fn allowed_in_flight(&self, r: &Request<P>, now: Instant) -> usize {
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

    pub(super) fn next_hedge_at(&self, r: &Request<P>) -> Option<Instant> {
        if !matches!(r.phase, Phase::Resolving) {
            return None;
        }
        let first = r.first_fetch_at?;
        let mut offsets = self.hedge_offsets();
        offsets.sort_unstable();
        offsets.get(r.hedges_due).map(|o| first + *o)
    }

    /// The peers `r` may ask now.
    pub(super) fn untried(&self, r: &Request<P>) -> Vec<P> {
        r.candidates
            .iter()
            .filter(|c| c.eligible())
            .map(|c| c.peer.clone())
            .collect()
    }

    /// The connection of fetch `id` could not be made: its peer may be asked again, at its
    /// next address.
    pub(super) fn reopen(&mut self, id: FetchId) {
        let Some(f) = self.fetches.get(&id) else {
            return;
        };
        if let Some(r) = self.requests.get_mut(&f.request)
            && let Some(c) = r.candidates.iter_mut().find(|c| c.peer == f.peer)
        {
            c.done = false;
        }
    }

    /// Starts what may start for request `rid`, and ends it when nothing is left to try.
    pub(super) fn pump(&mut self, now: Instant, rid: RequestId) {
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
            let peer = self.choose(rid, &untried);
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

    /// Fewest addresses used by this request first, then the least-used peer; ties broken by
    /// the seeded RNG.
    pub(super) fn choose(&mut self, rid: RequestId, untried: &[P]) -> P {
        let used = |p: &P| {
            self.requests
                .get(&rid)
                .and_then(|r| r.candidates.iter().find(|c| c.peer == *p))
                .map_or(0, |c| c.used)
        };
        let fewest = untried.iter().map(used).min().unwrap_or(0);
        let fresh: Vec<&P> = untried.iter().filter(|p| used(p) == fewest).collect();
        let load = |p: &P| self.peer_load.get(p).copied().unwrap_or(0);
        let min = fresh.iter().map(|p| load(p)).min().unwrap_or(0);
        let least: Vec<&P> = fresh.into_iter().filter(|p| load(p) == min).collect();
        let pick = if least.len() > 1 {
            self.rng.random_range(0..least.len())
        } else {
            0
        };
        least[pick].clone()
    }

    pub(super) fn start_fetch(&mut self, now: Instant, rid: RequestId, peer: P) {
        let Some(r) = self.requests.get_mut(&rid) else {
            return;
        };
        let Some(c) = r.candidates.iter_mut().find(|c| c.peer == peer) else {
            return;
        };
        let Some(addr) = c.addrs.get(c.used).copied() else {
            return;
        };
        c.used += 1;
        c.done = true;
        let id = FetchId(self.next_fetch);
        self.next_fetch += 1;
        r.attempts += 1;
        r.in_flight.insert(id);
        let resume = match r.phase {
            Phase::Resuming {
                start,
                end,
                written,
                ..
            } => Some((start + written, end)),
            _ => None,
        };
        let range = match resume {
            Some((start, end)) => FetchRange::FromTo { start, end },
            None => FetchRange::forward(r.req.range),
        };
        let (method, path) = (r.req.method(), r.req.path.clone());
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
                resume,
            },
        );
        self.outputs.push_back(Output::Fetch {
            id,
            request: rid,
            peer,
            addr,
            method,
            path,
            range,
        });
    }

    pub(super) fn mark_serving(&mut self, id: FetchId) {
        if let Some(f) = self.fetches.get_mut(&id) {
            f.state = FetchState::Serving;
        }
    }

    /// Forgets a fetch (finished or failed) without telling the adapter.
    pub(super) fn finish_fetch(&mut self, now: Instant, id: FetchId) {
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

    pub(super) fn cancel_fetch(&mut self, now: Instant, id: FetchId) {
        if self.fetches.contains_key(&id) {
            self.finish_fetch(now, id);
            self.outputs.push_back(Output::CancelFetch { id });
        }
    }
}
