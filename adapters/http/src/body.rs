//! Response bodies: empty, small and whole, a file region, a byte stream; all yield chunks of
//! at most [`CHUNK_SIZE`] bytes, and a body that cannot deliver all its bytes ends with an
//! error (hyper then aborts the connection) rather than with a clean, short end.
//!
//! The body of a file region is also offered, as a [`FileRegion`] response extension, to a
//! connection that can send the region itself (the tokio server `sendfile`s it): whichever
//! takes the region first sends it, the other sends nothing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use futures::stream::BoxStream;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

use crate::{BoxError, CHUNK_SIZE};
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

/// The body of a blob range.
pub fn blob(body: BlobBody, len: u64) -> ResponseBody {
    blob_region(body, len).0
}

/// The body of a blob range and, for a file region, the [`FileRegion`] to attach to the
/// response as an extension (so that the connection may send the region itself).
pub fn blob_region(body: BlobBody, len: u64) -> (ResponseBody, Option<FileRegion>) {
    match body {
        BlobBody::File { file, offset, len } => {
            let region = FileRegion {
                shared: Arc::new(RegionShared {
                    region: Mutex::new(Some(Region { file, offset, len })),
                    len,
                    sent: AtomicU64::new(0),
                }),
            };
            let body = FileBody::Offered(region.shared.clone()).boxed_unsync();
            (body, Some(region))
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

/// A file region a response body would read, offered to the connection: when it takes the
/// region before the body is first polled, the body is empty and the connection sends the
/// region itself. Cloning shares the region.
#[derive(Clone)]
pub struct FileRegion {
    shared: Arc<RegionShared>,
}

struct RegionShared {
    region: Mutex<Option<Region>>,
    len: u64,
    sent: AtomicU64,
}

/// The file, first byte and length of a region.
pub(crate) struct Region {
    pub(crate) file: File,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl FileRegion {
    /// Bytes in the region.
    pub fn bytes(&self) -> u64 {
        self.shared.len
    }

    /// Bytes the connection reported sending itself; 0 when the body read the region.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Takes the region to send it: `None` when the body has started reading it (or it was
    /// taken already). After a take the body yields nothing.
    pub(crate) fn take(&self) -> Option<Region> {
        self.shared
            .region
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// A region of `len` bytes of an empty file (for tests of the sending side).
    #[cfg(test)]
    pub(crate) fn for_tests(len: u64) -> FileRegion {
        FileRegion {
            shared: Arc::new(RegionShared {
                region: Mutex::new(None),
                len,
                sent: AtomicU64::new(0),
            }),
        }
    }

    /// Counts `n` bytes of the region sent by the connection.
    pub(crate) fn record_sent(&self, n: u64) {
        self.shared.sent.fetch_add(n, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for FileRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRegion")
            .field("bytes", &self.bytes())
            .field("sent", &self.sent())
            .finish_non_exhaustive()
    }
}

/// A body that ended before all its bytes were delivered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Truncated(pub String);

/// A file region read with positional reads, [`CHUNK_SIZE`] bytes at a time.
enum FileBody {
    /// Not polled yet: the region may still be taken by the connection.
    Offered(Arc<RegionShared>),
    /// Reading the region.
    Reading(FileReader),
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let FileBody::Offered(shared) = &*self {
            let taken = shared
                .region
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            // Taken by the connection, which sends the bytes itself: nothing to yield.
            let reader = match taken {
                Some(r) => FileReader {
                    file: Some(r.file),
                    offset: r.offset,
                    remaining: r.len,
                },
                None => FileReader::done(),
            };
            *self = FileBody::Reading(reader);
        }
        match &mut *self {
            FileBody::Reading(reader) => Pin::new(reader).poll_frame(cx),
            FileBody::Offered(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FileBody::Offered(shared) => shared.len == 0,
            FileBody::Reading(reader) => reader.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FileBody::Offered(shared) => SizeHint::with_exact(shared.len),
            FileBody::Reading(reader) => reader.size_hint(),
        }
    }
}

/// The reading side of a [`FileBody`].
struct FileReader {
    file: Option<File>,
    offset: u64,
    remaining: u64,
}

impl FileReader {
    fn done() -> FileReader {
        FileReader {
            file: None,
            offset: 0,
            remaining: 0,
        }
    }
}

impl Body for FileReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let Some(file) = &self.file else {
            return Poll::Ready(None);
        };
        let want = usize::try_from(self.remaining).map_or(CHUNK_SIZE, |r| r.min(CHUNK_SIZE));
        let mut buf = BytesMut::zeroed(want);
        // A read of at most 64 KiB from a local file: short enough to do in place.
        let n = match file.read_at(&mut buf, self.offset) {
            Ok(0) => {
                let err = Truncated(format!("blob file ended {} bytes early", self.remaining));
                self.remaining = 0;
                return Poll::Ready(Some(Err(err.into())));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => {
                self.remaining = 0;
                return Poll::Ready(Some(Err(e.into())));
            }
        };
        buf.truncate(n);
        self.offset += n as u64;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A stream of exactly `remaining` bytes, re-chunked to at most [`CHUNK_SIZE`].
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
