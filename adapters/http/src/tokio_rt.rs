//! The tokio glue: a [`Runtime`] on the current tokio runtime, and an accept loop.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::runtime::Runtime;

/// The tokio runtime the caller runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    type Io = TokioIo<TcpStream>;

    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        tokio::spawn(fut);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Self::Io>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Accepts connections on `listener` forever, serving each with `service` over speil's
/// HTTP/1.1 connection loop ([`crate::zerocopy`], which sends local blobs with `sendfile`).
pub async fn serve<S>(listener: TcpListener, service: S) -> io::Result<()>
where
    S: hyper::service::Service<
            http::Request<http_body_util::Empty<bytes::Bytes>>,
            Response = http::Response<crate::body::ResponseBody>,
            Error = crate::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    serve_until(listener, service, std::future::pending()).await
}

/// Like [`serve`] until `shutdown` completes; then stops accepting, lets every connection
/// finish the response in flight (idle keep-alive connections are closed), and returns when
/// all are done. Call [`Shared::shutdown`](crate::driver::Shared::shutdown) first so that
/// requests arriving meanwhile get 503.
pub async fn serve_until<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()>
where
    S: hyper::service::Service<
            http::Request<http_body_util::Empty<bytes::Bytes>>,
            Response = http::Response<crate::body::ResponseBody>,
            Error = crate::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not give up.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let stop = stop_rx.clone();
                connections.spawn(crate::zerocopy::serve_connection(stream, service, stop));
            }
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
