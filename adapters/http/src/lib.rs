//! speil's HTTP adapter: the registry API server (SPEC.md §2), the peer-fetch client and the
//! body pipe that resumes a broken blob (§3), the metrics and debug server (§7), and the
//! runtime-neutral driver that owns the core [`Node`](speil_core::node::Node).
//!
//! # Shape
//!
//! - [`driver::start`] builds one future (the runtime spawns it) that owns the node, and a
//!   [`driver::DriverHandle`] for the registry server. Everything that happens — a client
//!   request, providers found, a peer's headers, a broken body, a store event, a timer —
//!   reaches the driver over a channel; it feeds the node, drains its outputs and executes
//!   them (lookups and fetches run as spawned tasks that report back over a channel), then
//!   arms one timer at the node's `poll_timeout`.
//! - [`server::RegistryService`] is the hyper 1 `Service` for one registry connection. It
//!   parses and validates the request, checks the local store, asks the driver what to do and
//!   answers: from the local store, with an OCI error, or with a peer's response whose body is
//!   a [`pipe`] that can be continued by another peer's body.
//! - [`debug::MetricsService`] serves `/metrics` and the `/debug/web/` page.
//!
//! # Runtimes
//!
//! Nothing here needs a particular async runtime: the runtime supplies a [`Runtime`]
//! (spawn, sleep, TCP connect), a [`ContentSource`] (the store) and a [`Router`] (the DHT).
//! hyper's server and client connections run over whatever IO the runtime gives them. The
//! tokio glue is the `tokio_rt` module (cargo feature `tokio`); nothing else here uses tokio
//! (hyper itself links only tokio's runtime-free `sync` types).
//!
//! # Zero copy
//!
//! A hyper body yields `Bytes`; it cannot hand a file descriptor to the socket. A local blob
//! ([`BlobBody::File`]) becomes a body that reads its region in chunks of at most
//! [`CHUNK_SIZE`] bytes with positional reads (no shared file cursor), and the response also
//! carries the region as a [`body::FileRegion`] extension. The tokio build serves
//! connections with its own HTTP/1.1 loop ([`zerocopy`]) that takes the region and sends it
//! with `sendfile`; under hyper (the smol build) the body reads it.

#![deny(missing_docs)]

pub mod auth;
pub mod body;
pub mod client;
pub mod conn;
pub mod debug;
pub mod driver;
pub mod metrics;
pub mod pipe;
pub mod server;
pub mod source;

pub use conn::Server;
pub use source::{BlobBody, ContentSource, Provider, Router, SourceError};
pub use speil_driver::Runtime;

/// Largest chunk a response body yields (bytes).
pub const CHUNK_SIZE: usize = 64 * 1024;

/// The error type of response bodies (what hyper sees when a body breaks).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
