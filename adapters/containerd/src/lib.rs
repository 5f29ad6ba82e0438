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
//! [`Containerd::from_channel`] takes any `tonic` channel, so a runtime other than tokio can
//! build its own (an `Endpoint` with its executor and a unix-socket connector; no tonic
//! timeouts or keep-alives, which need tokio's reactor). The watcher is a plain future driven
//! by a [`Sleep`] the runtime provides. The tokio glue lives in [`tokio_rt`] alone.
#![deny(missing_docs)]

mod client;
mod cri;
mod error;
mod introspection;
pub mod tokio_rt;
mod watch;

pub use client::{BlobBody, BlobRange, ByteStream, Config, Containerd, ContentInfo};
pub use containerd_client::services::v1::Image;
pub use cri::{CriCondition, CriStatus};
pub use error::{Error, Result};
pub use watch::{Sleep, StoreEvents, watch};
