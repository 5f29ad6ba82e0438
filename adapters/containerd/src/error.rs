//! The adapter's error type.

use std::path::PathBuf;

use speil_core::{Digest, DigestError};

/// What went wrong talking to containerd or reading its content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The containerd socket could not be connected.
    #[error("cannot connect to containerd at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The namespace is not usable as gRPC metadata.
    #[error("invalid containerd namespace {0:?}")]
    InvalidNamespace(String),
    /// A gRPC call failed (containerd unreachable, or it refused the call).
    #[error("containerd {call} failed: {status}")]
    Rpc {
        /// The call, e.g. `content.Info`.
        call: &'static str,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The image record or blob does not exist.
    #[error("{0} not found in containerd")]
    NotFound(String),
    /// containerd reported a digest speil does not accept.
    #[error("invalid digest {value:?}: {source}")]
    InvalidDigest {
        /// The value as received.
        value: String,
        /// Why it is not a digest.
        #[source]
        source: DigestError,
    },
    /// A blob is larger than the caller's limit for reading it whole.
    #[error("blob {digest} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The requested range does not lie inside the blob.
    #[error("range {offset}+{len} is outside blob {digest} of {size} bytes")]
    RangeOutOfBounds {
        /// The blob.
        digest: Digest,
        /// First byte requested.
        offset: u64,
        /// Number of bytes requested.
        len: u64,
        /// The blob's size.
        size: u64,
    },
    /// A blob's bytes ended before the expected length or did not match its digest.
    #[error("blob {digest} is corrupt or truncated: {reason}")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// What was wrong.
        reason: String,
    },
    /// Reading the content directory failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
        move |status| Error::Rpc {
            call,
            status: Box::new(status),
        }
    }

    /// Whether the thing asked for does not exist (as opposed to containerd being unreachable).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound(_) => true,
            Error::Rpc { status, .. } => status.code() == tonic::Code::NotFound,
            _ => false,
        }
    }

    /// Whether the error says containerd could not be reached or answered with a transport
    /// failure, as opposed to a well-formed refusal.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// The adapter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
