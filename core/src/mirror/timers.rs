//! Every deadline of the mirror, and its reason: dial and header budgets of fetches, the
//! manifest budget, the resolve budget, hedges, the lookup cache and the stall watchdog of
//! relayed bodies.

use std::fmt;
use std::time::Instant;

use super::{FetchId, FetchState, Mirror, Phase, RequestId, WatchState};

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
    /// A relayed body's progress is due to be polled ([`crate::node::Output::PollProgress`]).
    Stall,
    /// A progress poll was not answered in time (the body is then interrupted).
    ProgressAnswer,
    /// An interrupted pipe did not report how far it got in time (the client is then aborted).
    InterruptAnswer,
}

impl<P: Clone + Ord + fmt::Debug> Mirror<P> {
    /// Time passed. Early calls are harmless.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
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
            // A peer that could not be reached in time may be asked at its next address.
            if matches!(
                self.fetches.get(&f).map(|x| x.state),
                Some(FetchState::Dialing { .. })
            ) {
                self.reopen(f);
            }
            self.cancel_fetch(now, f);
        }
        self.watch_bodies(now);
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
    /// When the mirror next needs time to pass, and why.
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
            if let Phase::Streaming { watch, .. } = r.phase {
                let why = match watch.state {
                    WatchState::Idle => TimeoutReason::Stall,
                    WatchState::Polled => TimeoutReason::ProgressAnswer,
                    WatchState::Interrupting => TimeoutReason::InterruptAnswer,
                };
                consider(watch.due, why);
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
}
