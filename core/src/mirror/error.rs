//! Misuse of the machine by an adapter: stale or unknown ids are errors, never panics.

use super::ids::{FetchId, LookupId, RequestId};

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
    /// The request exists but waits for no such report (an answer nobody asked for, or one
    /// that came too late).
    #[error("unexpected report for request {0:?}")]
    UnexpectedReport(RequestId),
}
