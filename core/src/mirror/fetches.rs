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
    Fetch, FetchFailure, FetchId, FetchRange, FetchResponse, FetchState, Mirror, MirrorError,
    Output, Phase, Request, RequestId, Watch, WatchState,
};

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
                request.phase = Phase::Streaming {
                    fetch: id,
                    span,
                    watch: Watch {
                        last: 0,
                        due: now + self.config.stall_timeout,
                        state: WatchState::Idle,
                    },
                };
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
