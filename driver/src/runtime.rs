//! The one runtime seam: what an async runtime supplies to speil.
//!
//! Everything the driver and the adapters need from a runtime is here — the clock, one
//! resettable timer, spawning, blocking work, TCP and unix-socket connections, and `sendfile`.
//! Each runtime implements [`Runtime`] once ([`crate::tokio`], [`crate::smol`], and the
//! simulated runtime of the test harness); nothing else in speil names a runtime.
//!
//! The trait has no timeouts, retries or limits: those are the core's decisions. A runtime
//! only waits for what it is told to wait for.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};

/// A timer that completes at its deadline and can be moved to another one (the driver keeps
/// one and resets it to the core's `poll_timeout` after every step).
pub trait Timer: Future<Output = ()> + Send + Unpin + 'static {
    /// Completes at `deadline` instead (a deadline in the past completes at once).
    fn reset(&mut self, deadline: Instant);
}

/// The services of an async runtime, by value: cheap to clone, shared by every task.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// A TCP connection.
    type Tcp: AsyncRead + AsyncWrite + AsFd + Unpin + Send + Sync + 'static;
    /// A listening TCP socket.
    type Listener: Send + Sync + 'static;
    /// A unix-socket connection.
    type Unix: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The timer.
    type Timer: Timer;
    /// A TCP connection as hyper reads and writes it (the peer client).
    type HyperTcp: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    /// The runtime's name, as `version` prints it (`tokio`, `smol`).
    fn name(&self) -> &'static str;

    /// The current time. The driver reads time only here, so a simulated runtime can run it
    /// on simulated time.
    fn now(&self) -> Instant;

    /// A timer that completes at `deadline`.
    fn timer(&self, deadline: Instant) -> Self::Timer;

    /// Runs `fut` to completion in the background. Dropping what the future owns is how a
    /// task is cancelled (wrap it in [`futures::future::Abortable`]).
    fn spawn(&self, fut: BoxFuture<'static, ()>);

    /// Runs `f` on a thread where blocking is allowed (file system and DNS calls).
    fn spawn_blocking<T, F>(&self, f: F) -> BoxFuture<'static, io::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static;

    /// Opens a TCP connection to `addr` with `TCP_NODELAY` on. No timeout here: the core
    /// decides when a dial took too long and drops the future.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Self::Tcp>>;

    /// Takes a bound, listening socket (bound by the caller, e.g. dual-stack) into the
    /// runtime. The socket may be blocking or not; the runtime makes it non-blocking.
    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Self::Listener>;

    /// The local address of `listener`.
    fn listener_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr>;

    /// Polls for the next connection on `listener` (`TCP_NODELAY` on).
    fn poll_accept(
        &self,
        listener: &Self::Listener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::Tcp, SocketAddr)>>;

    /// A TCP connection for hyper: a runtime that can read into hyper's buffers directly
    /// gives its own adapter, others [`crate::io::hyper_io`].
    fn hyper_tcp(&self, tcp: Self::Tcp) -> Self::HyperTcp;

    /// Connects to the unix socket at `path`.
    fn connect_unix(&self, path: &Path) -> BoxFuture<'static, io::Result<Self::Unix>>;

    /// Sends at most `len` bytes of `file` from `offset` on `socket` with `sendfile(2)`,
    /// waiting until the socket is writable. `Ok(0)` means the file ended at `offset`.
    fn poll_sendfile(
        &self,
        socket: &Self::Tcp,
        file: &File,
        offset: u64,
        len: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>>;
}

/// Extension methods over [`Runtime`].
pub trait RuntimeExt: Runtime {
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> Self::Timer {
        let deadline = self.now() + duration;
        self.timer(deadline)
    }

    /// The next connection on `listener`.
    fn accept<'a>(
        &'a self,
        listener: &'a Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Tcp, SocketAddr)>> + Send + 'a {
        futures::future::poll_fn(move |cx| self.poll_accept(listener, cx))
    }

    /// [`Runtime::poll_sendfile`] as a future.
    fn sendfile<'a>(
        &'a self,
        socket: &'a Self::Tcp,
        file: &'a File,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        futures::future::poll_fn(move |cx| self.poll_sendfile(socket, file, offset, len, cx))
    }
}

impl<R: Runtime> RuntimeExt for R {}

/// `fut`, or `None` when `duration` passed first on `rt`'s clock. The duration is the
/// caller's budget (the core's); this is only the mechanism that races the two.
pub async fn within<R: Runtime, T>(
    rt: &R,
    duration: Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    futures::pin_mut!(fut);
    // The timer is armed only once `fut` has to wait: most writes and `sendfile` calls
    // complete on their first poll, and a timer per call costs the runtime's timer wheel a
    // registration and a removal each time (measured on local serving).
    let mut timer: Option<R::Timer> = None;
    futures::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        let timer = timer.get_or_insert_with(|| rt.sleep(duration));
        match std::pin::Pin::new(timer).poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// One `sendfile(2)` attempt (non-blocking socket): the part every runtime shares.
pub fn try_sendfile(socket: impl AsFd, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    let mut at = offset;
    rustix::fs::sendfile(socket, file, Some(&mut at), len).map_err(io::Error::from)
}
