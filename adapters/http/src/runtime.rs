//! What the async runtime supplies: spawning, sleeping and TCP connections.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;

/// The runtime's services, by value (a tokio build and a smol build each implement it).
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The IO type of a connection to a peer.
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    /// Runs `fut` to completion in the background.
    fn spawn(&self, fut: BoxFuture<'static, ()>);

    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Opens a TCP connection to `addr` (no timeout here: the core decides when a dial took
    /// too long and cancels the fetch).
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Self::Io>>;
}
