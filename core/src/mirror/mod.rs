//! The mirroring state machine: what to do with a request whose content is not on this node.
//!
//! For each such request the machine looks the key up (one shared DHT query per key, results
//! cached for a few seconds), picks the least-used peer (ties broken by the seeded RNG) and
//! one of its registry addresses, starts a fetch, hedges with further fetches at the observed
//! p80/p85/p90 of time-to-first-byte, and gives up within its budgets so that containerd
//! always gets a status it can fall back from. When the winning peer's body breaks or stalls
//! mid-stream, it resumes from another peer with a `Range` that starts where the client's body
//! stopped; when nobody can continue it aborts the connection rather than end a 200 with a
//! short body.
//!
//! Blob bytes never pass through here: [`Output::Serve`] and [`Output::Continue`] tell the
//! adapter which fetch feeds which response, and the adapter reports back with
//! [`Input::PipeFinished`] / [`Input::PipeInterrupted`].
//!
//! The machine is split by concern: [`ids`], [`config`] and the facts it takes ([`facts`])
//! are data; `lookups` shares and caches DHT queries, `fetches` picks peers, dials addresses,
//! hedges and judges answers, `requests` ends requests, `resume` watches relayed bodies for
//! stalls and continues broken ones, [`timers`] holds every deadline and its reason, and
//! [`error`] is adapter misuse.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::keys::Key;
#[cfg(doc)]
use crate::node::Input;
use crate::node::{Note, Output};

pub mod config;
pub mod error;
pub mod facts;
mod fetches;
pub mod ids;
mod lookups;
mod requests;
mod resume;
#[cfg(test)]
mod tests;
pub mod timers;

/// Most notes kept unread ([`crate::node::Node::poll_note`]): a driver that never reads them
/// costs a bounded amount of memory.
pub const MAX_NOTES: usize = 256;

pub use config::MirrorConfig;
pub use error::MirrorError;
pub use facts::{ContentRange, FetchFailure, FetchRange, FetchResponse, MirrorRequest};
pub use fetches::Rejection;
pub use ids::{FetchId, LookupId, RequestId};
pub use timers::TimeoutReason;

#[derive(Debug)]
struct Lookup<P> {
    id: LookupId,
    /// The providers found so far and their registry addresses, in the order they came.
    providers: Vec<(P, Vec<SocketAddr>)>,
    finished_at: Option<Instant>,
    waiters: BTreeSet<RequestId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchState {
    Dialing {
        deadline: Instant,
    },
    Waiting {
        deadline: Instant,
        connected: Instant,
    },
    Serving,
}

#[derive(Debug)]
struct Fetch<P> {
    request: RequestId,
    peer: P,
    state: FetchState,
    /// For a resume: the exact range asked for.
    resume: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Looking for a first good response.
    Resolving,
    /// Relaying a body covering `span` (`[start, end]` of the blob; `None` when the body's
    /// extent is unknown, which makes it impossible to resume).
    Streaming {
        fetch: FetchId,
        span: Option<(u64, u64)>,
        watch: Watch,
    },
    /// The body broke after `written` bytes; looking for a peer to continue.
    Resuming { start: u64, end: u64, written: u64 },
}

/// The stall watchdog of a body being relayed (see `resume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watch {
    /// Body bytes the client had received at the last good report.
    last: u64,
    /// When the next step is due.
    due: Instant,
    state: WatchState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchState {
    /// Waiting for `due` to ask for progress.
    Idle,
    /// [`Output::PollProgress`] was sent; its answer is due by `due`.
    Polled,
    /// [`Output::Interrupt`] was sent; the pipe's report is due by `due`.
    Interrupting,
}

/// A provider as one request sees it: its addresses, how many of them this request used, and
/// whether it may be asked (again).
#[derive(Debug)]
struct Candidate<P> {
    peer: P,
    addrs: Vec<SocketAddr>,
    /// Addresses used so far (the next fetch dials `addrs[used]`).
    used: usize,
    /// Asked, and not to be asked again: it answered, broke after connecting, or is being
    /// asked now. A failed connection clears it, so that the peer's next address is tried.
    done: bool,
}

impl<P> Candidate<P> {
    fn eligible(&self) -> bool {
        !self.done && self.used < self.addrs.len()
    }
}

#[derive(Debug)]
struct Request<P> {
    req: MirrorRequest,
    started: Instant,
    phase: Phase,
    candidates: Vec<Candidate<P>>,
    attempts: usize,
    in_flight: BTreeSet<FetchId>,
    first_fetch_at: Option<Instant>,
    /// Hedge thresholds passed since the first fetch.
    hedges_due: usize,
    /// Since when nothing has been in flight (for the resolve budget).
    idle_since: Instant,
    lookup_finished: bool,
    /// The content's size, once an answer was relayed (a 200's `Content-Length`, a 206's
    /// `Content-Range` size): a continuation must claim the same.
    size: Option<u64>,
    /// The peers whose bodies fed the client's response, in order (the first answer, then
    /// each continuation).
    fed_by: Vec<P>,
    /// Bytes of the hold budget this request's body takes (0: it streams).
    held: u64,
}

/// The mirroring state machine. `P` is the peer type (`libp2p::PeerId` in the node, a small
/// integer in simulations).
#[derive(Debug)]
pub struct Mirror<P> {
    config: MirrorConfig,
    local: P,
    rng: SmallRng,
    lookups: BTreeMap<Key, Lookup<P>>,
    lookup_keys: BTreeMap<LookupId, Key>,
    requests: BTreeMap<RequestId, Request<P>>,
    fetches: BTreeMap<FetchId, Fetch<P>>,
    peer_load: BTreeMap<P, usize>,
    /// Peers not asked again for a key (a body that did not match its digest), and until when.
    distrusted: BTreeMap<(Key, P), Instant>,
    /// Bodies whose bytes did not match their digest.
    mismatches: u64,
    /// Bytes of the hold budget taken by the bodies being held.
    held: u64,
    ttfb: VecDeque<Duration>,
    /// Commands for the adapter, in the node's own [`Output`] type: the node moves them into its
    /// queue as they are.
    outputs: VecDeque<Output<P>>,
    /// What the adapter reports and need not answer ([`Note`]); at most [`MAX_NOTES`], the
    /// oldest dropped first when nobody reads them.
    notes: VecDeque<Note<P>>,
    hits: u64,
    misses: u64,
    next_fetch: u64,
    next_lookup: u64,
}

impl<P: Clone + Ord + fmt::Debug> Mirror<P> {
    /// A machine for the node whose own peer is `local` (never fetched from).
    pub fn new(config: MirrorConfig, local: P, seed: u64) -> Self {
        Mirror {
            config,
            local,
            rng: SmallRng::seed_from_u64(seed),
            lookups: BTreeMap::new(),
            lookup_keys: BTreeMap::new(),
            requests: BTreeMap::new(),
            fetches: BTreeMap::new(),
            peer_load: BTreeMap::new(),
            distrusted: BTreeMap::new(),
            mismatches: 0,
            held: 0,
            ttfb: VecDeque::new(),
            outputs: VecDeque::new(),
            notes: VecDeque::new(),
            hits: 0,
            misses: 0,
            next_fetch: 0,
            next_lookup: 0,
        }
    }

    // ---- getters ----

    /// The configuration.
    pub fn config(&self) -> &MirrorConfig {
        &self.config
    }

    /// Whether request `id` is being mirrored.
    pub fn has_request(&self, id: RequestId) -> bool {
        self.requests.contains_key(&id)
    }

    /// Number of requests being mirrored.
    pub fn active_requests(&self) -> usize {
        self.requests.len()
    }

    /// Number of fetches in progress.
    pub fn active_fetches(&self) -> usize {
        self.fetches.len()
    }

    /// The current time-to-first-byte estimate at percentile `pct` (0–100).
    pub fn ttfb_percentile(&self, pct: u8) -> Duration {
        if self.ttfb.is_empty() {
            return self.config.default_ttfb;
        }
        let mut sorted: Vec<Duration> = self.ttfb.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest-rank percentile.
        let rank = (usize::from(pct.min(100)) * sorted.len()).div_ceil(100);
        sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
    }

    /// How long a connected fetch may wait for its headers: `max(2 × p90, min_header_budget)`.
    pub fn header_budget(&self) -> Duration {
        (self.ttfb_percentile(90) * 2).max(self.config.min_header_budget)
    }

    /// Mirrored requests answered by a peer (`cache="hit"`) and not (`cache="miss"`).
    pub fn counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Relayed bodies whose bytes did not match their digest (each aborted, its peers
    /// distrusted for that digest).
    pub fn mismatches(&self) -> u64 {
        self.mismatches
    }

    /// Bytes of the hold budget taken now (see [`MirrorConfig::hold_max`]).
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// Whether `peer` is distrusted for `key` at `now`.
    pub fn distrusts(&self, now: Instant, key: &Key, peer: &P) -> bool {
        lookups::distrusted(&self.distrusted, now, key, peer)
    }

    /// The oldest note not read yet.
    pub(crate) fn poll_note(&mut self) -> Option<Note<P>> {
        self.notes.pop_front()
    }

    /// Keeps `note` for the adapter, dropping the oldest one when [`MAX_NOTES`] are unread.
    pub(super) fn note(&mut self, note: Note<P>) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.pop_front();
        }
        self.notes.push_back(note);
    }

    /// Moves the commands decided so far to the end of `queue`.
    pub(crate) fn take_outputs(&mut self, queue: &mut VecDeque<Output<P>>) {
        queue.append(&mut self.outputs);
    }
}
