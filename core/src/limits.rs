//! The limits of the node's servers, as values the core owns (SPEC.md §9): the adapters
//! enforce them and never choose their own.

use std::time::Duration;

use crate::request::HEADERS_MAX;
pub use crate::request::header_bytes;

/// The bounds of the DHT's record store: provider records of other peers and this node's own
/// keys (the router enforces them; SPEC.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most provider records of other peers kept, over all keys.
    pub max_records: usize,
    /// Most providers kept per key (beyond it, new providers of that key are ignored).
    pub max_providers_per_key: usize,
    /// Most addresses kept per provider (the rest are dropped).
    pub max_addresses: usize,
    /// Most providers the records of other peers name (a record of a provider beyond them
    /// is refused): a cluster has fewer nodes than this.
    pub max_providers: usize,
    /// Most keys this node provides itself.
    pub max_provided_keys: usize,
    /// The most often a full store looks for expired records to make room (refusing a record
    /// must not cost a search of the whole store each time).
    pub sweep_every: Duration,
}

impl Default for StoreLimits {
    /// Room for every record of a 20-node cluster announcing 5,000 keys per node (the
    /// replication factor is 20; a larger cluster spreads its records).
    fn default() -> Self {
        StoreLimits {
            max_records: 100_000,
            max_providers_per_key: 20,
            max_addresses: 4,
            max_providers: 8_192,
            max_provided_keys: 1 << 20,
            sweep_every: Duration::from_secs(5),
        }
    }
}

/// The default cap of concurrent connections per server (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// What one HTTP/1.1 server connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Most bytes of a request head; a larger head is refused with 431 before it is parsed
    /// (heads between [`HEADERS_MAX`] and this size are refused by the request parser with an
    /// OCI error).
    pub max_head_bytes: usize,
    /// Most header lines of a request head (more: 431).
    pub max_headers: usize,
    /// Most bytes of a request's header fields, counted as [`header_bytes`] counts them
    /// (more: 431), on every server (the registry's request parser checks the same).
    pub max_header_bytes: usize,
    /// How long a closing connection waits for the client to close its side, so that unread
    /// request bytes do not turn the close into a reset that could destroy the response.
    pub linger: Duration,
    /// Most bytes read and discarded while lingering.
    pub linger_bytes: usize,
    /// How long the accept loop waits after a failed accept (out of file descriptors and the
    /// like) before accepting again.
    pub accept_retry: Duration,
    /// How long a request head may take to arrive: from the connection's start for its first
    /// request, from the first byte for a later one. Past it the connection is closed (with a
    /// `408` when part of a head arrived).
    pub head_timeout: Duration,
    /// How long a keep-alive connection may stay idle between requests before it is closed.
    pub idle_timeout: Duration,
    /// How long one write of a response may make no progress (a client that stopped reading)
    /// before the connection is ended.
    pub write_stall: Duration,
    /// Most connections served at once; over it a new connection gets `503` and is closed at
    /// once (so that containerd falls back instead of waiting in the kernel's backlog).
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_head_bytes: 2 * HEADERS_MAX,
            max_headers: 100,
            max_header_bytes: HEADERS_MAX,
            linger: Duration::from_secs(1),
            linger_bytes: 256 * 1024,
            accept_retry: Duration::from_millis(50),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_stall: Duration::from_secs(5),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// How long SIGTERM lets transfers in flight finish before the process exits anyway.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(60);

/// How long one HTTP bootstrap `/id` exchange may take (server side).
pub const ID_EXCHANGE_BUDGET: Duration = Duration::from_secs(5);

/// How long `doctor` and the start-up check wait for each of containerd's answers.
pub const CONTAINERD_ASK_BUDGET: Duration = Duration::from_secs(5);
