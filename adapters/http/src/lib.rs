//! speil's HTTP adapter: the registry API server (SPEC.md §2), the peer client and the body
//! pipe that resumes a broken blob (§3), and the metrics and debug server (§7).
//!
//! # Shape
//!
//! - [`conn::Server`] is the one HTTP/1.1 server path (DESIGN §1): an accept loop and a
//!   connection loop over the pure `speil-h1` codec, generic over the
//!   [`Runtime`](speil_driver::Runtime), sending local blobs with the runtime's `sendfile`.
//!   The registry, the metrics and debug page, and `cleanup`'s `/readyz` all run on it.
//! - [`server::RegistryService`] is the service for registry connections. It parses and
//!   validates the request, asks the driver (`speil-driver`, which owns the core `Node`) what
//!   to do and executes the answer: exactly the local bytes the node named, an OCI error, or a
//!   peer's response whose body is a [`pipe`] that the driver can continue with another
//!   peer's body or interrupt.
//! - [`client::HyperPeers`] is the driver's [`PeerClient`](speil_driver::PeerClient): hyper's
//!   HTTP/1.1 client over the runtime's TCP connections (hyper is only a client: here and
//!   in the debug page's measure action).
//! - [`debug::MetricsService`] serves `/metrics` and the `/debug/web/` page.
//!
//! # Zero copy
//!
//! A hyper body yields `Bytes`; it cannot hand a file descriptor to the socket (hyperium/hyper
//! #3026). A local blob ([`BlobBody::File`](speil_driver::BlobBody::File)) becomes a response
//! that carries its region as a [`body::FileRegion`] extension, and the connection loop sends
//! the region with `sendfile` on every runtime (a body that would read it in chunks stays as
//! the fallback for other servers).

#![deny(missing_docs)]

pub mod auth;
pub mod body;
pub mod client;
pub mod conn;
pub mod debug;
pub mod hasher;
pub mod pipe;
pub mod server;

pub use client::HyperPeers;
pub use conn::Server;

/// Largest chunk a response body yields (bytes).
pub const CHUNK_SIZE: usize = 64 * 1024;

/// The error type of response bodies (what hyper sees when a body breaks).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
