//! The HTTP/1.1 server: the accept loop and the connection loop of the registry and metrics
//! servers, on any [`Runtime`], sending local blobs with `sendfile`.
//!
//! # Why a connection loop of its own
//!
//! SPEC.md §2 asks for local blobs to be sent with zero copy. hyper owns the socket of the
//! connections it serves and only writes bytes handed to it by a body, so a file region
//! cannot reach the socket through hyper without being read into memory first (hyperium/hyper
//! #3026). Both builds therefore serve connections with this small HTTP/1.1 loop; hyper is
//! only the peer client.
//!
//! Only the *transmission* is specific: the loop parses a request head, calls the same
//! runtime-neutral service ([`RegistryService`](crate::server::RegistryService) decides the
//! status, headers and which bytes), and writes the response. When the response carries a
//! [`FileRegion`] extension (a local blob from the content directory) that it can take,
//! it writes the head and then loops the runtime's `sendfile(2)` from the file to the socket
//! ([`Runtime::poll_sendfile`] waits for writability, so a full socket buffer parks the task
//! like any write).
//! Every other body (errors, manifests, bodies relayed from peers) is written frame by frame.
//!
//! The API is `GET`/`HEAD` without request bodies, which keeps the loop small:
//!
//! - request heads are parsed with the pure `speil-h1` codec within the core's
//!   [`ServerLimits`] (head bytes and header lines; else 431 with an OCI error, or 400 for a malformed head,
//!   and the connection is closed); the service applies its own, smaller limits (16 KiB of
//!   headers, 4 KiB of path) with OCI errors, as under hyper;
//! - HTTP/1.1 keep-alive (unless `Connection: close`), HTTP/1.0 only with
//!   `Connection: keep-alive`, and then the response says `Connection: keep-alive` (an
//!   HTTP/1.0 client assumes the server closes otherwise, as hyper tells it too); pipelined
//!   requests are answered in order;
//! - a request that announces a body (`Content-Length` other than 0, or `Transfer-Encoding`)
//!   is answered (with the service's error: no route takes a body) and the connection is
//!   then closed, so its body is never mistaken for a request;
//! - responses are framed like hyper frames them: the service's `Content-Length`, or the
//!   body's exact size, or chunked (HTTP/1.1) or closing the connection (HTTP/1.0); `HEAD`
//!   responses keep their headers and send no body; a `Date` header is added;
//! - a service error, or a body that fails or ends before its `Content-Length`, aborts the
//!   connection (the client sees a short body, never a clean end), as hyper does;
//! - graceful shutdown: once told to stop, a connection that is not answering a request is
//!   closed (also with a partial head); a request in flight is answered and then the
//!   connection is closed (a response not yet started says `Connection: close`).
//!
//! `sendfile` to a socket whose peer went away fails with `EPIPE`/`ECONNRESET` (the Rust
//! runtime ignores `SIGPIPE`): the connection is dropped, nothing else is affected.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::Either;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use speil_driver::{Runtime, RuntimeExt, Timer};
use tokio::sync::watch;

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Empty;
use hyper::body::Body;
use speil_core::error::OciError;

use crate::body::{FileRegion, ResponseBody};
use crate::server::error_response;
use crate::{BoxError, CHUNK_SIZE};
use speil_core::limits::ServerLimits;

/// Most bytes one `sendfile` call is asked for.
const SENDFILE_MAX: usize = 2 * 1024 * 1024;

/// Frames that are ready one after the other are gathered up to this many bytes, and written
/// with one vectored write (they are not copied).
const GATHER: usize = 128 * 1024;

/// Most pieces in one vectored write.
const MAX_IOVECS: usize = 64;

/// What one server did: its zero-copy path, and its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Responses whose body was a file region sent with `sendfile` (counted when the head is
    /// written).
    pub responses: u64,
    /// Bytes sent with `sendfile`.
    pub bytes: u64,
    /// Connections being served now.
    pub active: usize,
    /// Connections refused with `503` over the connection cap.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    responses: AtomicU64,
    bytes: AtomicU64,
    /// Connections being served now.
    active: AtomicUsize,
    /// Connections refused over the cap.
    refused: AtomicU64,
}

/// Counts a connection as active while it lives.
struct Active(Arc<Counters>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/1.1 server on a runtime: accepts connections and serves each with a service.
#[derive(Debug, Clone)]
pub struct Server<R> {
    rt: R,
    limits: ServerLimits,
    counters: Arc<Counters>,
}

impl<R: Runtime> Server<R> {
    /// A server on `rt` with the core's default limits.
    pub fn new(rt: R) -> Server<R> {
        Server::with_limits(rt, ServerLimits::default())
    }

    /// A server on `rt` with these limits.
    pub fn with_limits(rt: R, limits: ServerLimits) -> Server<R> {
        Server {
            rt,
            limits,
            counters: Arc::default(),
        }
    }

    /// What this server's zero-copy path sent so far.
    pub fn stats(&self) -> Stats {
        Stats {
            responses: self.counters.responses.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            active: self.counters.active.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
        }
    }

    /// Accepts connections on `listener` forever.
    pub async fn serve<S>(&self, listener: R::Listener, service: S) -> io::Result<()>
    where
        S: Service,
    {
        self.serve_until(listener, service, std::future::pending())
            .await
    }

    /// Like [`Server::serve`] until `shutdown` completes; then stops accepting, lets every
    /// connection finish the response in flight (idle keep-alive connections are closed),
    /// and returns when all are done. Call
    /// [`Shared::shutdown`](speil_driver::Shared::shutdown) first so that requests arriving
    /// meanwhile get 503.
    pub async fn serve_until<S>(
        &self,
        listener: R::Listener,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        S: Service,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone; when all are gone, the receiver ends.
        let (done_tx, mut done_rx) = futures::channel::mpsc::channel::<()>(0);
        let shutdown = shutdown.fuse();
        futures::pin_mut!(shutdown);
        loop {
            let accepted = self.rt.accept(&listener).fuse();
            futures::pin_mut!(accepted);
            futures::select_biased! {
                () = shutdown => break,
                accepted = accepted => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, do not give up.
                            tracing::warn!(error = %e, "accept failed");
                            self.rt.sleep(self.limits.accept_retry).await;
                            continue;
                        }
                    };
                    if self.counters.active.load(Ordering::Relaxed) >= self.limits.max_connections {
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                        let (rt, stall) = (self.rt.clone(), self.limits.write_stall);
                        self.rt.spawn(Box::pin(refuse(rt, stream, stall)));
                        continue;
                    }
                    self.counters.active.fetch_add(1, Ordering::Relaxed);
                    let active = Active(self.counters.clone());
                    let conn = serve_connection(
                        self.rt.clone(),
                        stream,
                        service.clone(),
                        stop_rx.clone(),
                        self.limits,
                        self.counters.clone(),
                    );
                    let done = done_tx.clone();
                    self.rt.spawn(Box::pin(async move {
                        conn.await;
                        drop(active);
                        drop(done);
                    }));
                }
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        drop(done_tx);
        while done_rx.next().await.is_some() {}
        Ok(())
    }
}

/// The service a server calls for each request.
pub trait Service:
    hyper::service::Service<
        Request<Empty<Bytes>>,
        Response = Response<ResponseBody>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Service for S where
    S: hyper::service::Service<
            Request<Empty<Bytes>>,
            Response = Response<ResponseBody>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves one connection with `service` until the client closes it, an error ends it, or
/// `stop` turns true (then as described in the module docs).
async fn serve_connection<R: Runtime, S: Service>(
    rt: R,
    stream: R::Tcp,
    service: S,
    mut stop: watch::Receiver<bool>,
    limits: ServerLimits,
    counters: Arc<Counters>,
) {
    let mut conn = Conn {
        rt,
        stream,
        limits,
        counters,
        buf: Vec::new(),
        filled: 0,
        out: VecDeque::new(),
        queued: 0,
        served: 0,
    };
    let keep = conn.serve(service, &mut stop).await;
    if let Err(e) = &keep {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    if matches!(keep, Ok(Close::Linger)) {
        conn.linger().await;
    }
}

/// How a connection ends.
enum Close {
    /// At once: the client closed it, or it is aborted.
    Now,
    /// After a response with `Connection: close`: shut down writing, wait for the client.
    Linger,
}

/// A parsed request head.
struct Head {
    method: Method,
    uri: http::Uri,
    version: Version,
    headers: HeaderMap,
}

/// Why a request head was refused.
enum HeadError {
    /// More bytes or header lines than the limits allow.
    TooLarge(usize),
    /// Not HTTP/1.x.
    Malformed(String),
    /// The head (or, between requests, the next one) did not arrive within its budget;
    /// `partial`: some of it had.
    TimedOut {
        /// Whether part of a head had arrived.
        partial: bool,
    },
}

struct Conn<R: Runtime> {
    rt: R,
    stream: R::Tcp,
    limits: ServerLimits,
    counters: Arc<Counters>,
    /// Bytes read and not yet parsed are `buf[..filled]`.
    buf: Vec<u8>,
    filled: usize,
    /// Pieces to write, not yet written, in order; `queued` bytes in all.
    out: VecDeque<Bytes>,
    queued: usize,
    /// Responses written on this connection.
    served: u64,
}

impl<R: Runtime> Conn<R> {
    async fn serve<S: Service>(
        &mut self,
        service: S,
        stop: &mut watch::Receiver<bool>,
    ) -> io::Result<Close> {
        loop {
            let head = match self.read_head(stop).await? {
                Some(Ok(head)) => head,
                None => return Ok(Close::Now),
                Some(Err(HeadError::TooLarge(len))) => {
                    let e = OciError::headers_too_large(len, self.limits.max_header_bytes);
                    self.write_response(error_response(&e, false), false, Version::HTTP_11, false)
                        .await?;
                    return Ok(Close::Linger);
                }
                Some(Err(HeadError::TimedOut { partial })) => {
                    tracing::debug!(partial, "request head timed out; closing the connection");
                    if partial {
                        self.write_response(timed_out(), false, Version::HTTP_11, false)
                            .await?;
                        return Ok(Close::Linger);
                    }
                    return Ok(Close::Now);
                }
                Some(Err(HeadError::Malformed(why))) => {
                    tracing::debug!(error = %why, "malformed request head");
                    self.write_response(bad_request(), false, Version::HTTP_11, false)
                        .await?;
                    return Ok(Close::Linger);
                }
            };
            let has_body = match request_has_body(head.version, &head.headers) {
                Ok(b) => b,
                Err(why) => {
                    tracing::debug!(error = %why, "malformed request head");
                    self.write_response(bad_request(), false, Version::HTTP_11, false)
                        .await?;
                    return Ok(Close::Linger);
                }
            };
            let wants_keep_alive = keep_alive(head.version, &head.headers);
            let is_head = head.method == Method::HEAD;
            let version = head.version;
            let fields = speil_core::limits::header_bytes(&head.headers);
            if fields > self.limits.max_header_bytes {
                // The whole head was read, so the connection is still in sync: 431, and the
                // next request is read as usual (a request with a body is not: closed).
                let e = OciError::headers_too_large(fields, self.limits.max_header_bytes);
                let keep_alive = wants_keep_alive && !has_body && !*stop.borrow();
                let keep_alive = self
                    .write_response(error_response(&e, is_head), is_head, version, keep_alive)
                    .await?;
                self.served += 1;
                if !keep_alive {
                    return Ok(Close::Linger);
                }
                continue;
            }
            let mut request = Request::new(Empty::new());
            *request.method_mut() = head.method;
            *request.uri_mut() = head.uri;
            *request.version_mut() = head.version;
            *request.headers_mut() = head.headers;
            let call = service.call(request);
            let response = match call.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "request aborted");
                    return Ok(Close::Now);
                }
            };
            let keep_alive = wants_keep_alive && !has_body && !*stop.borrow();
            let keep_alive = self
                .write_response(response, is_head, version, keep_alive)
                .await?;
            self.served += 1;
            if !keep_alive {
                return Ok(Close::Linger);
            }
        }
    }

    /// Reads the next request head. `None`: the connection is to be closed (by the client,
    /// or because `stop` turned true before a whole head arrived).
    async fn read_head(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> io::Result<Option<Result<Head, HeadError>>> {
        // The head budget runs from the connection's start (first request) or from the first
        // byte of a later head; between requests the idle budget applies.
        let idle = self.served > 0 && self.filled == 0;
        let budget = if idle {
            self.limits.idle_timeout
        } else {
            self.limits.head_timeout
        };
        let mut timer = self.rt.timer(self.rt.now() + budget);
        let mut waiting_idle = idle;
        loop {
            if self.filled > 0 {
                match parse_head(&self.buf[..self.filled], &self.limits) {
                    Ok(Some((head, n))) => {
                        self.buf.copy_within(n..self.filled, 0);
                        self.filled -= n;
                        return Ok(Some(Ok(head)));
                    }
                    Ok(None) if self.filled >= self.limits.max_head_bytes => {
                        return Ok(Some(Err(HeadError::TooLarge(self.filled))));
                    }
                    Ok(None) => {}
                    Err(e) => return Ok(Some(Err(e))),
                }
            }
            if *stop.borrow() {
                // Stopping: no new request is started (nor a partial head completed).
                return Ok(None);
            }
            if self.filled == self.buf.len() {
                let len = (self.buf.len() * 2).clamp(4096, self.limits.max_head_bytes);
                self.buf.resize(len, 0);
            }
            let read = self.stream.read(&mut self.buf[self.filled..]);
            let stopping = stopped(stop);
            futures::pin_mut!(read, stopping);
            let ends = futures::future::select(stopping, &mut timer);
            let n = match futures::future::select(read, ends).await {
                Either::Left((read, _)) => read?,
                Either::Right((Either::Left(_), _)) => return Ok(None),
                Either::Right((Either::Right(_), _)) => {
                    return Ok(Some(Err(HeadError::TimedOut {
                        partial: self.filled > 0,
                    })));
                }
            };
            if n == 0 {
                // Closed by the client (a partial head is dropped, as hyper drops it).
                return Ok(None);
            }
            if waiting_idle {
                // The next head has begun: it has the head budget from now.
                waiting_idle = false;
                timer.reset(self.rt.now() + self.limits.head_timeout);
            }
            self.filled += n;
        }
    }

    /// Writes `response`; `Ok(true)` when the connection stays open for another request.
    async fn write_response(
        &mut self,
        response: Response<ResponseBody>,
        is_head: bool,
        version: Version,
        mut keep_alive: bool,
    ) -> io::Result<bool> {
        let (mut parts, body) = response.into_parts();
        let status = parts.status;
        let headers = &mut parts.headers;
        for name in [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            HeaderName::from_static("keep-alive"),
        ] {
            headers.remove(name);
        }
        let no_body = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            Framing::Empty
        } else if let Some(n) = content_length(headers) {
            Framing::Length(n)
        } else {
            headers.remove(header::CONTENT_LENGTH);
            if let Some(n) = body.size_hint().exact() {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                Framing::Length(n)
            } else if version == Version::HTTP_11 {
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
                Framing::Chunked
            } else {
                // HTTP/1.0 has no chunks: the end of the body is the end of the connection.
                keep_alive = false;
                Framing::Close
            }
        };
        if !keep_alive {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if !headers.contains_key(header::DATE)
            && let Ok(date) = HeaderValue::from_str(&http_date(SystemTime::now()))
        {
            headers.insert(header::DATE, date);
        }
        self.out.clear();
        self.queued = 0;
        let mut head = Vec::with_capacity(512);
        let wire = match framing {
            Framing::Empty => speil_h1::Framing::None,
            Framing::Length(n) => speil_h1::Framing::Length(n),
            Framing::Chunked => speil_h1::Framing::Chunked,
            Framing::Close => speil_h1::Framing::UntilClose,
        };
        speil_h1::encode_response_head(status, headers, wire, !keep_alive, &mut head);
        if keep_alive && version == Version::HTTP_10 {
            // The codec writes `Connection: close` or nothing; an HTTP/1.0 client needs to be
            // told that the connection persists. The head ends with the blank line.
            head.truncate(head.len() - 2);
            head.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
        }
        self.queue(Bytes::from(head));

        match framing {
            Framing::Empty => {
                drop(body);
                self.flush().await?;
                return Ok(keep_alive);
            }
            Framing::Length(n) if n > 0 => {
                if let Some(region) = parts.extensions.remove::<FileRegion>()
                    && region.bytes() == n
                {
                    self.flush().await?;
                    self.counters.responses.fetch_add(1, Ordering::Relaxed);
                    self.send_file(&region).await?;
                    // The body is dropped only now: the request's metrics end with the
                    // transfer.
                    drop(body);
                    return Ok(keep_alive);
                }
            }
            _ => {}
        }
        let complete = self.write_body(body, framing).await?;
        if !complete {
            keep_alive = false;
        }
        Ok(keep_alive)
    }

    /// Writes the frames of `body` after the head in `out`. `Ok(false)`: the body was
    /// delimited by closing the connection. A body that fails, ends short or runs long is
    /// an error (the connection is aborted).
    async fn write_body(&mut self, mut body: ResponseBody, framing: Framing) -> io::Result<bool> {
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        loop {
            let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing to add yet: send what is gathered (at least the head) first.
                    self.flush().await?;
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(io::Error::other(BodyFailed(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers: not sent.
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            match framing {
                Framing::Length(_) => {
                    let len = data.len() as u64;
                    if len > remaining {
                        return Err(io::Error::other(
                            "response body longer than its Content-Length",
                        ));
                    }
                    remaining -= len;
                    self.push(data).await?;
                }
                Framing::Chunked => {
                    self.queue(Bytes::from(format!("{:x}\r\n", data.len())));
                    self.queue(data);
                    self.push(Bytes::from_static(b"\r\n")).await?;
                }
                Framing::Close => self.push(data).await?,
                Framing::Empty => {}
            }
        }
        match framing {
            Framing::Length(_) if remaining > 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("response body ended {remaining} bytes early"),
                ));
            }
            Framing::Chunked => self.queue(Bytes::from_static(b"0\r\n\r\n")),
            _ => {}
        }
        self.flush().await?;
        Ok(!matches!(framing, Framing::Close))
    }

    /// Adds `piece` to the pieces to write.
    fn queue(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.queued += piece.len();
            self.out.push_back(piece);
        }
    }

    /// Adds `piece` to the pieces to write, writing them once they are [`GATHER`] bytes.
    async fn push(&mut self, piece: Bytes) -> io::Result<()> {
        self.queue(piece);
        if self.queued >= GATHER || self.out.len() >= MAX_IOVECS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes every queued piece (vectored writes).
    async fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .out
                .iter()
                .take(MAX_IOVECS)
                .map(|b| IoSlice::new(b))
                .collect();
            let mut n = write_within(
                &self.rt,
                self.limits.write_stall,
                self.stream.write_vectored(&slices),
            )
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.queued -= n;
            while n > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Closes the connection after a last response: shuts down writing, then reads (and
    /// drops) what the client still sends until it closes, for at most the limits' linger.
    async fn linger(&mut self) {
        if self.stream.close().await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        let linger_bytes = self.limits.linger_bytes;
        let stream = &mut self.stream;
        let drain = async move {
            while drained < linger_bytes {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let timer = self.rt.sleep(self.limits.linger);
        futures::pin_mut!(drain);
        let _ = futures::future::select(drain, timer).await;
    }

    /// Sends `file`'s region with `sendfile`, counting the bytes on `region`. On a file
    /// system that cannot `sendfile`, the rest of the region is read and written instead.
    async fn send_file(&mut self, region: &FileRegion) -> io::Result<()> {
        let file = &region.file;
        let mut offset = region.offset;
        let end = region
            .offset
            .checked_add(region.bytes())
            .ok_or_else(|| io::Error::other("file region past the largest offset"))?;
        while offset < end {
            let count = usize::try_from(end - offset).map_or(SENDFILE_MAX, |n| n.min(SENDFILE_MAX));
            let sent = write_within(
                &self.rt,
                self.limits.write_stall,
                self.rt.sendfile(&self.stream, file, offset, count),
            )
            .await;
            match sent {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        crate::body::Truncated(format!(
                            "blob file ended {} bytes early",
                            end - offset
                        )),
                    ));
                }
                Ok(n) => {
                    offset += n as u64;
                    region.record_sent(n as u64);
                    self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if cannot_sendfile(&e) => {
                    tracing::debug!(error = %e, "sendfile unsupported here; copying");
                    let stall = self.limits.write_stall;
                    return copy_file(&self.rt, stall, &mut self.stream, file, offset, end, region)
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer encoding.
    Chunked,
    /// Until the connection is closed (HTTP/1.0, length unknown).
    Close,
}

/// A response body that failed.
#[derive(Debug, thiserror::Error)]
#[error("response body failed: {0}")]
struct BodyFailed(BoxError);

/// Whether `sendfile` failed because the file (system) does not support it.
fn cannot_sendfile(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

/// Sends `file[offset..end]` with positional reads and writes, [`CHUNK_SIZE`] at a time.
async fn copy_file<R: Runtime>(
    rt: &R,
    stall: Duration,
    stream: &mut (impl futures::AsyncWrite + Unpin),
    file: &std::fs::File,
    mut offset: u64,
    end: u64,
    region: &FileRegion,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; CHUNK_SIZE];
    while offset < end {
        let want = usize::try_from(end - offset).map_or(CHUNK_SIZE, |n| n.min(CHUNK_SIZE));
        // A read of at most 64 KiB from a local file, as the body would do it.
        let n = match file.read_at(&mut buf[..want], offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    crate::body::Truncated(format!("blob file ended {} bytes early", end - offset)),
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        write_within(rt, stall, stream.write_all(&buf[..n])).await?;
        offset += n as u64;
        region.record_sent(n as u64);
    }
    Ok(())
}

/// `fut`, a write, or a `TimedOut` error when it made no progress within `budget` (a client
/// that stopped reading: SPEC.md §9).
async fn write_within<R: Runtime, T>(
    rt: &R,
    budget: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    speil_driver::within(rt, budget, fut)
        .await
        .unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {budget:?}"),
            ))
        })
}

/// Answers a connection over the cap with `503` and closes it at once (its request is not
/// read).
async fn refuse<R: Runtime>(rt: R, mut stream: R::Tcp, stall: Duration) {
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    let mut head = Vec::with_capacity(128);
    speil_h1::encode_response_head(
        StatusCode::SERVICE_UNAVAILABLE,
        &headers,
        speil_h1::Framing::Length(0),
        true,
        &mut head,
    );
    let _ = write_within(&rt, stall, stream.write_all(&head)).await;
    let _ = write_within(&rt, stall, stream.close()).await;
}

/// The answer to a head that did not arrive in time: 408, no body.
fn timed_out() -> Response<ResponseBody> {
    let mut r = Response::new(crate::body::empty());
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    r
}

/// hyper's answer to a request it cannot parse: 400, no body.
fn bad_request() -> Response<ResponseBody> {
    let mut r = Response::new(crate::body::empty());
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    r
}

/// Completes when `stop` turns true (never when its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Parses a request head from the start of `buf` with the h1 codec: `None` when it is not
/// complete yet, else the head and its length.
fn parse_head(buf: &[u8], limits: &ServerLimits) -> Result<Option<(Head, usize)>, HeadError> {
    let limits = speil_h1::Limits {
        max_head_bytes: limits.max_head_bytes,
        max_headers: limits.max_headers,
    };
    match speil_h1::parse_request(buf, &limits) {
        Ok(speil_h1::Status::Complete((parts, n))) => Ok(Some((
            Head {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
            },
            n,
        ))),
        Ok(speil_h1::Status::Partial) => Ok(None),
        Err(speil_h1::Error::HeadTooLarge | speil_h1::Error::TooManyHeaders) => {
            Err(HeadError::TooLarge(buf.len()))
        }
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Whether the request announces a body (the codec's framing rules); an error for an
/// invalid, ambiguous or unsupported framing.
fn request_has_body(version: Version, headers: &HeaderMap) -> Result<bool, String> {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.version = version;
    parts.headers = headers.clone();
    match speil_h1::request_framing(&parts) {
        Ok(speil_h1::Framing::None) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the client asks to keep the connection open after the response.
fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    speil_h1::keep_alive(version, headers)
}

/// The response's own `Content-Length`, when it has exactly one valid value.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()?.trim().parse().ok()
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(now: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let weekday = DAYS[(days % 7) as usize];
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_copy_fallback_sends_exactly_the_region() {
        use rustix::io::Errno;
        assert!(cannot_sendfile(&io::Error::from(Errno::INVAL)));
        assert!(cannot_sendfile(&io::Error::from(Errno::NOSYS)));
        assert!(!cannot_sendfile(&io::Error::from(Errno::PIPE)));
        assert!(!cannot_sendfile(&io::Error::from(Errno::AGAIN)));

        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("speil-zerocopy-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let region = FileRegion::new(std::sync::Arc::new(file.try_clone().unwrap()), 0, 100_000);
        use tokio::io::AsyncReadExt as _;
        use tokio::net::TcpStream;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = speil_driver::tokio::Stream(stream);
        copy_file(
            &speil_driver::tokio::Tokio,
            Duration::from_secs(5),
            &mut stream,
            &file,
            50_000,
            150_000,
            &region,
        )
        .await
        .unwrap();
        drop(stream);
        assert!(reader.await.unwrap() == bytes[50_000..150_000]);
        assert_eq!(region.sent(), 100_000);
        // A file that ends before the region does: an error, not a short success.
        let (tx, rx) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut stream = speil_driver::tokio::Stream(rx.unwrap().0);
        let err = copy_file(
            &speil_driver::tokio::Tokio,
            Duration::from_secs(5),
            &mut stream,
            &file,
            150_000,
            250_000,
            &region,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        drop(tx);
    }

    #[test]
    fn dates() {
        let at = |s: u64| http_date(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    }

    #[test]
    fn heads() {
        let (head, n) = parse_head(
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET",
            &ServerLimits::default(),
        )
        .ok()
        .flatten()
        .expect("complete");
        assert_eq!(n, 30);
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.path(), "/v2/");
        assert_eq!(head.headers.get("host").unwrap(), "x");
        assert!(matches!(
            parse_head(b"GET /v2/ HTTP/1.1\r\nHo", &ServerLimits::default()),
            Ok(None)
        ));
        assert!(matches!(
            parse_head(b"GET /v2/ HTTP/9.1\r\n\r\n", &ServerLimits::default()),
            Err(HeadError::Malformed(_))
        ));
        let many: String = (0..=ServerLimits::default().max_headers)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_head(req.as_bytes(), &ServerLimits::default()),
            Err(HeadError::TooLarge(_))
        ));
    }

    #[test]
    fn request_bodies_and_keep_alive() {
        let map = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert_eq!(request_has_body(Version::HTTP_11, &map(&[])), Ok(false));
        assert_eq!(
            request_has_body(Version::HTTP_11, &map(&[("content-length", "0")])),
            Ok(false)
        );
        assert_eq!(
            request_has_body(Version::HTTP_11, &map(&[("content-length", "5")])),
            Ok(true)
        );
        assert_eq!(
            request_has_body(Version::HTTP_11, &map(&[("transfer-encoding", "chunked")])),
            Ok(true)
        );
        assert!(request_has_body(Version::HTTP_11, &map(&[("content-length", "-1")])).is_err());
        assert!(
            request_has_body(Version::HTTP_11, &map(&[("transfer-encoding", "gzip")])).is_err()
        );
        assert!(
            request_has_body(
                Version::HTTP_11,
                &map(&[("content-length", "1"), ("content-length", "2")])
            )
            .is_err()
        );
        assert!(keep_alive(Version::HTTP_11, &map(&[])));
        assert!(!keep_alive(
            Version::HTTP_11,
            &map(&[("connection", "foo, Close")])
        ));
        assert!(!keep_alive(Version::HTTP_10, &map(&[])));
        assert!(keep_alive(
            Version::HTTP_10,
            &map(&[("connection", "keep-alive")])
        ));
    }
}
