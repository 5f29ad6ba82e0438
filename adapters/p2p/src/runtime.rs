//! The node on a [`Runtime`]: [`start`] (the TCP transport, the executor of connection tasks,
//! the spawned driver), the bootstrap [`connector`], and the HTTP bootstrap `/id` server
//! ([`serve_id`], [`serve_id_on`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{AbortHandle, Abortable, BoxFuture, Either};
use futures::{FutureExt as _, TryFutureExt as _};
use speil_driver::{Runtime, RuntimeExt as _};

use crate::bootstrap::{ByteStream, Connector, render_id, serve_id_connection};
use crate::tcp::{ACCEPT_ERROR_PAUSE, TcpTransport};
use crate::{Config, Error, Handle, transport};

/// Runs libp2p's connection tasks on a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeExecutor<R>(pub R);

impl<R: Runtime> libp2p::swarm::Executor for RuntimeExecutor<R> {
    fn exec(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }
}

/// Starts a node on `rt`: the TCP transport ([`TcpTransport`]) upgraded as
/// [`transport::upgrade`] does, listening on [`Config::listen`], its driver spawned on `rt`.
/// Must be called where `rt` can be used (inside the tokio runtime, for tokio).
pub fn start<R: Runtime>(rt: R, config: Config) -> Result<Handle, Error> {
    let tcp = TcpTransport::new(rt.clone());
    let transport = transport::upgrade(tcp, &config.keypair, config.psk)?;
    let (handle, driver) = crate::driver::start_with_transport(rt.clone(), config, transport)?;
    rt.spawn(driver.boxed());
    Ok(handle)
}

/// Opens TCP connections with a runtime (for [`crate::bootstrap::HttpBootstrap`]).
#[derive(Debug, Clone)]
pub struct RuntimeConnector<R>(pub R);

impl<R: Runtime> Connector for RuntimeConnector<R> {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn ByteStream>>> {
        self.0
            .connect(addr)
            .map_ok(|stream| Box::new(stream) as Box<dyn ByteStream>)
            .boxed()
    }
}

/// A connector on `rt`, shared as the bootstrap types want it.
pub fn connector<R: Runtime>(rt: R) -> Arc<dyn Connector> {
    Arc::new(RuntimeConnector(rt))
}

/// Serves `GET /id` (`--http-bootstrap-addr`) on `addr`: this node's peer id and advertised
/// addresses. Each exchange may take at most `exchange_timeout` (the caller's policy). Returns
/// the bound address and the handle that stops the server (connections being answered finish
/// on their own).
pub fn serve_id<R: Runtime>(
    rt: R,
    addr: SocketAddr,
    handle: Handle,
    exchange_timeout: Duration,
) -> io::Result<(SocketAddr, AbortHandle)> {
    let listener = rt.listen(std::net::TcpListener::bind(addr)?)?;
    serve_id_on(rt, listener, handle, exchange_timeout)
}

/// [`serve_id`] on a listener the caller bound (e.g. `[::]`, which takes both families).
pub fn serve_id_on<R: Runtime>(
    rt: R,
    listener: R::Listener,
    handle: Handle,
    exchange_timeout: Duration,
) -> io::Result<(SocketAddr, AbortHandle)> {
    let local = rt.listener_addr(&listener)?;
    let (abort, registration) = AbortHandle::new_pair();
    let server = {
        let rt = rt.clone();
        async move {
            loop {
                let (stream, remote) = match rt.accept(&listener).await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "http bootstrap accept failed");
                        rt.sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let handle = handle.clone();
                let timer = rt.sleep(exchange_timeout);
                rt.spawn(
                    async move {
                        let mut stream = stream;
                        let body =
                            || render_id(&handle.local_peer_id(), &handle.advertised_addrs());
                        let exchange = pin!(serve_id_connection(&mut stream, body));
                        match futures::future::select(exchange, timer).await {
                            Either::Left((Ok(()), _)) => {}
                            Either::Left((Err(e), _)) => {
                                tracing::debug!(%remote, error = %e, "http bootstrap request");
                            }
                            Either::Right(_) => {
                                tracing::debug!(%remote, "http bootstrap request timed out");
                            }
                        }
                    }
                    .boxed(),
                );
            }
        }
    };
    rt.spawn(Abortable::new(server, registration).map(|_| ()).boxed());
    Ok((local, abort))
}
