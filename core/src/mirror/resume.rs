//! Broken and stalled bodies: a body that breaks mid-stream is continued from another peer
//! with a range that starts where the client's body stopped, or the connection is aborted.
//!
//! The stall watchdog is a core timer. While a body is relayed, every `stall_timeout` the
//! mirror asks for the pipe's progress ([`Output::PollProgress`]) and the adapter answers with
//! the body bytes the client has received so far, read from a counter
//! ([`Input::PipeProgress`]). When they grew by less than `min_progress` since the last good
//! report (or the answer does not come within another `stall_timeout`), the body counts as
//! stalled: the mirror tells the adapter to drop the peer's body ([`Output::Interrupt`]), and
//! the pipe then reports [`Input::PipeInterrupted`] with its exact count, from which the body
//! is resumed as for any other break. Waiting for that report, rather than resuming at the
//! polled count, keeps the resume offset exact even when a last byte got through between the
//! poll and the interruption. A pipe that does not report within another `stall_timeout` is
//! aborted.

use std::fmt;
use std::time::Instant;

use super::{Mirror, MirrorError, Output, Phase, RequestId, WatchState};
#[cfg(doc)]
use crate::node::Input;

impl<P: Clone + Ord + fmt::Debug> Mirror<P> {
    /// The response to the client is complete.
    pub(crate) fn handle_pipe_finished(
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

    /// The relayed body did not match its digest (the pipe aborted the client's connection):
    /// the request ends, and every peer that fed the body is distrusted for the key.
    pub(crate) fn handle_pipe_mismatch(
        &mut self,
        now: Instant,
        id: RequestId,
    ) -> Result<(), MirrorError> {
        let request = self
            .requests
            .get(&id)
            .ok_or(MirrorError::UnknownRequest(id))?;
        if !matches!(request.phase, Phase::Streaming { .. }) {
            return Err(MirrorError::UnexpectedReport(id));
        }
        let (key, peers) = (request.req.key.clone(), request.fed_by.clone());
        self.mismatches += 1;
        self.distrust(now, &key, &peers);
        self.end_request(now, id);
        Ok(())
    }

    /// The peer's body broke after the client received `written` bytes of the body in total
    /// (across every fetch that fed it).
    pub(crate) fn handle_pipe_interrupted(
        &mut self,
        now: Instant,
        id: RequestId,
        written: u64,
    ) -> Result<(), MirrorError> {
        let request = self
            .requests
            .get_mut(&id)
            .ok_or(MirrorError::UnknownRequest(id))?;
        let Phase::Streaming { fetch, span, .. } = request.phase else {
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

    /// The answer to [`Output::PollProgress`]: the client has received `written` body bytes.
    /// An answer nobody asked for is an error and changes nothing.
    pub(crate) fn handle_pipe_progress(
        &mut self,
        now: Instant,
        id: RequestId,
        written: u64,
    ) -> Result<(), MirrorError> {
        let stall = self.config.stall_timeout;
        let min = self.config.min_progress.max(1);
        let request = self
            .requests
            .get_mut(&id)
            .ok_or(MirrorError::UnknownRequest(id))?;
        let Phase::Streaming { ref mut watch, .. } = request.phase else {
            return Err(MirrorError::UnexpectedReport(id));
        };
        if watch.state != WatchState::Polled {
            return Err(MirrorError::UnexpectedReport(id));
        }
        watch.due = now + stall;
        if written >= watch.last.saturating_add(min) {
            watch.last = written;
            watch.state = WatchState::Idle;
        } else {
            watch.state = WatchState::Interrupting;
            self.outputs.push_back(Output::Interrupt { request: id });
        }
        Ok(())
    }

    /// The stall watchdog's steps that are due at `now`.
    pub(super) fn watch_bodies(&mut self, now: Instant) {
        let stall = self.config.stall_timeout;
        let due: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Streaming { watch, .. } if watch.due <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(request) = self.requests.get_mut(&id) else {
                continue;
            };
            let Phase::Streaming { ref mut watch, .. } = request.phase else {
                continue;
            };
            watch.due = now + stall;
            match watch.state {
                WatchState::Idle => {
                    watch.state = WatchState::Polled;
                    self.outputs.push_back(Output::PollProgress { request: id });
                }
                // No answer: the pipe cannot be trusted to be moving.
                WatchState::Polled => {
                    watch.state = WatchState::Interrupting;
                    self.outputs.push_back(Output::Interrupt { request: id });
                }
                // The pipe did not report how far it got: the body cannot be resumed.
                WatchState::Interrupting => {
                    self.outputs.push_back(Output::Abort { request: id });
                    self.end_request(now, id);
                }
            }
        }
    }
}
