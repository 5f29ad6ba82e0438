//! Adapters between the runtime's IO types and the libraries that need their own traits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};

use crate::runtime::Runtime;

/// Bytes of the scratch buffer a [`HyperIo`] reads into.
const SCRATCH: usize = 64 * 1024;

/// A connection as hyper and tonic read and write it: hyper's `rt` traits over a `futures-io`
/// stream.
///
/// hyper hands out uninitialised read buffers; safe code may only fill them with
/// `put_slice`. So each connection reads into one scratch buffer, initialised once, and copies
/// what arrived (a read that is not ready costs nothing). Runtimes that can read into
/// hyper's buffer directly give their TCP streams their own adapter
/// ([`Runtime::hyper_tcp`]).
#[derive(Debug)]
pub struct HyperIo<T> {
    io: T,
    scratch: Box<[u8]>,
}

/// Wraps a runtime connection for hyper.
pub fn hyper_io<T>(io: T) -> HyperIo<T> {
    HyperIo {
        io,
        scratch: vec![0; SCRATCH].into_boxed_slice(),
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let want = buf.remaining().min(this.scratch.len());
        let n = ready!(Pin::new(&mut this.io).poll_read(cx, &mut this.scratch[..want]))?;
        buf.put_slice(&this.scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// hyper's (and tonic's) executor, spawning on a [`Runtime`].
#[derive(Debug, Clone)]
pub struct Executor<R>(pub R);

impl<R, F> hyper::rt::Executor<F> for Executor<R>
where
    R: Runtime,
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0
            .spawn(Box::pin(fut) as Pin<Box<dyn Future<Output = ()> + Send>>);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass_through_whole_and_in_pieces() {
        use hyper::rt::Read as _;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut io = hyper_io(futures::io::Cursor::new(data.clone()));
        let mut got = Vec::new();
        futures::executor::block_on(async {
            loop {
                // A hyper read buffer smaller and larger than the scratch buffer, in turn.
                let mut storage =
                    vec![std::mem::MaybeUninit::<u8>::uninit(); 1000 + got.len() % 100_000];
                let mut rb = hyper::rt::ReadBuf::uninit(&mut storage);
                futures::future::poll_fn(|cx| Pin::new(&mut io).poll_read(cx, rb.unfilled()))
                    .await
                    .unwrap();
                if rb.filled().is_empty() {
                    break;
                }
                got.extend_from_slice(rb.filled());
            }
        });
        assert!(got == data);
    }
}
