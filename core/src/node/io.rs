//! The node's one input type and one output type: facts in, commands out.
//!
//! Commands are self-contained: each names everything its execution needs (the peer's
//! address, the method, path and exact range of a fetch; the digest, size and range of a local
//! answer), so an adapter keeps no state per request beyond the handles of what it runs.

use std::net::SocketAddr;

use crate::digest::Digest;
use crate::error::OciError;
use crate::keys::Key;
use crate::mirror::{FetchFailure, FetchId, FetchRange, FetchResponse, LookupId, RequestId};
use crate::range::ResolvedRange;
use crate::request::ContentRequest;
use crate::store::StoreEvent;

/// Whether the requested content is in this node's store: the answer to
/// [`Output::StatLocal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// The store holds it: the digest (a tag resolved to it, or the digest asked for) and the
    /// size of that content.
    Present {
        /// The content's digest.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
    },
    /// The store does not hold it.
    Absent,
    /// The store could not tell (unreachable, or an error).
    Unknown,
}

/// What [`Output::StatLocal`] asks the store about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatTarget {
    /// Resolve the image `<registry>/<repository>:<tag>` to its target digest and that
    /// content's size.
    Tag {
        /// The image name as the store keeps it.
        image: String,
    },
    /// The size of this content, if present.
    Digest(Digest),
}

/// A fact for the node: everything the adapters report goes through [`super::Node::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input<P> {
    /// A content request (manifest or blob). The node answers with [`Output::StatLocal`] or
    /// decides at once.
    Request {
        /// The request's id (allocated by the adapter).
        id: RequestId,
        /// The parsed request.
        request: ContentRequest,
    },
    /// The store's answer to [`Output::StatLocal`]. An answer after the store budget
    /// (`NodeConfig::store_timeout`) is a stale report: the node already decided.
    LocalAnswered {
        /// The request.
        request: RequestId,
        /// What the store holds.
        local: Local,
    },
    /// The client of a request went away.
    RequestClosed {
        /// The request.
        request: RequestId,
    },
    /// Providers found by a lookup (may come several times per lookup), each with its
    /// registry's socket addresses in order of preference.
    Providers {
        /// The lookup.
        lookup: LookupId,
        /// The providers found and their registry addresses.
        providers: Vec<(P, Vec<SocketAddr>)>,
    },
    /// A lookup finished (or failed): no more providers will come from it.
    LookupFinished {
        /// The lookup.
        lookup: LookupId,
    },
    /// A fetch's connection is up and its request was sent.
    FetchConnected {
        /// The fetch.
        fetch: FetchId,
    },
    /// A fetch failed before its headers arrived.
    FetchFailed {
        /// The fetch.
        fetch: FetchId,
        /// Why: [`FetchFailure::Connect`] lets the core try the peer's next address.
        why: FetchFailure,
    },
    /// A fetch's status and headers arrived.
    FetchResponded {
        /// The fetch.
        fetch: FetchId,
        /// What the peer answered.
        response: FetchResponse,
    },
    /// The answer to [`Output::PollProgress`]: body bytes the client has received so far, in
    /// total across every fetch that fed the response.
    PipeProgress {
        /// The request.
        request: RequestId,
        /// Body bytes written to the client.
        written: u64,
    },
    /// A relayed response is complete.
    PipeFinished {
        /// The request.
        request: RequestId,
    },
    /// A relayed body broke (or was stopped by [`Output::Interrupt`]) after `written` bytes of
    /// the body reached the client in total (across every fetch that fed it). The node answers
    /// with [`Output::Continue`] (after a [`Output::Fetch`] that succeeds) or
    /// [`Output::Abort`]; when `written` covers the whole body the response is complete, the
    /// request ends and nothing follows (the pipe ends the response as for a finished body).
    PipeInterrupted {
        /// The request.
        request: RequestId,
        /// Body bytes the client received.
        written: u64,
    },
    /// The body of a response served with `verify` (see [`Output::Serve`]) did not hash to
    /// its digest: the client's connection was aborted before the last byte. The node ends the
    /// request and does not ask the peers that fed the body for that digest again for a
    /// while.
    PipeMismatch {
        /// The request.
        request: RequestId,
    },
    /// A fact about the content store.
    Store(StoreEvent),
}

/// What the node decided that the adapter only reports (in its log and metrics); nothing
/// answers a note. Read with [`crate::node::Node::poll_note`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note<P> {
    /// A peer's answer was not relayed: the peer is not asked again for this request.
    PeerAnswerRejected {
        /// The client request the fetch served.
        request: RequestId,
        /// The peer that answered.
        peer: P,
        /// Why its answer was not relayed.
        why: crate::mirror::Rejection,
    },
}

/// A command for the adapters: the one output type of the node and of its sub-machines.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<P> {
    /// Ask the content store about the request's content; answer with
    /// [`Input::LocalAnswered`].
    StatLocal {
        /// The client request.
        request: RequestId,
        /// What to ask about.
        what: StatTarget,
    },
    /// Serve the request from the local store.
    ServeLocal {
        /// The client request.
        request: RequestId,
        /// The content to send.
        digest: Digest,
        /// Its size (the `Content-Length` of a whole answer).
        size: u64,
        /// `Some`: answer 206 with these bytes (`Content-Range: bytes start-end/size`).
        range: Option<ResolvedRange>,
        /// A HEAD request: headers only.
        head: bool,
    },
    /// Answer with this error (a 404 that says why, a 416, a 503).
    Fail {
        /// The client request.
        request: RequestId,
        /// The error to send.
        error: OciError,
        /// Why, as a fixed label.
        reason: crate::FailReason,
    },
    /// Look up providers of `key`; report them with [`Input::Providers`] and the end of the
    /// query with [`Input::LookupFinished`].
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
    /// Connect to `addr` and send `method path` with `X-Spegel-Mirrored: true`, the `Range`
    /// rendered from `range` ([`FetchRange::header_value`]) and the node's credentials; report
    /// [`Input::FetchConnected`], then [`Input::FetchResponded`] or [`Input::FetchFailed`].
    Fetch {
        /// The fetch.
        id: FetchId,
        /// The client request it serves.
        request: RequestId,
        /// The peer to ask.
        peer: P,
        /// The peer's registry address to dial.
        addr: SocketAddr,
        /// `GET` or `HEAD`.
        method: http::Method,
        /// The path and query to send.
        path: String,
        /// The exact range to ask for.
        range: FetchRange,
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
        /// `Some`: the body is the whole content of this digest (also when continued by other
        /// peers): hash it while it streams and, when the bytes do not match, abort the
        /// client's connection before the last byte and report [`Input::PipeMismatch`].
        verify: Option<Digest>,
        /// With `verify`: hold the body until all of it arrived and matched, and only then
        /// send it (the core reserved its size in its hold budget); without, the body
        /// streams and a mismatch cuts it before its last byte.
        hold: bool,
    },
    /// Continue the client's interrupted body with this fetch's body.
    Continue {
        /// The client request.
        request: RequestId,
        /// The fetch whose body continues the response.
        fetch: FetchId,
    },
    /// Report how many body bytes the client of this relayed response has received, as
    /// [`Input::PipeProgress`].
    PollProgress {
        /// The client request.
        request: RequestId,
    },
    /// Stop feeding the client from its current peer body (drop that body and its
    /// connection), keep the client's connection, and report [`Input::PipeInterrupted`] with
    /// the bytes written; a [`Output::Continue`] or [`Output::Abort`] follows.
    Interrupt {
        /// The client request.
        request: RequestId,
    },
    /// Abort the client's connection: the body cannot be completed.
    Abort {
        /// The client request.
        request: RequestId,
    },
    /// Announce these keys (sorted).
    Advertise(Vec<Key>),
    /// Stop announcing these keys (sorted).
    Withdraw(Vec<Key>),
    /// Read the whole store and report it as a [`StoreEvent::Snapshot`].
    RecheckStore,
}
