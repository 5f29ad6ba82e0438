//! What the node's content store holds, as the core sees it.
//!
//! The containerd adapter (or any other content source) walks each image from its target and
//! reports the digests that are actually present; the advertiser turns these facts into
//! advertise/withdraw commands. The core never talks to containerd itself.

use crate::digest::Digest;

/// One image record of the store, walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    /// The image's full name as the store keeps it, e.g. `docker.io/library/alpine:3.20`,
    /// `127.0.0.1:5000/test/small@sha256:…` or `sha256:<config>` (CRI's id record).
    pub name: String,
    /// The digest the name points at (an index or a manifest).
    pub target: Digest,
    /// Every digest reachable from `target` (indexes, manifests, configs, layers) that is
    /// present in the content store, `target` included when present. Sorted, no duplicates.
    pub present: Vec<Digest>,
}

/// A fact about the store, reported by the content-source adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The full state of the store (start-up, a reconnect after containerd restarted, or the
    /// periodic re-check). Replaces everything known before.
    Snapshot(Vec<ImageState>),
    /// An image was created or updated (walked after the event).
    ImagePut(ImageState),
    /// An image record was deleted.
    ImageDeleted {
        /// The deleted image's full name.
        name: String,
    },
    /// The connection to the store was lost; what it held is unknown until the next snapshot.
    Disconnected,
}
