//! The two tiny HTTP pieces of `cleanup` and `cleanup-wait`: a `GET /readyz` responder and
//! its probe. Both speak HTTP/1.1 through `speil-h1`, for kubelet probes and each other.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::ListenAddr;

/// Binds the first candidate address that works; `[::]` (what `:PORT` means) for both
/// families.
pub async fn bind(addr: &ListenAddr) -> Result<TcpListener> {
    let mut last = None;
    for candidate in addr
        .candidates()
        .with_context(|| format!("cannot resolve {addr}"))?
    {
        let bound = if candidate.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
            bind_dual_stack(candidate)
        } else {
            TcpListener::bind(candidate).await
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
    TcpListener::from_std(socket.into())
}

/// Answers `GET /readyz` (and `HEAD`) with 200 and anything else with 404, until `stop`
/// completes.
pub async fn serve_readyz(listener: TcpListener, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Reads from `stream` into `buf` until `parse` finds a whole head (`Ok(None)` when the
/// connection ends first, the inner error when the head is refused).
async fn read_head<T>(
    stream: &mut TcpStream,
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

async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let limits = speil_h1::Limits::default();
    let Some(head) = read_head(&mut stream, &mut buf, |b| {
        speil_h1::parse_request(b, &limits)
    })
    .await?
    else {
        return Ok(());
    };
    let status = match head {
        Err(e) => e.status(),
        Ok(parts) => {
            let ok =
                matches!(parts.method, Method::GET | Method::HEAD) && parts.uri.path() == "/readyz";
            if ok {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            }
        }
    };
    let mut response = Vec::new();
    speil_h1::encode_response_head(
        status,
        &HeaderMap::new(),
        speil_h1::Framing::Length(0),
        true,
        &mut response,
    );
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// `GET http://<addr>/readyz` within `timeout`; true on a 200.
pub async fn probe_readyz(addr: SocketAddr, host: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
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
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cleanup --addr=:PORT` (the chart's form) answers probes over IPv4 and IPv6.
    #[tokio::test]
    async fn an_unspecified_host_serves_readyz_to_both_families() {
        let listener = bind(&crate::cli::parse_listen_addr(":0").unwrap())
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_readyz(listener, async {
            let _ = rx.await;
        }));
        for ip in ["127.0.0.1", "::1"] {
            let addr = std::net::SocketAddr::new(ip.parse().unwrap(), port);
            assert!(
                probe_readyz(addr, "x", Duration::from_secs(1)).await,
                "{addr}"
            );
        }
        let _ = tx.send(());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn readyz_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_readyz(listener, async {
            let _ = rx.await;
        }));
        assert!(probe_readyz(addr, "x", Duration::from_secs(1)).await);
        // A raw request for another path gets a 404.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /other HTTP/1.1\r\n\r\n").await.unwrap();
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
        server.await.unwrap();
        // Nothing listens any more.
        assert!(!probe_readyz(addr, "x", Duration::from_millis(200)).await);
    }
}
