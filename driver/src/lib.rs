//! speil's runtime side: the one [`Runtime`] seam, the ports the adapters implement, and the
//! event loop that owns the core's `Node`.
//!
//! ```text
//!            facts (inputs)                       commands (outputs)
//!  adapters ───────────────▶ driver ──handle_*──▶ Node ──poll_output──▶ driver ───▶ adapters
//!                              ▲                                         │
//!                              └──── one timer at Node::poll_timeout ◀───┘
//! ```
//!
//! A runtime is a value implementing [`Runtime`]: the tokio build passes [`tokio::Tokio`],
//! the smol build [`smol::Smol`], the simulated cluster its own simulated runtime. The
//! driver takes time only from it, so the same loop runs on all three.

pub mod io;
pub mod metrics;
pub mod node;
pub mod ports;
pub mod runtime;
#[cfg(feature = "smol")]
pub mod smol;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use node::{
    Decision, DriverConfig, DriverHandle, ImageSummary, Parts, PipeControl, PipeEvent,
    PipeReporter, Relay, Shared,
};
pub use ports::{BlobBody, ContentStore, PeerClient, PeerRequest, Provider, Router, SourceError};
pub use runtime::{Runtime, RuntimeExt, Timer, within};
