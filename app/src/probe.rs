//! The two tiny HTTP pieces of `cleanup` and `cleanup-wait`: a `GET /readyz` responder and
//! its probe. Both speak HTTP/1.1 through `speil-h1`, for kubelet probes and each other.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{AsyncReadExt, AsyncWriteExt};
use http::{HeaderMap, Method, StatusCode};
use speil_driver::Runtime;

use crate::cli::ListenAddr;

/// Binds the first candidate address that works; `[::]` (what `:PORT` means) for both
/// families.
pub fn bind(addr: &ListenAddr) -> Result<TcpListener> {
    let mut last = None;
    for candidate in addr
        .candidates()
        .with_context(|| format!("cannot resolve {addr}"))?
    {
        let bound = if candidate.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
            bind_dual_stack(candidate)
        } else {
            TcpListener::bind(candidate)
        };
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((candidate, e)),
        }
    }
    match last {
        Some((a, e)) => Err(e).with_context(|| format!("cannot listen on {a}")),
        None => anyhow::bail!("{addr} resolves to no address"),
    }
}

/// Binds `[::]:port` for both families: `IPV6_V6ONLY` off whatever `net.ipv6.bindv6only`
/// says, so IPv4 clients arrive as IPv4-mapped addresses on the same socket.
pub fn bind_dual_stack(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Answers `GET /readyz` (and `HEAD`) with 200 and anything else with 404, until `stop`
/// completes; over the registry's own HTTP/1.1 server (an unreadable head gets its 400/431).
pub async fn serve_readyz<R: Runtime>(
    rt: R,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = rt.listen(listener)?;
    let service = hyper::service::service_fn(|req: http::Request<_>| {
        let ok =
            matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path() == "/readyz";
        let mut response = http::Response::new(speil_http::body::empty());
        *response.status_mut() = if ok {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        std::future::ready(Ok::<_, speil_http::BoxError>(response))
    });
    speil_http::Server::new(rt)
        .serve_until(listener, service, stop)
        .await
}

/// Reads from `stream` into `buf` until `parse` finds a whole head (`Ok(None)` when the
/// connection ends first, the inner error when the head is refused).
async fn read_head<T>(
    stream: &mut (impl futures::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<speil_h1::Status<(T, usize)>, speil_h1::Error>,
) -> std::io::Result<Option<Result<T, speil_h1::Error>>> {
    let mut chunk = [0u8; 512];
    loop {
        match parse(buf) {
            Ok(speil_h1::Status::Complete((head, _))) => return Ok(Some(Ok(head))),
            Ok(speil_h1::Status::Partial) => {}
            Err(e) => return Ok(Some(Err(e))),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `GET http://<addr>/readyz` within `timeout`; true on a 200.
pub async fn probe_readyz<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    host: &str,
    timeout: Duration,
) -> bool {
    let attempt = async {
        let mut stream = rt.connect(addr).await?;
        let mut request = Vec::new();
        speil_h1::encode_request_head(
            &Method::GET,
            "/readyz",
            host,
            &HeaderMap::new(),
            speil_h1::Framing::None,
            true,
            &mut request,
        )
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        stream.write_all(&request).await?;
        let mut buf = Vec::new();
        let limits = speil_h1::Limits::default();
        let head = read_head(&mut stream, &mut buf, |b| {
            speil_h1::parse_response(b, &limits)
        })
        .await?;
        Ok::<bool, std::io::Error>(
            matches!(head, Some(Ok(parts)) if parts.status == StatusCode::OK),
        )
    };
    matches!(crate::within(rt, timeout, attempt).await, Some(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cleanup --addr=:PORT` (the chart's form) answers probes over IPv4 and IPv6.
    use speil_driver::tokio::Tokio;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn an_unspecified_host_serves_readyz_to_both_families() {
        let listener = bind(&crate::cli::parse_listen_addr(":0").unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_readyz(Tokio, listener, async {
            let _ = rx.await;
        }));
        for ip in ["127.0.0.1", "::1"] {
            let addr = std::net::SocketAddr::new(ip.parse().unwrap(), port);
            assert!(
                probe_readyz(&Tokio, addr, "x", Duration::from_secs(1)).await,
                "{addr}"
            );
        }
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn readyz_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_readyz(Tokio, listener, async {
            let _ = rx.await;
        }));
        assert!(probe_readyz(&Tokio, addr, "x", Duration::from_secs(1)).await);
        // A raw request for another path gets a 404.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /other HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"));
        // An unreadable head gets its error status.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /readyz HTTP/7\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        // Nothing listens any more.
        assert!(!probe_readyz(&Tokio, addr, "x", Duration::from_millis(200)).await);
    }
}
