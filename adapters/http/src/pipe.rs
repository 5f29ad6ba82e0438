//! The body of a mirrored response: a peer's body, continued by another peer's body when it
//! breaks (SPEC.md §3).
//!
//! The pipe counts the bytes it passed to the client. When the peer's body fails (or ends
//! before the length the client was promised), it reports [`PipeEvent::Interrupted`] with
//! that count and waits: [`PipeControl::Continue`] splices in the next peer's body (which the
//! core asked for with the right `Range`), [`PipeControl::Abort`] ends the body with an error
//! so that hyper aborts the connection — the client never sees a clean, short body.
//!
//! When the core asked for it ([`speil_driver::Relay::verify`]: the body is the whole
//! content of a digest), the pipe hashes every byte it relays, across continuations, and
//! holds the last piece back until the hash is known: a body that does not match is never
//! completed — the client's connection is aborted before its last byte and the pipe reports
//! [`PipeEvent::Mismatch`].
//!
//! A peer that stops sending without closing its connection is caught by the core's stall
//! watchdog: the driver reads the pipe's byte counter when the core polls the progress, and
//! when the core finds none it sends [`PipeControl::Interrupt`]; the pipe drops the peer's
//! body (closing its connection) and reports the interruption like a broken body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use futures::channel::mpsc;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};
use speil_core::Verifier;
use speil_driver::{PipeControl, PipeEvent, PipeReporter, Relay};

use crate::BoxError;
use crate::body::Truncated;
use crate::client::PeerResponse;
use crate::hasher::BodyCheck;

/// A peer's response body.
pub type PeerBody = UnsyncBoxBody<Bytes, BoxError>;

enum State {
    Streaming(PeerBody),
    Waiting,
    /// Every byte of a checked body arrived; its last piece waits for the hash's verdict.
    Verifying(Bytes),
    /// A held body that matched: its pieces go out now.
    Draining(VecDeque<Bytes>),
    Finished,
    Aborted,
}

/// How a pipe reports (to the driver, or to a test).
pub type Notify = Box<dyn FnMut(PipeEvent) + Send>;

/// The client's body of a mirrored response.
pub struct Pipe {
    state: State,
    written: Arc<AtomicU64>,
    expected: Option<u64>,
    control: mpsc::UnboundedReceiver<PipeControl<PeerResponse>>,
    notify: Notify,
    /// The hash of what was relayed so far, when the body is checked against a digest.
    verify: Option<BodyCheck>,
    /// `Some` while a checked body is held: what arrived so far (nothing goes out before
    /// all of it matched).
    held: Option<Vec<Bytes>>,
    /// Bytes handed out to the client (`written` counts what the pipe took in, which is
    /// more while a body is held).
    sent: u64,
}

impl Pipe {
    /// The body of a relay the driver decided on, promised to deliver `expected` bytes (the
    /// response's `Content-Length`; `None` when unknown, e.g. for HEAD).
    pub fn relay(first: PeerBody, expected: Option<u64>, relay: RelayParts) -> Pipe {
        let reporter = relay.reporter;
        Pipe::new(
            first,
            expected,
            relay.control,
            relay.written,
            Box::new(move |ev| reporter.report(ev)),
        )
        .verified(relay.verify, relay.hold)
    }

    /// Checks the body against `verify` (see the module docs). Only a body promised to
    /// deliver a known length is checked: the check happens when the last byte would go out.
    /// `hold`: nothing goes out before all of the body arrived and matched.
    pub fn verified(mut self, verify: Option<Verifier>, hold: bool) -> Pipe {
        self.verify = verify
            .zip(self.expected)
            .map(|(v, size)| BodyCheck::new(v, size));
        self.held = (hold && self.verify.is_some()).then(Vec::new);
        self
    }

    /// A pipe that starts with `first`, taking continuations from `control`, counting the
    /// bytes delivered on `written` and reporting to `notify`.
    pub fn new(
        first: PeerBody,
        expected: Option<u64>,
        control: mpsc::UnboundedReceiver<PipeControl<PeerResponse>>,
        written: Arc<AtomicU64>,
        notify: Notify,
    ) -> Pipe {
        Pipe {
            state: State::Streaming(first),
            written,
            expected,
            control,
            notify,
            verify: None,
            held: None,
            sent: 0,
        }
    }

    /// Bytes delivered so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn interrupted(&mut self) {
        self.state = State::Waiting;
        let written = self.written();
        (self.notify)(PipeEvent::Interrupted { written });
    }
}

/// A relay without its first response: what the pipe needs besides the first body.
pub struct RelayParts {
    /// The driver's control channel.
    pub control: mpsc::UnboundedReceiver<PipeControl<PeerResponse>>,
    /// Where the pipe reports.
    pub reporter: PipeReporter,
    /// The byte counter the driver reads.
    pub written: Arc<AtomicU64>,
    /// The check of the body against its digest, when the core asked for one.
    pub verify: Option<Verifier>,
    /// Hold the checked body until it matched.
    pub hold: bool,
}

impl RelayParts {
    /// Splits a relay into its first response and the rest.
    pub fn split(relay: Relay<PeerResponse>) -> (PeerResponse, RelayParts) {
        (
            relay.response,
            RelayParts {
                control: relay.control,
                reporter: relay.reporter,
                written: relay.written,
                verify: relay.verify.map(|d| d.verifier()),
                hold: relay.hold,
            },
        )
    }
}

impl Body for Pipe {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                // The hasher is too far behind: wait for it before reading on.
                State::Streaming(_)
                    if this
                        .verify
                        .as_mut()
                        .is_some_and(|v| v.poll_room(cx).is_pending()) =>
                {
                    return Poll::Pending;
                }
                State::Streaming(body) => match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        // The driver may tell a stalled body to stop (the core's watchdog).
                        match Pin::new(&mut this.control).poll_next(cx) {
                            Poll::Ready(Some(PipeControl::Interrupt)) => {
                                tracing::debug!(written = this.written(), "peer body stalled");
                                // Dropping the body closes the stalled connection.
                                this.interrupted();
                                continue;
                            }
                            Poll::Ready(Some(PipeControl::Abort)) => {
                                this.state = State::Aborted;
                                return Poll::Ready(Some(Err(Truncated(format!(
                                    "the body was aborted after {} bytes",
                                    this.written()
                                ))
                                .into())));
                            }
                            Poll::Ready(Some(PipeControl::Continue(_)))
                            | Poll::Ready(None)
                            | Poll::Pending => {}
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue; // trailers are not relayed
                        };
                        if data.is_empty() {
                            continue;
                        }
                        let written = this.written();
                        let room = this.expected.map_or(u64::MAX, |e| e - written.min(e));
                        if data.len() as u64 > room {
                            // More than promised: a broken peer. Never relay extra bytes.
                            this.state = State::Aborted;
                            return Poll::Ready(Some(Err(Truncated(
                                "peer sent more bytes than its Content-Length".into(),
                            )
                            .into())));
                        }
                        let written = written + data.len() as u64;
                        let complete = this.expected == Some(written);
                        if let Some(v) = &mut this.verify {
                            v.update(data.clone());
                            if complete {
                                // The last piece is held back until the verdict: the client
                                // never gets a complete body with the wrong bytes.
                                this.state = State::Verifying(data);
                                continue;
                            }
                        }
                        this.written.store(written, Ordering::Relaxed);
                        if let Some(held) = &mut this.held {
                            held.push(data);
                            continue;
                        }
                        if complete {
                            // Complete: the server may stop polling once it wrote
                            // Content-Length bytes, so the end is reported now.
                            this.state = State::Finished;
                            (this.notify)(PipeEvent::Finished);
                        }
                        this.sent += data.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(written = this.written(), error = %e, "peer body broke");
                        this.interrupted();
                    }
                    Poll::Ready(None) => {
                        if this.expected.is_some_and(|e| this.written() < e) {
                            tracing::debug!(written = this.written(), "peer body ended early");
                            this.interrupted();
                        } else {
                            this.state = State::Finished;
                            (this.notify)(PipeEvent::Finished);
                            return Poll::Ready(None);
                        }
                    }
                },
                State::Waiting => match Pin::new(&mut this.control).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(PipeControl::Continue(next))) => {
                        this.state = State::Streaming(next.response.into_body());
                    }
                    // Already stopped: nothing more to drop.
                    Poll::Ready(Some(PipeControl::Interrupt)) => {}
                    Poll::Ready(Some(PipeControl::Abort)) | Poll::Ready(None) => {
                        this.state = State::Aborted;
                        return Poll::Ready(Some(Err(Truncated(format!(
                            "no peer could continue the body after {} bytes",
                            this.written()
                        ))
                        .into())));
                    }
                },
                State::Verifying(_) => {
                    let verdict = match &mut this.verify {
                        Some(v) => match v.poll_verdict(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(ok) => ok,
                        },
                        None => true,
                    };
                    let State::Verifying(last) =
                        std::mem::replace(&mut this.state, State::Finished)
                    else {
                        unreachable!("matched above");
                    };
                    let check = this.verify.take();
                    if !verdict {
                        let digest = check.map(|c| c.digest().to_string()).unwrap_or_default();
                        tracing::warn!(%digest, written = this.written(), "relayed body does not match its digest");
                        this.state = State::Aborted;
                        this.held = None;
                        (this.notify)(PipeEvent::Mismatch);
                        return Poll::Ready(Some(Err(Truncated(format!(
                            "the body does not match {digest}"
                        ))
                        .into())));
                    }
                    let written = this.written() + last.len() as u64;
                    this.written.store(written, Ordering::Relaxed);
                    (this.notify)(PipeEvent::Finished);
                    if let Some(mut held) = this.held.take() {
                        // All of it arrived and matched: out it goes.
                        held.push(last);
                        this.state = State::Draining(held.into());
                        continue;
                    }
                    this.sent += last.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(last))));
                }
                State::Draining(pieces) => match pieces.pop_front() {
                    Some(data) => {
                        this.sent += data.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    None => this.state = State::Finished,
                },
                State::Finished | State::Aborted => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Finished | State::Aborted)
    }

    fn size_hint(&self) -> SizeHint {
        match self.expected {
            Some(e) => SizeHint::with_exact(e.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if matches!(
            self.state,
            State::Streaming(_) | State::Waiting | State::Verifying(_)
        ) {
            (self.notify)(PipeEvent::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::StreamExt;
    use futures::executor::block_on;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Events = Arc<Mutex<Vec<PipeEvent>>>;

    fn peer(chunks: Vec<Result<&'static [u8], &'static str>>) -> PeerBody {
        let frames = chunks.into_iter().map(|c| match c {
            Ok(b) => Ok(Frame::data(Bytes::from_static(b))),
            Err(e) => Err(BoxError::from(e)),
        });
        StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
    }

    fn pipe(
        first: PeerBody,
        expected: Option<u64>,
    ) -> (
        Pipe,
        mpsc::UnboundedSender<PipeControl<PeerResponse>>,
        Events,
    ) {
        let (tx, rx) = mpsc::unbounded();
        let events: Events = Arc::default();
        let e = events.clone();
        let p = Pipe::new(
            first,
            expected,
            rx,
            Arc::default(),
            Box::new(move |ev| e.lock().unwrap().push(ev)),
        );
        (p, tx, events)
    }

    fn resp(body: PeerBody) -> PeerResponse {
        PeerResponse {
            addr: "192.0.2.1:5000".parse().unwrap(),
            response: http::Response::new(body),
        }
    }

    async fn next(p: &mut Pipe) -> Option<Result<Bytes, String>> {
        p.frame().await.map(|r| {
            r.map(|f| f.into_data().unwrap_or_default())
                .map_err(|e| e.to_string())
        })
    }

    #[test]
    fn an_interrupted_body_is_continued_at_the_count() {
        block_on(async {
            // Two bytes, then nothing, forever (the connection stays open).
            let first = StreamBody::new(
                futures::stream::iter(vec![Ok(Frame::data(Bytes::from_static(b"ab")))])
                    .chain(futures::stream::pending()),
            )
            .boxed_unsync();
            let (mut p, tx, events) = pipe(first, Some(5));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            assert_eq!(p.written(), 2);
            // The core's watchdog found no progress: the driver interrupts the body.
            tx.unbounded_send(PipeControl::Interrupt).unwrap();
            tx.unbounded_send(PipeControl::Continue(resp(peer(vec![Ok(b"cde")]))))
                .unwrap();
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"cde"))));
            assert_eq!(
                *events.lock().unwrap(),
                vec![PipeEvent::Interrupted { written: 2 }, PipeEvent::Finished]
            );
        });
    }

    #[test]
    fn an_abort_while_streaming_is_an_error() {
        block_on(async {
            let first = StreamBody::new(
                futures::stream::iter(vec![Ok(Frame::data(Bytes::from_static(b"ab")))])
                    .chain(futures::stream::pending()),
            )
            .boxed_unsync();
            let (mut p, tx, _events) = pipe(first, Some(5));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            tx.unbounded_send(PipeControl::Abort).unwrap();
            assert!(matches!(next(&mut p).await, Some(Err(_))));
        });
    }

    #[test]
    fn whole_body_finishes() {
        block_on(async {
            let (mut p, _tx, events) = pipe(peer(vec![Ok(b"ab"), Ok(b"cd")]), Some(4));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"cd"))));
            assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Finished]);
            assert_eq!(next(&mut p).await, None);
            drop(p);
            assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Finished]);
        });
    }

    #[test]
    fn broken_body_is_continued() {
        block_on(async {
            let (mut p, tx, events) = pipe(peer(vec![Ok(b"ab"), Err("reset")]), Some(5));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            tx.unbounded_send(PipeControl::Continue(resp(peer(vec![Ok(b"cde")]))))
                .unwrap();
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"cde"))));
            assert_eq!(
                *events.lock().unwrap(),
                vec![PipeEvent::Interrupted { written: 2 }, PipeEvent::Finished]
            );
            assert_eq!(p.written(), 5);
        });
    }

    #[test]
    fn short_body_is_an_interruption_and_abort_is_an_error() {
        block_on(async {
            let (mut p, tx, events) = pipe(peer(vec![Ok(b"ab")]), Some(5));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            tx.unbounded_send(PipeControl::Abort).unwrap();
            assert!(matches!(next(&mut p).await, Some(Err(_))));
            assert_eq!(next(&mut p).await, None);
            drop(p);
            assert_eq!(
                *events.lock().unwrap(),
                vec![PipeEvent::Interrupted { written: 2 }]
            );
        });
    }

    #[test]
    fn extra_bytes_are_never_relayed() {
        block_on(async {
            let (mut p, _tx, _events) = pipe(peer(vec![Ok(b"abc")]), Some(2));
            assert!(matches!(next(&mut p).await, Some(Err(_))));
        });
    }

    fn check(body: &[u8]) -> Option<Verifier> {
        Some(speil_core::Digest::sha256_of(body).verifier())
    }

    #[test]
    fn a_verified_body_that_matches_is_complete() {
        block_on(async {
            let (p, _tx, events) = pipe(peer(vec![Ok(b"ab"), Ok(b"cd")]), Some(4));
            let mut p = p.verified(check(b"abcd"), false);
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"cd"))));
            assert_eq!(next(&mut p).await, None);
            assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Finished]);
        });
    }

    #[test]
    fn a_body_that_does_not_match_is_aborted_before_its_last_piece() {
        block_on(async {
            // Same length, one byte differs.
            let (p, _tx, events) = pipe(peer(vec![Ok(b"ab"), Ok(b"cX")]), Some(4));
            let mut p = p.verified(check(b"abcd"), false);
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            // The last piece never reaches the client: an error instead (hyper aborts the
            // connection), and the count stays at what was delivered.
            assert!(matches!(next(&mut p).await, Some(Err(e)) if e.contains("does not match")));
            assert_eq!(p.written(), 2);
            assert_eq!(next(&mut p).await, None);
            drop(p);
            assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Mismatch]);
        });
    }

    /// A body larger than [`crate::hasher::INLINE_MAX`] is hashed on a hasher thread while it
    /// streams: every piece but the last goes out as it arrives; the last waits for the
    /// verdict, and never goes out when the bytes do not match.
    #[test]
    fn a_large_body_is_hashed_beside_the_relay() {
        const PIECE: usize = 64 * 1024;
        let body: Vec<u8> = (0..40 * PIECE).map(|i| (i % 253) as u8).collect();
        for wrong in [false, true] {
            block_on(async {
                let mut sent = body.clone();
                if wrong {
                    *sent.last_mut().unwrap() ^= 1;
                }
                let sent = Bytes::from(sent);
                let frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..sent.len())
                    .step_by(PIECE)
                    .map(|at| Ok(Frame::data(sent.slice(at..at + PIECE))))
                    .collect();
                let first = StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
                let (p, _tx, events) = pipe(first, Some(body.len() as u64));
                let mut p = p.verified(check(&body), false);
                let mut got = Vec::new();
                let end = loop {
                    match next(&mut p).await {
                        Some(Ok(piece)) => got.extend_from_slice(&piece),
                        other => break other,
                    }
                };
                if wrong {
                    assert!(
                        matches!(&end, Some(Err(e)) if e.contains("does not match")),
                        "{end:?}"
                    );
                    assert_eq!(got.len(), body.len() - PIECE, "all but the last piece");
                    drop(p);
                    assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Mismatch]);
                } else {
                    assert!(end.is_none(), "{end:?}");
                    assert_eq!(got, body);
                    assert_eq!(p.written(), body.len() as u64);
                    assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Finished]);
                }
            });
        }
    }

    #[test]
    fn the_check_spans_a_continuation() {
        block_on(async {
            for (rest, ok) in [(&b"cde"[..], true), (&b"cdX"[..], false)] {
                let (p, tx, events) = pipe(peer(vec![Ok(b"ab"), Err("reset")]), Some(5));
                let mut p = p.verified(check(b"abcde"), false);
                assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
                let rest: &'static [u8] = Box::leak(rest.to_vec().into_boxed_slice());
                tx.unbounded_send(PipeControl::Continue(resp(peer(vec![Ok(rest)]))))
                    .unwrap();
                let last = next(&mut p).await;
                let end = if ok {
                    assert_eq!(last, Some(Ok(Bytes::from_static(rest))));
                    PipeEvent::Finished
                } else {
                    assert!(matches!(last, Some(Err(_))), "{last:?}");
                    PipeEvent::Mismatch
                };
                assert_eq!(
                    *events.lock().unwrap(),
                    vec![PipeEvent::Interrupted { written: 2 }, end]
                );
            }
        });
    }

    /// Polls `p` once, without waiting.
    fn poll_once(p: &mut Pipe) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        Pin::new(p).poll_frame(&mut cx)
    }

    #[test]
    fn a_held_body_goes_out_only_when_all_of_it_matched() {
        block_on(async {
            // Two pieces, then the peer waits (its connection open), then the last piece.
            let (tx_peer, rx_peer) = mpsc::unbounded::<Result<Frame<Bytes>, BoxError>>();
            let first = StreamBody::new(rx_peer).boxed_unsync();
            let (p, _tx, events) = pipe(first, Some(6));
            let mut p = p.verified(check(b"abcdef"), true);
            tx_peer
                .unbounded_send(Ok(Frame::data(Bytes::from_static(b"ab"))))
                .unwrap();
            tx_peer
                .unbounded_send(Ok(Frame::data(Bytes::from_static(b"cd"))))
                .unwrap();
            // Taken in (the watchdog sees progress), but nothing handed out.
            assert!(poll_once(&mut p).is_pending());
            assert_eq!(p.written(), 4);
            assert_eq!(p.size_hint().exact(), Some(6));
            tx_peer
                .unbounded_send(Ok(Frame::data(Bytes::from_static(b"ef"))))
                .unwrap();
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Finished]);
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"cd"))));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ef"))));
            assert_eq!(next(&mut p).await, None);
        });
    }

    #[test]
    fn a_held_body_that_does_not_match_sends_nothing() {
        block_on(async {
            let (p, tx, events) = pipe(peer(vec![Ok(b"ab"), Err("reset")]), Some(5));
            let mut p = p.verified(check(b"abcde"), true);
            // Held across a continuation, which brings the wrong bytes.
            tx.unbounded_send(PipeControl::Continue(resp(peer(vec![Ok(b"cdX")]))))
                .unwrap();
            let first = next(&mut p).await;
            assert!(matches!(first, Some(Err(_))), "{first:?}");
            assert_eq!(p.sent, 0, "not one byte reached the client");
            drop(p);
            assert_eq!(
                *events.lock().unwrap(),
                vec![PipeEvent::Interrupted { written: 2 }, PipeEvent::Mismatch]
            );
        });
    }

    #[test]
    fn dropping_early_reports_closed() {
        let (p, _tx, events) = pipe(peer(vec![Ok(b"abc")]), Some(3));
        drop(p);
        assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Closed]);
    }
}
