//! The two tiny HTTP pieces of `cleanup` and `cleanup-wait`: a `GET /readyz` responder and
//! its probe. Both speak just enough HTTP/1.1 for kubelet probes and each other.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::ListenAddr;

const MAX_HEAD: usize = 8 * 1024;

/// Binds the first candidate address that works.
pub async fn bind(addr: &ListenAddr) -> Result<TcpListener> {
    let mut last = None;
    for candidate in addr
        .candidates()
        .with_context(|| format!("cannot resolve {addr}"))?
    {
        match TcpListener::bind(candidate).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((candidate, e)),
        }
    }
    match last {
        Some((a, e)) => Err(e).with_context(|| format!("cannot listen on {a}")),
        None => anyhow::bail!("{addr} resolves to no address"),
    }
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

async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let ok = (method == b"GET" || method == b"HEAD")
        && (path == b"/readyz" || path.starts_with(b"/readyz?"));
    let response: &[u8] = if ok {
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    } else {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    };
    stream.write_all(response).await?;
    stream.shutdown().await
}

/// `GET http://<addr>/readyz` within `timeout`; true on a 200.
pub async fn probe_readyz(addr: SocketAddr, host: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < MAX_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<bool, std::io::Error>(
            head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"),
        )
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        tx.send(()).unwrap();
        server.await.unwrap();
        // Nothing listens any more.
        assert!(!probe_readyz(addr, "x", Duration::from_millis(200)).await);
    }
}
