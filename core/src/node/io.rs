//! The node's one input type and one output type: facts in, commands out.

use crate::error::OciError;
use crate::keys::Key;
use crate::mirror::{FetchFailure, FetchId, FetchResponse, LookupId, RequestId};
use crate::request::ContentRequest;
use crate::store::StoreEvent;

use super::Local;

/// A fact for the node: everything the adapters report goes through [`super::Node::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input<P> {
    /// A content request (manifest or blob) and whether the store holds its content.
    Request {
        /// The request's id (allocated by the adapter).
        id: RequestId,
        /// The parsed request.
        request: ContentRequest,
        /// Whether the store holds the content.
        local: Local,
    },
    /// The client of a request went away.
    RequestClosed {
        /// The request.
        request: RequestId,
    },
    /// Providers found by a lookup (may come several times per lookup).
    Providers {
        /// The lookup.
        lookup: LookupId,
        /// The providers found.
        providers: Vec<P>,
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
        /// Why.
        why: FetchFailure,
    },
    /// A fetch's status and headers arrived.
    FetchResponded {
        /// The fetch.
        fetch: FetchId,
        /// What the peer answered.
        response: FetchResponse,
    },
    /// A relayed response is complete.
    PipeFinished {
        /// The request.
        request: RequestId,
    },
    /// A relayed body broke after `written` bytes of the body reached the client in total
    /// (across every fetch that fed it).
    PipeInterrupted {
        /// The request.
        request: RequestId,
        /// Body bytes the client received.
        written: u64,
    },
    /// A fact about the content store.
    Store(StoreEvent),
}

/// A command for the adapters: the one output type of the node and of its sub-machines.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<P> {
    /// Serve the request from the local store.
    ServeLocal {
        /// The client request.
        request: RequestId,
    },
    /// Answer with this error (a 404 that says why, in most cases).
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
    /// Send the request to `peer`'s registry with `X-Spegel-Mirrored: true`.
    Fetch {
        /// The fetch.
        id: FetchId,
        /// The client request it serves.
        request: RequestId,
        /// The peer to ask.
        peer: P,
        /// `None`: forward the client's own `Range` (if any). `Some`: send
        /// `Range: bytes=start-end` instead (a resumed body).
        range: Option<(u64, u64)>,
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
    },
    /// Continue the client's interrupted body with this fetch's body.
    Continue {
        /// The client request.
        request: RequestId,
        /// The fetch whose body continues the response.
        fetch: FetchId,
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
