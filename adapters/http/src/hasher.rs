//! Hashing a relayed body beside the relay (mechanism for [`crate::pipe`]).
//!
//! Checking a body against its digest costs a SHA-256 pass over every byte; done inline, the
//! pipe would read, hash and write each piece in turn, and the hash would add its whole time
//! to every relay. Instead each piece — a reference-counted [`Bytes`], never copied — goes to
//! a hasher thread while the pipe goes on relaying; the pipe waits for the verdict only
//! before the last byte. At most [`MAX_QUEUED`] bytes of one body wait to be hashed: past
//! that the pipe stops reading from the peer until the hasher caught up, so a slow hasher
//! costs speed, never memory.
//!
//! The hasher threads (at most [`MAX_THREADS`], started on first use) are shared by every
//! body; all the pieces of one body go to one thread, in order. Small bodies are hashed
//! inline: a thread hop costs more than their hash.

use std::future::Future as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::task::AtomicWaker;
use speil_core::Verifier;

/// Most bytes of one body queued for its hasher before the pipe waits.
pub const MAX_QUEUED: usize = 1024 * 1024;

/// Pieces are handed to the hasher thread in batches of at least this many bytes (the last
/// one smaller): one hand-over per piece woke the thread for every piece (measured with perf
/// on a mirroring node: task switches went from 13 % to 10 % of its CPU with batches).
pub const BATCH: usize = 256 * 1024;

/// Bodies up to this size are hashed inline.
pub const INLINE_MAX: u64 = 256 * 1024;

/// Most hasher threads.
pub const MAX_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// The shared hasher threads, each with its queue.
struct Pool {
    workers: Vec<Sender<Job>>,
    next: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS);
        let workers = (0..n)
            .filter_map(|i| {
                let (tx, rx) = channel::<Job>();
                std::thread::Builder::new()
                    .name(format!("speil-hash-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    })
                    .ok()
                    .map(|_| tx)
            })
            .collect();
        Pool {
            workers,
            next: AtomicUsize::new(0),
        }
    })
}

/// What one body's hasher thread and its pipe share.
struct Shared {
    /// The hash so far (`None` once the verdict was taken).
    verifier: Mutex<Option<Verifier>>,
    /// Bytes handed over and not hashed yet.
    queued: AtomicUsize,
    /// The pipe waiting for room.
    waker: AtomicWaker,
}

/// The check of one body against its digest.
pub struct BodyCheck {
    digest: speil_core::Digest,
    mode: Mode,
    /// Asked for, not received yet.
    verdict: Option<oneshot::Receiver<bool>>,
}

enum Mode {
    Inline(Option<Box<Verifier>>),
    Background {
        shared: Arc<Shared>,
        worker: Option<Sender<Job>>,
        /// Pieces not handed over yet, `batched` bytes in all (counted in `queued` already).
        batch: Vec<Bytes>,
        batched: usize,
    },
}

impl BodyCheck {
    /// A check of a body of `size` bytes with `verifier`.
    pub fn new(verifier: Verifier, size: u64) -> BodyCheck {
        let digest = verifier.digest().clone();
        let pool = pool();
        let mode = if size <= INLINE_MAX || pool.workers.is_empty() {
            Mode::Inline(Some(Box::new(verifier)))
        } else {
            let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.workers.len();
            Mode::Background {
                shared: Arc::new(Shared {
                    verifier: Mutex::new(Some(verifier)),
                    queued: AtomicUsize::new(0),
                    waker: AtomicWaker::new(),
                }),
                worker: Some(pool.workers[i].clone()),
                batch: Vec::new(),
                batched: 0,
            }
        };
        BodyCheck {
            digest,
            mode,
            verdict: None,
        }
    }

    /// The digest the body is checked against.
    pub fn digest(&self) -> &speil_core::Digest {
        &self.digest
    }

    /// Ready when another piece may be handed over (the hasher is less than [`MAX_QUEUED`]
    /// behind).
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Mode::Background { shared, .. } = &self.mode else {
            return Poll::Ready(());
        };
        if shared.queued.load(Ordering::Acquire) < MAX_QUEUED {
            return Poll::Ready(());
        }
        // The hasher must have everything queued to make room.
        self.flush();
        let Mode::Background { shared, .. } = &self.mode else {
            return Poll::Ready(());
        };
        shared.waker.register(cx.waker());
        if shared.queued.load(Ordering::Acquire) < MAX_QUEUED {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Adds the next piece.
    pub fn update(&mut self, piece: Bytes) {
        match &mut self.mode {
            Mode::Inline(v) => {
                if let Some(v) = v {
                    v.update(&piece);
                }
            }
            Mode::Background {
                shared,
                batch,
                batched,
                ..
            } => {
                shared.queued.fetch_add(piece.len(), Ordering::AcqRel);
                *batched += piece.len();
                batch.push(piece);
                if *batched >= BATCH {
                    self.flush();
                }
            }
        }
    }

    /// Hands the pieces not handed over yet to the hasher thread.
    fn flush(&mut self) {
        let Mode::Background {
            shared,
            worker,
            batch,
            batched,
        } = &mut self.mode
        else {
            return;
        };
        if batch.is_empty() {
            return;
        }
        let pieces = std::mem::take(batch);
        let len = std::mem::take(batched);
        let s = shared.clone();
        run(
            worker,
            Box::new(move || {
                if let Some(v) = s
                    .verifier
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    for piece in &pieces {
                        v.update(piece);
                    }
                }
                drop(pieces);
                s.queued.fetch_sub(len, Ordering::AcqRel);
                s.waker.wake();
            }),
        );
    }

    /// The verdict once every piece was added: whether the body matches its digest.
    pub fn poll_verdict(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.verdict.is_none() {
            self.flush();
        }
        let rx = match (&mut self.mode, &mut self.verdict) {
            (Mode::Inline(v), _) => return Poll::Ready(v.take().is_some_and(|v| v.matches())),
            (Mode::Background { shared, worker, .. }, verdict) => {
                verdict.get_or_insert_with(|| {
                    let (tx, rx) = oneshot::channel();
                    let s = shared.clone();
                    run(
                        worker,
                        Box::new(move || {
                            let v = s.verifier.lock().unwrap_or_else(|e| e.into_inner()).take();
                            let _ = tx.send(v.is_some_and(Verifier::matches));
                        }),
                    );
                    rx
                })
            }
        };
        match std::pin::Pin::new(rx).poll(cx) {
            Poll::Ready(v) => Poll::Ready(v.unwrap_or(false)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `job` on `worker`, or here when the worker is gone (then every later job of the body
/// runs here too, in order).
fn run(worker: &mut Option<Sender<Job>>, job: Job) {
    let job = match worker {
        Some(w) => match w.send(job) {
            Ok(()) => return,
            Err(e) => {
                *worker = None;
                e.0
            }
        },
        None => job,
    };
    job();
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;

    fn check(body: &[u8], pieces: usize, wrong: bool) -> bool {
        let digest = speil_core::Digest::sha256_of(body);
        let mut c = BodyCheck::new(digest.verifier(), body.len() as u64);
        let mut data = body.to_vec();
        if wrong {
            let last = data.len() - 1;
            data[last] ^= 1;
        }
        let data = Bytes::from(data);
        let step = data.len().div_ceil(pieces);
        let mut at = 0;
        block_on(futures::future::poll_fn(|cx| {
            while at < data.len() {
                // The pipe waits for room before each piece.
                if c.poll_room(cx).is_pending() {
                    return Poll::Pending;
                }
                let end = (at + step).min(data.len());
                c.update(data.slice(at..end));
                at = end;
            }
            Poll::Ready(())
        }));
        block_on(futures::future::poll_fn(|cx| c.poll_verdict(cx)))
    }

    #[test]
    fn small_and_large_bodies_match_or_not() {
        let small = vec![7u8; 1000];
        let large: Vec<u8> = (0..(3 * MAX_QUEUED + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        for (body, pieces) in [(&small, 3), (&large, 1), (&large, 200)] {
            assert!(check(body, pieces, false));
            assert!(!check(body, pieces, true));
        }
    }

    #[test]
    fn the_queue_is_bounded() {
        let large: Vec<u8> = vec![1u8; 8 * MAX_QUEUED];
        let digest = speil_core::Digest::sha256_of(&large);
        let mut c = BodyCheck::new(digest.verifier(), large.len() as u64);
        let data = Bytes::from(large);
        let piece = MAX_QUEUED / 2;
        let mut at = 0;
        block_on(futures::future::poll_fn(|cx| {
            while at < data.len() {
                if let Mode::Background { shared, .. } = &c.mode {
                    let queued = shared.queued.load(Ordering::Acquire);
                    assert!(queued < MAX_QUEUED + piece, "{queued} bytes queued");
                }
                if c.poll_room(cx).is_pending() {
                    return Poll::Pending;
                }
                c.update(data.slice(at..at + piece));
                at += piece;
            }
            Poll::Ready(())
        }));
        assert!(block_on(futures::future::poll_fn(|cx| c.poll_verdict(cx))));
    }
}
