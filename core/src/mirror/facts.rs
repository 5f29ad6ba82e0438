//! The facts the mirror takes: the request to mirror and what peers answered.

use crate::digest::Digest;
use crate::keys::Key;
use crate::range::ByteRange;
use crate::request::{ContentRequest, Target};

/// A request the node decided to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRequest {
    /// The key to look up (tag key or digest key).
    pub key: Key,
    /// What the client asked for (phrases the 404 when no peer has it).
    pub target: Target,
    /// The digest the client asked for, when it asked by digest: a peer answering with another
    /// `Docker-Content-Digest` is rejected.
    pub digest: Option<Digest>,
    /// A manifest request (as opposed to a blob request).
    pub manifest: bool,
    /// A HEAD request.
    pub head: bool,
    /// The client's `Range`, when it sent one: a peer's partial answer must match it.
    pub range: Option<ByteRange>,
    /// The path and query to send to peers (canonical, with `?ns=`).
    pub path: String,
}

impl MirrorRequest {
    /// What the node mirrors for `req`.
    pub fn of(req: &ContentRequest) -> MirrorRequest {
        MirrorRequest {
            key: req.key(),
            target: req.target().clone(),
            digest: req.digest().cloned(),
            manifest: req.is_manifest(),
            head: req.head(),
            range: req.range().copied(),
            path: req.path_and_query(),
        }
    }

    pub(super) fn bounded(&self) -> bool {
        self.manifest || self.head
    }

    /// The method to send to peers.
    pub fn method(&self) -> http::Method {
        if self.head {
            http::Method::HEAD
        } else {
            http::Method::GET
        }
    }
}

/// The `Range` a fetch sends, decided by the core; the adapter renders it verbatim
/// ([`FetchRange::header_value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRange {
    /// No `Range` header: the whole blob.
    Whole,
    /// `bytes=start-`.
    From {
        /// First byte.
        start: u64,
    },
    /// `bytes=start-end` (inclusive).
    FromTo {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// `bytes=-len`: the last `len` bytes.
    Suffix {
        /// How many bytes at the end of the blob.
        len: u64,
    },
}

impl FetchRange {
    /// The client's own range, forwarded as it is.
    pub fn forward(range: Option<ByteRange>) -> FetchRange {
        match range {
            None => FetchRange::Whole,
            Some(ByteRange::From { start }) => FetchRange::From { start },
            Some(ByteRange::FromTo { start, end }) => FetchRange::FromTo { start, end },
            Some(ByteRange::Suffix { len }) => FetchRange::Suffix { len },
        }
    }

    /// The `Range` header value to send, `None` for [`FetchRange::Whole`].
    pub fn header_value(&self) -> Option<String> {
        match *self {
            FetchRange::Whole => None,
            FetchRange::From { start } => Some(format!("bytes={start}-")),
            FetchRange::FromTo { start, end } => Some(format!("bytes={start}-{end}")),
            FetchRange::Suffix { len } => Some(format!("bytes=-{len}")),
        }
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
