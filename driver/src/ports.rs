//! The ports: what the adapters plug into the driver — the content store ([`ContentStore`],
//! containerd), the DHT ([`Router`], libp2p) and the peer client ([`PeerClient`], hyper).
//!
//! A port is mechanism only: it answers what it is asked, reports what happened, and never
//! decides a timeout, a retry or a peer (the core does).

use std::fmt;
use std::fs::File;
use std::io;
use std::net::IpAddr;

use bytes::Bytes;
use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use speil_core::mirror::{FetchFailure, FetchRange, FetchResponse};
use speil_core::store::ImageState;
use speil_core::{Digest, Key};

/// A failure of the content source (the store is unreachable, a read failed). Answered with
/// 503, never with 500: it is not the client's fault and it may pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl SourceError {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> SourceError {
        SourceError(message.to_string())
    }
}

/// The bytes of a blob range.
pub enum BlobBody {
    /// A region of a file: `len` bytes from `offset`. The file's cursor is not used (reads
    /// are positional), so the runtime may also `sendfile` the region.
    File {
        /// The blob's file.
        file: File,
        /// First byte of the region.
        offset: u64,
        /// Bytes in the region.
        len: u64,
    },
    /// A stream that yields exactly the requested bytes, in order.
    Stream(BoxStream<'static, io::Result<Bytes>>),
}

impl fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobBody::File { file, offset, len } => f
                .debug_struct("File")
                .field("file", file)
                .field("offset", offset)
                .field("len", len)
                .finish(),
            BlobBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// The node's content store, as the registry server reads it.
///
/// Implementations answer `Ok(None)` for content that is not there, and `Err` only when they
/// cannot tell (the store is unreachable or a read failed).
pub trait ContentStore: Send + Sync + 'static {
    /// The digest an image name (`<registry>/<name>:<tag>`) points at.
    fn resolve_tag<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Option<Digest>, SourceError>>;

    /// [`ContentStore::resolve_tag`] and the size of the content it points at: the answer
    /// to the core's `StatLocal` for a tag. `None` when the tag or its content is absent.
    fn stat_tag<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Digest, u64)>, SourceError>> {
        Box::pin(async move {
            let Some(digest) = self.resolve_tag(image).await? else {
                return Ok(None);
            };
            Ok(self.size(&digest).await?.map(|size| (digest, size)))
        })
    }

    /// The size of a blob, `None` when the store does not hold it.
    fn size<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, SourceError>>;

    /// The whole blob, for manifests. Callers only ask for blobs of at most
    /// [`MAX_MANIFEST_SIZE`](speil_core::manifest::MAX_MANIFEST_SIZE) bytes (they check
    /// [`ContentStore::size`] first); an implementation refuses larger ones with an error.
    fn read_manifest<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<Bytes>, SourceError>>;

    /// Opens `len` bytes of a blob from `offset` (a range inside the blob, resolved by the
    /// caller against [`ContentStore::size`]).
    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Option<BlobBody>, SourceError>>;

    /// Every image of the store, walked: the answer to the core's `RecheckStore`. An error
    /// leaves the node's view unchanged (the next re-check tries again).
    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<ImageState>, SourceError>>;
}

/// A peer that provides a key, with the IPs its registry may be reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider<P> {
    /// The peer.
    pub peer: P,
    /// Its IPs (the registry port is the local one: SPEC.md §5).
    pub ips: Vec<IpAddr>,
}

/// The DHT, as the driver uses it. `P` is the peer type.
pub trait Router<P>: Send + Sync + 'static {
    /// A name for the `router` label of `spegel_resolve_duration_seconds` (`libp2p`).
    fn name(&self) -> &str;

    /// Providers of `key`, at most `count`, as they are found; the stream ends when the query
    /// is over. Dropping it cancels the query.
    fn lookup(&self, key: &Key, count: usize) -> BoxStream<'static, Provider<P>>;

    /// Starts announcing `keys`.
    fn advertise(&self, keys: Vec<Key>) -> BoxFuture<'static, ()>;

    /// Stops announcing `keys`.
    fn withdraw(&self, keys: Vec<Key>) -> BoxFuture<'static, ()>;

    /// Whether the router can find anything (its routing table is not empty).
    fn ready(&self) -> bool;

    /// The peers currently known, as display strings (for the debug page).
    fn peers(&self) -> Vec<String> {
        Vec::new()
    }

    /// Records this node holds for other peers (a DHT's provider records), for the
    /// `speil_dht_records` gauge; `None` for a router that keeps none.
    fn records(&self) -> Option<usize> {
        None
    }
}

/// One request to a peer's registry, exactly as the core's `Fetch` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRequest {
    /// The peer's registry address.
    pub addr: SocketAddr,
    /// `GET` or `HEAD`.
    pub method: http::Method,
    /// The path and query to send.
    pub path: String,
    /// The range to ask for.
    pub range: FetchRange,
}

/// The client that fetches from peers' registries.
pub trait PeerClient: Send + Sync + 'static {
    /// A peer's answer whose head has arrived; its body is read by whoever relays it.
    type Response: Send + 'static;

    /// Dials the peer, sends the request (with `X-Spegel-Mirrored: true` and the node's
    /// credentials) and waits for the response head. `connected` is called once the
    /// connection is up and the request is on its way. No timeout here: the core decides
    /// when it took too long and the driver drops the future.
    fn fetch(
        &self,
        request: PeerRequest,
        connected: Box<dyn FnOnce() + Send>,
    ) -> BoxFuture<'static, Result<(FetchResponse, Self::Response), FetchFailure>>;

    /// The peer's registry address of a response, for logs.
    fn describe(&self, response: &Self::Response) -> String;
}
