//! speil's containerd adapter.
//!
//! Reads what speil serves and advertises from containerd over its gRPC API: image records
//! (listed, resolved and walked from their target through indexes and manifests to configs
//! and layers), blob bytes (straight from the content directory when readable, else the
//! content `Read` stream), events (`/images/*`, `/content/create`) turned into the core's
//! [`StoreEvent`](speil_core::store::StoreEvent)s, the CRI calls speil needs
//! (`RuntimeService/Version` and `Status`, `ImageService/PullImage`), and the Introspection
//! `Plugins` call (containerd 2.4 exports its CRI image settings there).
//!
//! # Runtimes
//!
//! The adapter names no runtime: a [`Containerd<R>`] works on any
//! [`speil_driver::Runtime`] `R`, passed by value to [`Containerd::connect`]
//! (`speil_driver::tokio::Tokio` in the tokio build, `speil_driver::smol::Smol` in the smol
//! build). What it needs from `R`:
//!
//! - the channel ([`connect_unix`]): tonic's tasks run on `R`'s executor
//!   ([`speil_driver::io::Executor`]) over `R`'s unix socket
//!   ([`speil_driver::io::hyper_io`]). No tonic timeout or HTTP/2 keep-alive is set: both would
//!   start tokio timers, and deadlines are the core's (the driver drops a call that took too
//!   long). With neither, tonic's channel needs no tokio runtime.
//! - blocking work: the content directory check, opening a blob's file and reading a manifest
//!   from it run on [`Runtime::spawn_blocking`](speil_driver::Runtime::spawn_blocking).
//! - the watcher ([`watch`], [`spawn_watch`]) waits on `R`'s timer between reconnects (delays
//!   from the core's [`Backoff`](speil_core::backoff::Backoff)) and is spawned on `R`.
#![deny(missing_docs)]

mod client;
mod cri;
mod error;
mod introspection;
mod store;
mod watch;

#[cfg(test)]
mod tests;

pub use client::{BlobBody, BlobRange, ByteStream, Config, Containerd, ContentInfo, connect_unix};
pub use containerd_client::services::v1::Image;
pub use cri::{CriCondition, CriStatus};
pub use error::{Error, Result};
pub use store::ContainerdStore;
pub use watch::{StoreEvents, WatchEnded, spawn_watch, watch};
