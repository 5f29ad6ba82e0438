//! [`Runtime`] on smol / async-io (the `speil-smol` binary).
//!
//! A [`Smol`] value is an [`async_executor::Executor`] shared by every task: [`Runtime::spawn`]
//! detaches tasks on it, and [`Smol::block_on`] runs a program on it with a fixed number of
//! executor threads. IO and timers are async-io's (its reactor is driven by whichever thread
//! is idle in [`async_io::block_on`]); blocking work runs on the `blocking` crate's thread
//! pool. No tokio runtime is involved anywhere.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use async_executor::Executor;
use async_io::Async;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};

use crate::runtime::{Runtime, Timer, try_sendfile};

/// The smol runtime: an executor shared by every clone.
#[derive(Clone)]
pub struct Smol {
    ex: Arc<Executor<'static>>,
}

impl std::fmt::Debug for Smol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smol").finish_non_exhaustive()
    }
}

impl Default for Smol {
    fn default() -> Self {
        Self::new()
    }
}

impl Smol {
    /// A runtime on a new executor. Its tasks run only while some thread runs the executor
    /// ([`Smol::block_on`], or the caller's own `executor().run(…)`).
    pub fn new() -> Self {
        Self::from_executor(Arc::new(Executor::new()))
    }

    /// A runtime spawning on `ex`.
    pub fn from_executor(ex: Arc<Executor<'static>>) -> Self {
        Smol { ex }
    }

    /// The executor tasks are spawned on.
    pub fn executor(&self) -> &Arc<Executor<'static>> {
        &self.ex
    }

    /// Runs `main` to completion on the calling thread, with `threads` more threads
    /// (`speil-smol-0`, `speil-smol-1`, …) running this runtime's tasks until `main` is done;
    /// the calling thread runs tasks too while `main` waits. Tasks still pending when `main`
    /// returns are not run further (nor dropped).
    ///
    /// # Panics
    ///
    /// When a thread cannot be started, and when `main` panics (the executor threads stop).
    pub fn block_on<T>(&self, threads: usize, main: impl Future<Output = T>) -> T {
        // Dropping the sender (when `main` is done, or unwinds) stops every executor thread.
        let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
        let stop = stop_rx.shared();
        let workers: Vec<_> = (0..threads)
            .map(|n| {
                let ex = self.ex.clone();
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("speil-smol-{n}"))
                    .spawn(move || {
                        let _ = async_io::block_on(ex.run(stop));
                    })
                    .expect("cannot start a smol executor thread")
            })
            .collect();
        let out = async_io::block_on(self.ex.run(main));
        drop(stop_tx);
        for worker in workers {
            let _ = worker.join();
        }
        out
    }
}

/// async-io's timer, resettable.
#[derive(Debug)]
pub struct SmolTimer(async_io::Timer);

impl Future for SmolTimer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Timer for SmolTimer {
    fn reset(&mut self, deadline: Instant) {
        self.0.set_at(deadline);
    }
}

/// An async-io stream whose `close` shuts down the write half, as tokio's does (async-io's
/// own `close` only flushes, so the peer would see no end of stream until the socket is
/// dropped).
#[derive(Debug)]
pub struct Stream<T>(pub Async<T>);

/// A TCP connection on smol.
pub type Tcp = Stream<TcpStream>;

macro_rules! stream_io {
    ($io:ty) => {
        impl AsyncRead for Stream<$io> {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.0).poll_read(cx, buf)
            }

            fn poll_read_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &mut [io::IoSliceMut<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
            }
        }

        impl AsyncWrite for Stream<$io> {
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
                ready!(Pin::new(&mut self.0).poll_flush(cx))?;
                Poll::Ready(self.0.get_ref().shutdown(std::net::Shutdown::Write))
            }
        }

        impl AsFd for Stream<$io> {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.0.as_fd()
            }
        }
    };
}

stream_io!(TcpStream);
stream_io!(UnixStream);

impl Runtime for Smol {
    type Tcp = Tcp;
    type Listener = Async<TcpListener>;
    type Unix = Stream<UnixStream>;
    type Timer = SmolTimer;
    type HyperTcp = crate::io::HyperIo<Self::Tcp>;

    fn name(&self) -> &'static str {
        "smol"
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn timer(&self, deadline: Instant) -> SmolTimer {
        SmolTimer(async_io::Timer::at(deadline))
    }

    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        self.ex.spawn(fut).detach();
    }

    fn spawn_blocking<T, F>(&self, f: F) -> BoxFuture<'static, io::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        // A panic is an error of this call, as tokio's `JoinError` is.
        blocking::unblock(move || std::panic::catch_unwind(AssertUnwindSafe(f)))
            .map(|done| done.map_err(|_| io::Error::other("blocking task panicked")))
            .boxed()
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Tcp>> {
        async move {
            let stream = Async::<TcpStream>::connect(addr).await?;
            stream.get_ref().set_nodelay(true)?;
            Ok(Stream(stream))
        }
        .boxed()
    }

    fn listen(&self, listener: TcpListener) -> io::Result<Self::Listener> {
        // `Async::new` makes the socket non-blocking.
        Async::new(listener)
    }

    fn listener_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.get_ref().local_addr()
    }

    fn poll_accept(
        &self,
        listener: &Self::Listener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Tcp, SocketAddr)>> {
        loop {
            match listener.get_ref().accept() {
                Ok((stream, remote)) => {
                    let stream = Async::new(stream)?;
                    stream.get_ref().set_nodelay(true)?;
                    return Poll::Ready(Ok((Stream(stream), remote)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(listener.poll_readable(cx))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn hyper_tcp(&self, tcp: Self::Tcp) -> Self::HyperTcp {
        crate::io::hyper_io(tcp)
    }

    fn connect_unix(&self, path: &Path) -> BoxFuture<'static, io::Result<Self::Unix>> {
        let path = path.to_path_buf();
        async move { Ok(Stream(Async::<UnixStream>::connect(path).await?)) }.boxed()
    }

    fn poll_sendfile(
        &self,
        socket: &Tcp,
        file: &File,
        offset: u64,
        len: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        // Tried first, as async-io's own writes are: `poll_writable` reports only readiness
        // events delivered since the last `Pending`, so a socket that is already writable would
        // otherwise wait for one.
        loop {
            match try_sendfile(socket, file, offset, len) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(socket.0.poll_writable(cx))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return Poll::Ready(other),
            }
        }
    }
}
