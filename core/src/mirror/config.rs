//! The mirroring policy's numbers.

use std::time::Duration;

/// The mirroring policy's numbers (SPEC.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// Longest wait for a first peer when nothing is in flight (`--mirror-resolve-timeout`).
    pub resolve_timeout: Duration,
    /// Providers asked for per lookup (`--mirror-resolve-retries`).
    pub resolve_count: usize,
    /// How long the providers found for a key are reused by later requests.
    pub lookup_cache_ttl: Duration,
    /// Manifest and HEAD requests end after this long.
    pub manifest_budget: Duration,
    /// Lower bound of the header budget (`max(2 × p90, this)`).
    pub min_header_budget: Duration,
    /// A peer that does not accept the connection within this long is skipped.
    pub dial_timeout: Duration,
    /// A body being relayed that delivers fewer than `min_progress` bytes to the client in this
    /// long is treated as broken (and resumed from another peer): a stalled peer must not hang
    /// the client. The core's own watchdog enforces it (see the `resume` module).
    pub stall_timeout: Duration,
    /// Body bytes a relayed response must deliver to the client per `stall_timeout` to count
    /// as moving (at least 1): a peer that drips a few bytes per interval is as broken as one
    /// that stopped.
    pub min_progress: u64,
    /// A peer whose body did not match its digest is not asked for that digest again for this
    /// long (SPEC.md §8).
    pub distrust_for: Duration,
    /// At most this many (digest, peer) pairs are remembered as distrusted; the one that
    /// expires first makes room for a new one.
    pub max_distrusted: usize,
    /// A checked body up to this size is held until all of it arrived and matched its
    /// digest, and only then sent: containerd keeps the part of a download it received and
    /// resumes from it, so a corrupt byte that reached it would fail every later pull of that
    /// content. Larger bodies stream, and a mismatch only cuts them before their last byte.
    pub hold_max: u64,
    /// The bytes all held bodies together may take; a body that does not fit streams.
    pub hold_budget: u64,
    /// At most this many requests are mirrored at once; one more is answered 404 at once
    /// (containerd goes upstream).
    pub max_requests: usize,
    /// At most this many DHT lookups run at once; a request that needs another one is
    /// answered 404 at once. Requests for a key being looked up share its lookup.
    pub max_lookups: usize,
    /// The time-to-first-byte estimate used before anything was observed.
    pub default_ttfb: Duration,
    /// Hedged fetches start at these percentiles of recent time-to-first-byte.
    pub hedge_percentiles: Vec<u8>,
    /// How many time-to-first-byte observations are kept.
    pub ttfb_window: usize,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            resolve_timeout: Duration::from_millis(20),
            resolve_count: 3,
            lookup_cache_ttl: Duration::from_secs(5),
            manifest_budget: Duration::from_secs(3),
            min_header_budget: Duration::from_millis(100),
            dial_timeout: Duration::from_millis(200),
            stall_timeout: Duration::from_secs(5),
            min_progress: 64 * 1024,
            distrust_for: Duration::from_secs(600),
            max_distrusted: 4096,
            hold_max: 16 * 1024 * 1024,
            hold_budget: 64 * 1024 * 1024,
            max_requests: 1024,
            max_lookups: 256,
            default_ttfb: Duration::from_millis(50),
            hedge_percentiles: vec![80, 85, 90],
            ttfb_window: 128,
        }
    }
}
