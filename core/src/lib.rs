//! speil's sans-IO core.
//!
//! Everything speil decides lives here, as pure code: the OCI registry protocol (digests,
//! references, request parsing, ranges, manifests, error bodies), the DHT key derivation, the
//! containerd configuration checks and the `hosts.toml` plan, and the mirroring and advertising
//! state machines. Sockets, gRPC, the DHT and files belong to the adapters.
//!
//! # The contract
//!
//! 1. Inputs are facts, outputs are commands.
//! 2. Every mutating call takes `now: Instant`; the core never reads a clock. Randomness comes
//!    from a seed given at construction: the same seed and the same input trace give the same
//!    output trace.
//! 3. Every fact goes in as one [`node::Input`] through [`node::Node::handle`]; after it (and
//!    after [`node::Node::handle_timeout`]), drain `poll_output()` until `None`, then read
//!    `poll_timeout()` (deadline and reason) and set one timer. `handle_timeout(now)`
//!    tolerates early calls. There is one output type, [`node::Output`]: the node's
//!    sub-machines decide in it, so nothing is translated on the way out.
//! 4. Blob bytes never pass through the core.
//! 5. No panic on any input: misuse is an `Err`, network trouble is an input.
//! 6. No `HashMap` iteration (determinism); ties are broken by the seeded RNG.
//! 7. Dependencies are pure-data crates only; CI fails when `cargo tree -p speil-core -e normal`
//!    lists an IO or runtime crate.
//!
//! `core/clippy.toml` holds 2 and 6 to the letter: clippy (with `-D warnings` in CI) refuses
//! `Instant::now`, `SystemTime::now`, sleeping or spawning threads, and `HashMap`/`HashSet`
//! anywhere in the core outside its tests.
//!
//! # Policy here, mechanism in the adapters
//!
//! Commands are self-contained, so an adapter keeps no state per request beyond the handles
//! of what it runs, and never reads the core's configuration:
//!
//! - [`node::Output::StatLocal`] says what to ask the store (a tag or a digest); the answer,
//!   [`node::Input::LocalAnswered`], carries the digest and size. The store budget is a core
//!   timer: without an answer in time the node decides as for an unknown store.
//! - [`node::Output::ServeLocal`] names digest, size and the resolved range (the core answers
//!   416 itself); [`node::Output::Fetch`] names the peer's address (chosen by the core among
//!   those the lookup reported), the method, the path and the exact range to send.
//! - The stall watchdog of a relayed body is a core timer: the core polls the pipe's byte
//!   counter ([`node::Output::PollProgress`] / [`node::Input::PipeProgress`]) and stops a
//!   stalled body ([`node::Output::Interrupt`]) to resume it elsewhere.
//!
//! Every deadline of [`node::Node::poll_timeout`] comes with its reason ([`node::NodeTimeout`],
//! [`mirror::TimeoutReason`]).
//!
//! # The run loop
//!
//! ```
//! use std::time::{Duration, Instant};
//! use speil_core::node::{Input, Node, NodeConfig, Output};
//! use speil_core::store::StoreEvent;
//!
//! let mut node = Node::new(NodeConfig::new(0u32));
//! let t0 = Instant::now(); // the adapter's clock; the core never reads one
//! // A fact…
//! node.handle(t0, Input::Store(StoreEvent::Snapshot(vec![]))).unwrap();
//! // …then every command…
//! while let Some(command) = node.poll_output() {
//!     match command {
//!         Output::RecheckStore => { /* read the store, report a Snapshot later */ }
//!         other => { /* execute it */ let _ = other; }
//!     }
//! }
//! // …then one timer.
//! let (at, _why) = node.poll_timeout().unwrap();
//! assert_eq!(at, t0 + Duration::from_secs(60));
//! node.handle_timeout(at);
//! assert_eq!(node.poll_output(), Some(Output::RecheckStore));
//! ```
#![deny(missing_docs)]

pub mod advertise;
pub mod backoff;
pub mod containerd_config;
pub mod digest;
pub mod error;
pub mod filter;
pub mod hosts;
pub mod keys;
pub mod limits;
pub mod manifest;
pub mod mirror;
pub mod node;
pub mod range;
pub mod reference;
pub mod request;
pub mod store;
pub mod walk;

pub use digest::{Algorithm, Digest, DigestError, Verifier};
pub use error::{ErrorCode, FailReason, OciError};
pub use keys::Key;
pub use manifest::{Manifest, ManifestError};
pub use range::{ByteRange, ResolvedRange};
pub use reference::Reference;
pub use request::{ContentRequest, RegistryRequest, parse_request};
