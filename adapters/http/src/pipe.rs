//! The body of a mirrored response: a peer's body, continued by another peer's body when it
//! breaks (SPEC.md §3).
//!
//! The pipe counts the bytes it passed to the client. When the peer's body fails (or ends
//! before the length the client was promised), it reports [`PipeEvent::Interrupted`] with
//! that count and waits: [`PipeControl::Continue`] splices in the next peer's body (which the
//! core asked for with the right `Range`), [`PipeControl::Abort`] ends the body with an error
//! so that hyper aborts the connection — the client never sees a clean, short body.
//!
//! A peer that stops sending without closing its connection is caught by the stall watchdog:
//! when no byte arrives for the core's `stall_timeout`, the body counts as broken.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

use crate::BoxError;
use crate::body::Truncated;

/// A peer's response body.
pub type PeerBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the driver tells a waiting pipe.
pub enum PipeControl {
    /// Continue with this body (the rest of the response, from where it broke).
    Continue(PeerBody),
    /// Nobody can continue: abort the client's connection.
    Abort,
}

/// What a pipe tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeEvent {
    /// The whole body reached the client.
    Finished,
    /// The peer's body broke after `written` bytes (in total) reached the client.
    Interrupted {
        /// Bytes of the body delivered so far.
        written: u64,
    },
    /// The client went away (or hyper dropped the body) before the end.
    Closed,
}

enum State {
    Streaming(PeerBody),
    Waiting,
    Finished,
    Aborted,
}

/// The client's body of a mirrored response.
pub struct Pipe {
    state: State,
    written: u64,
    expected: Option<u64>,
    control: mpsc::UnboundedReceiver<PipeControl>,
    notify: Box<dyn FnMut(PipeEvent) + Send>,
    stall: Option<Stall>,
}

/// The stall watchdog: a timer re-armed by every byte that arrives.
pub struct Stall {
    timeout: Duration,
    sleep: Box<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send>,
    timer: Option<BoxFuture<'static, ()>>,
}

impl Stall {
    /// A watchdog of `timeout`, made of the runtime's `sleep`.
    pub fn new(
        timeout: Duration,
        sleep: impl Fn(Duration) -> BoxFuture<'static, ()> + Send + 'static,
    ) -> Stall {
        Stall {
            timeout,
            sleep: Box::new(sleep),
            timer: None,
        }
    }

    /// Whether the body has delivered nothing for `timeout` (arms the timer on first use).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timer = self.timer.get_or_insert_with(|| (self.sleep)(self.timeout));
        timer.poll_unpin(cx).is_ready()
    }

    fn reset(&mut self) {
        self.timer = None;
    }
}

impl Pipe {
    /// Watches for a stalled peer body (see [`Stall`]).
    pub fn with_stall(mut self, stall: Stall) -> Pipe {
        self.stall = Some(stall);
        self
    }

    /// A pipe that starts with `first`, promised to deliver `expected` bytes (the response's
    /// `Content-Length`; `None` when unknown, e.g. for HEAD), taking continuations from
    /// `control` and reporting to `notify`.
    pub fn new(
        first: PeerBody,
        expected: Option<u64>,
        control: mpsc::UnboundedReceiver<PipeControl>,
        notify: Box<dyn FnMut(PipeEvent) + Send>,
    ) -> Pipe {
        Pipe {
            state: State::Streaming(first),
            written: 0,
            expected,
            control,
            notify,
            stall: None,
        }
    }

    /// Bytes delivered so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn interrupted(&mut self) {
        self.state = State::Waiting;
        let written = self.written;
        (self.notify)(PipeEvent::Interrupted { written });
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
                State::Streaming(body) => match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        if this.stall.as_mut().is_some_and(|s| s.expired(cx)) {
                            tracing::debug!(written = this.written, "peer body stalled");
                            if let Some(s) = this.stall.as_mut() {
                                s.reset();
                            }
                            // Dropping the body closes the stalled connection.
                            this.interrupted();
                            continue;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(s) = this.stall.as_mut() {
                            s.reset();
                        }
                        let Ok(data) = frame.into_data() else {
                            continue; // trailers are not relayed
                        };
                        if data.is_empty() {
                            continue;
                        }
                        let room = this.expected.map_or(u64::MAX, |e| e - this.written.min(e));
                        if data.len() as u64 > room {
                            // More than promised: a broken peer. Never relay extra bytes.
                            this.state = State::Aborted;
                            return Poll::Ready(Some(Err(Truncated(
                                "peer sent more bytes than its Content-Length".into(),
                            )
                            .into())));
                        }
                        this.written += data.len() as u64;
                        if this.expected == Some(this.written) {
                            // Complete: hyper may stop polling once it wrote Content-Length
                            // bytes, so the end is reported now.
                            this.state = State::Finished;
                            (this.notify)(PipeEvent::Finished);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(written = this.written, error = %e, "peer body broke");
                        this.interrupted();
                    }
                    Poll::Ready(None) => {
                        if this.expected.is_some_and(|e| this.written < e) {
                            tracing::debug!(written = this.written, "peer body ended early");
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
                    Poll::Ready(Some(PipeControl::Continue(body))) => {
                        this.state = State::Streaming(body);
                    }
                    Poll::Ready(Some(PipeControl::Abort)) | Poll::Ready(None) => {
                        this.state = State::Aborted;
                        return Poll::Ready(Some(Err(Truncated(format!(
                            "no peer could continue the body after {} bytes",
                            this.written
                        ))
                        .into())));
                    }
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
            Some(e) => SizeHint::with_exact(e.saturating_sub(self.written)),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if matches!(self.state, State::Streaming(_) | State::Waiting) {
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
    ) -> (Pipe, mpsc::UnboundedSender<PipeControl>, Events) {
        let (tx, rx) = mpsc::unbounded();
        let events: Events = Arc::default();
        let e = events.clone();
        let p = Pipe::new(
            first,
            expected,
            rx,
            Box::new(move |ev| e.lock().unwrap().push(ev)),
        );
        (p, tx, events)
    }

    async fn next(p: &mut Pipe) -> Option<Result<Bytes, String>> {
        p.frame().await.map(|r| {
            r.map(|f| f.into_data().unwrap_or_default())
                .map_err(|e| e.to_string())
        })
    }

    #[test]
    fn a_stalled_body_is_an_interruption() {
        block_on(async {
            // Two bytes, then nothing, forever (the connection stays open).
            let first = StreamBody::new(
                futures::stream::iter(vec![Ok(Frame::data(Bytes::from_static(b"ab")))])
                    .chain(futures::stream::pending()),
            )
            .boxed_unsync();
            let (p, tx, events) = pipe(first, Some(5));
            // A timer that fires at once stands for the stall timeout passing.
            let mut p = p.with_stall(Stall::new(Duration::from_secs(5), |_| {
                futures::future::ready(()).boxed()
            }));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            tx.unbounded_send(PipeControl::Continue(peer(vec![Ok(b"cde")])))
                .unwrap();
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"cde"))));
            assert_eq!(
                *events.lock().unwrap(),
                vec![PipeEvent::Interrupted { written: 2 }, PipeEvent::Finished]
            );
        });
    }

    #[test]
    fn a_slow_body_within_the_stall_timeout_is_not_interrupted() {
        block_on(async {
            let (p, _tx, events) = pipe(peer(vec![Ok(b"ab"), Ok(b"cd")]), Some(4));
            // A timer that never fires.
            let mut p = p.with_stall(Stall::new(Duration::from_secs(5), |_| {
                futures::future::pending().boxed()
            }));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"ab"))));
            assert_eq!(next(&mut p).await, Some(Ok(Bytes::from_static(b"cd"))));
            assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Finished]);
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
            tx.unbounded_send(PipeControl::Continue(peer(vec![Ok(b"cde")])))
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

    #[test]
    fn dropping_early_reports_closed() {
        let (p, _tx, events) = pipe(peer(vec![Ok(b"abc")]), Some(3));
        drop(p);
        assert_eq!(*events.lock().unwrap(), vec![PipeEvent::Closed]);
    }
}
