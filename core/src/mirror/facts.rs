//! The facts the mirror takes: the request to mirror and what peers answered.

use crate::digest::Digest;
use crate::keys::Key;
use crate::range::ByteRange;
use crate::request::Target;

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
}

impl MirrorRequest {
    pub(super) fn bounded(&self) -> bool {
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
