//! Response bodies: empty, small and whole, a file region, a byte stream; all yield chunks of
//! at most [`CHUNK_SIZE`](crate::CHUNK_SIZE) bytes, and a body that cannot deliver all its bytes ends with an
//! error (hyper then aborts the connection) rather than with a clean, short end.
//!
//! A file region is not a body: it travels as a [`FileRegion`] response extension, and the
//! connection loop (the one server path) sends it with `sendfile`.

use std::fs::File;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

use crate::BoxError;
use speil_driver::BlobBody;

/// The body type of every response this crate builds.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> ResponseBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The body of a blob range and, for a file region, the [`FileRegion`] to attach to the
/// response as an extension: the body of a file region is empty, and the connection loop
/// sends the region itself (with `sendfile`).
pub fn blob_region(body: BlobBody, len: u64) -> (ResponseBody, Option<FileRegion>) {
    match body {
        BlobBody::File { file, offset, len } => {
            (empty(), Some(FileRegion::new(Arc::new(file), offset, len)))
        }
        BlobBody::Stream(stream) => {
            let body = StreamBody {
                stream,
                remaining: len,
            }
            .boxed_unsync();
            (body, None)
        }
    }
}

/// A region of a file that a response sends: `len` bytes from `offset` (positional, so the
/// file's cursor is not used). The connection loop takes it from the response's extensions
/// and sends it; clones share the count of bytes sent.
#[derive(Clone)]
pub struct FileRegion {
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
    len: u64,
    sent: Arc<AtomicU64>,
}

impl FileRegion {
    /// `len` bytes of `file` from `offset`.
    pub fn new(file: Arc<File>, offset: u64, len: u64) -> FileRegion {
        FileRegion {
            file,
            offset,
            len,
            sent: Arc::default(),
        }
    }

    /// Bytes in the region.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Bytes the connection reported sending.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes of the region sent by the connection.
    pub(crate) fn record_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for FileRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRegion")
            .field("offset", &self.offset)
            .field("bytes", &self.bytes())
            .field("sent", &self.sent())
            .finish_non_exhaustive()
    }
}

/// A body that ended before all its bytes were delivered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Truncated(pub String);

/// A stream of exactly `remaining` bytes, re-chunked to at most [`CHUNK_SIZE`](crate::CHUNK_SIZE).
struct StreamBody {
    stream: BoxStream<'static, std::io::Result<Bytes>>,
    remaining: u64,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let err =
                        Truncated(format!("blob stream ended {} bytes early", self.remaining));
                    self.remaining = 0;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.remaining = 0;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(mut chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    let cap = usize::try_from(self.remaining).unwrap_or(usize::MAX);
                    chunk.truncate(cap);
                    // A chunk is passed on as the stream produced it (it is in memory
                    // already); sources yield chunks of at most CHUNK_SIZE.
                    self.remaining -= chunk.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
