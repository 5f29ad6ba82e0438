//! [`Runtime`] on tokio (the `speil` binary).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt as _};
use tokio::io::{Interest, ReadBuf};

use crate::runtime::{Runtime, Timer, try_sendfile};

/// The tokio runtime the caller runs on (every method must be called inside it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

/// A tokio stream with `futures-io` traits.
#[derive(Debug)]
pub struct Stream<S>(pub S);

/// A TCP connection on tokio.
pub type Tcp = Stream<tokio::net::TcpStream>;

impl<S: tokio::io::AsyncRead + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsFd for Stream<tokio::net::TcpStream> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// tokio's timer, resettable.
#[derive(Debug)]
pub struct Sleep(Pin<Box<tokio::time::Sleep>>);

impl std::future::Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl Timer for Sleep {
    fn reset(&mut self, deadline: Instant) {
        self.0
            .as_mut()
            .reset(tokio::time::Instant::from_std(deadline));
    }
}

impl Runtime for Tokio {
    type Tcp = Tcp;
    type Listener = tokio::net::TcpListener;
    type Unix = Stream<tokio::net::UnixStream>;
    type Timer = Sleep;
    type HyperTcp = hyper_util::rt::TokioIo<tokio::net::TcpStream>;

    fn name(&self) -> &'static str {
        "tokio"
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn timer(&self, deadline: Instant) -> Sleep {
        Sleep(Box::pin(tokio::time::sleep_until(
            tokio::time::Instant::from_std(deadline),
        )))
    }

    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        tokio::spawn(fut);
    }

    fn spawn_blocking<T, F>(&self, f: F) -> BoxFuture<'static, io::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .map(|joined| joined.map_err(io::Error::other))
            .boxed()
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Tcp>> {
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Stream(stream))
        }
        .boxed()
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    fn listener_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn poll_accept(
        &self,
        listener: &Self::Listener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Tcp, SocketAddr)>> {
        let (stream, remote) = ready!(listener.poll_accept(cx))?;
        stream.set_nodelay(true)?;
        Poll::Ready(Ok((Stream(stream), remote)))
    }

    fn hyper_tcp(&self, tcp: Tcp) -> Self::HyperTcp {
        // hyper-util reads straight into hyper's buffer: no scratch copy.
        hyper_util::rt::TokioIo::new(tcp.0)
    }

    fn connect_unix(&self, path: &Path) -> BoxFuture<'static, io::Result<Self::Unix>> {
        let path = path.to_path_buf();
        async move { Ok(Stream(tokio::net::UnixStream::connect(path).await?)) }.boxed()
    }

    fn poll_sendfile(
        &self,
        socket: &Tcp,
        file: &File,
        offset: u64,
        len: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(socket.0.poll_write_ready(cx))?;
            match socket.0.try_io(Interest::WRITABLE, || {
                try_sendfile(&socket.0, file, offset, len)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}
