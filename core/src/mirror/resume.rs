//! Broken bodies: a body that breaks mid-stream is continued from another peer with a range
//! that starts where the client's body stopped, or the connection is aborted.

use std::fmt;
use std::time::Instant;

use super::{Mirror, MirrorError, Output, Phase, RequestId};

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
}
