//! The tokio glue: TCP transport, executor, HTTP bootstrap server and connector.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;

use crate::bootstrap::{ByteStream, Connector, serve_id_connection};
use crate::{Config, Error, Handle, transport};

/// How long one `/id` exchange may take.
const ID_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs libp2p connection tasks on tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioExecutor;

impl libp2p::swarm::Executor for TokioExecutor {
    fn exec(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }
}

/// The tokio TCP transport (`TCP_NODELAY` on).
pub fn tcp_transport() -> libp2p::tcp::tokio::Transport {
    libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::new().nodelay(true))
}

/// Starts a node on the current tokio runtime: builds the transport, listens, and spawns the
/// driver.
pub fn start(config: Config) -> Result<Handle, Error> {
    let transport = transport::upgrade(tcp_transport(), &config.keypair, config.psk)?;
    let (handle, driver) = crate::start(config, transport, TokioExecutor)?;
    tokio::spawn(driver);
    Ok(handle)
}

/// Opens TCP connections with tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioConnector;

impl Connector for TokioConnector {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn ByteStream>>> {
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(Box::new(libp2p::tcp::tokio::TcpStream(stream)) as Box<dyn ByteStream>)
        }
        .boxed()
    }
}

/// A connector shared as the bootstrap types want it.
pub fn connector() -> Arc<dyn Connector> {
    Arc::new(TokioConnector)
}

/// Serves `GET /id` (`--http-bootstrap-addr`): this node's peer id and advertised addresses.
/// Returns the bound address and the server task (abort it to stop serving).
pub async fn serve_id(
    addr: SocketAddr,
    handle: Handle,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_id_on(tokio::net::TcpListener::bind(addr).await?, handle)
}

/// [`serve_id`] on a listener the caller bound (e.g. `[::]`, which takes both families).
pub fn serve_id_on(
    listener: tokio::net::TcpListener,
    handle: Handle,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "http bootstrap accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut stream = libp2p::tcp::tokio::TcpStream(stream);
                let body = || {
                    crate::bootstrap::render_id(&handle.local_peer_id(), &handle.advertised_addrs())
                };
                let exchange = serve_id_connection(&mut stream, body);
                match tokio::time::timeout(ID_EXCHANGE_TIMEOUT, exchange).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "http bootstrap request"),
                    Err(_) => tracing::debug!(%remote, "http bootstrap request timed out"),
                }
            });
        }
    });
    Ok((local, task))
}
