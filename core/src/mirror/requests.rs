//! The end of a request: the client left, or nobody could serve it (a 404 that says why, or
//! an aborted connection when a body was already under way).

use std::fmt;
use std::time::Instant;

use super::{FetchState, Mirror, MirrorError, Output, Phase, RequestId};

impl<P: Clone + Ord + fmt::Debug> Mirror<P> {
    /// The client went away: stop everything for this request.
    pub(crate) fn handle_request_closed(
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

    pub(super) fn give_up(&mut self, now: Instant, rid: RequestId) {
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
                self.misses += 1;
                self.outputs.push_back(Output::Fail {
                    request: rid,
                    error: crate::node::unknown(&r.req.target, reason),
                    reason: cause,
                });
            }
        }
        self.end_request(now, rid);
    }

    pub(super) fn end_request(&mut self, now: Instant, rid: RequestId) {
        let Some(r) = self.requests.remove(&rid) else {
            return;
        };
        self.held = self.held.saturating_sub(r.held);
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
}
