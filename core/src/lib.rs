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
#![deny(missing_docs)]

pub mod advertise;
pub mod backoff;
pub mod containerd_config;
pub mod digest;
pub mod error;
pub mod filter;
pub mod hosts;
pub mod keys;
pub mod manifest;
pub mod mirror;
pub mod node;
pub mod range;
pub mod reference;
pub mod request;
pub mod store;
pub mod walk;

pub use digest::{Algorithm, Digest, DigestError};
pub use error::{ErrorCode, FailReason, OciError};
pub use keys::Key;
pub use manifest::{Manifest, ManifestError};
pub use range::{ByteRange, ResolvedRange};
pub use reference::Reference;
pub use request::{ContentRequest, RegistryRequest, parse_request};
