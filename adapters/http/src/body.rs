//! Response bodies: empty, small and whole, a file region, a byte stream; all yield chunks of
//! at most [`CHUNK_SIZE`] bytes, and a body that cannot deliver all its bytes ends with an
//! error (hyper then aborts the connection) rather than with a clean, short end.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use futures::stream::BoxStream;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

use crate::source::BlobBody;
use crate::{BoxError, CHUNK_SIZE};

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
    match body {
        BlobBody::File { file, offset, len } => FileBody {
            file,
            offset,
            remaining: len,
        }
        .boxed_unsync(),
        BlobBody::Stream(stream) => StreamBody {
            stream,
            remaining: len,
        }
        .boxed_unsync(),
    }
}

/// A body that ended before all its bytes were delivered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Truncated(pub String);

/// A file region read with positional reads, [`CHUNK_SIZE`] bytes at a time.
struct FileBody {
    file: File,
    offset: u64,
    remaining: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).map_or(CHUNK_SIZE, |r| r.min(CHUNK_SIZE));
        let mut buf = BytesMut::zeroed(want);
        // A read of at most 64 KiB from a local file: short enough to do in place.
        let n = match self.file.read_at(&mut buf, self.offset) {
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
