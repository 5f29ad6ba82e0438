//! A simulated [`Runtime`]: a shared simulated clock, timers that complete when the clock
//! reaches their deadline, and a deterministic single-threaded task queue that the test
//! drives.
//!
//! Nothing runs by itself: [`SimRuntime::run_ready`] polls every ready task (in the order they
//! were woken) until none is ready, and [`SimRuntime::advance`] moves the clock to the
//! earliest deadline somebody waits for and wakes those timers. The simulated cluster has no
//! sockets: the TCP, unix-socket and `sendfile` methods fail with an [`io::Error`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};
use speil_driver::runtime::{Runtime, Timer};

/// Most polls [`SimRuntime::run_ready`] makes before the clock moves (livelock guard).
pub const MAX_POLLS: usize = 100_000;

/// What the socket methods of [`SimRuntime`] answer.
pub const NO_SOCKETS: &str = "the simulated cluster has no sockets";

/// A connection or listener of the simulated runtime: it has no values, because the
/// simulated cluster never opens a socket.
#[derive(Debug)]
pub enum NoSocket {}

impl AsFd for NoSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match *self {}
    }
}

impl AsyncRead for NoSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match *self.get_mut() {}
    }
}

impl AsyncWrite for NoSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match *self.get_mut() {}
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self.get_mut() {}
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self.get_mut() {}
    }
}

fn no_sockets() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, NO_SOCKETS)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The clock and the timers.
#[derive(Default)]
struct Clock {
    /// Simulated time since the base.
    now: Duration,
    /// Every live timer: its deadline, and the waker of whoever waits for it.
    timers: BTreeMap<u64, (Instant, Option<Waker>)>,
    next_timer: u64,
}

/// Tasks not being polled right now, by id.
#[derive(Default)]
struct Tasks {
    futures: BTreeMap<u64, BoxFuture<'static, ()>>,
    next: u64,
}

/// Woken tasks, in the order they were woken.
#[derive(Default)]
struct Ready {
    queue: VecDeque<u64>,
    queued: BTreeSet<u64>,
}

impl Ready {
    fn push(&mut self, id: u64) {
        if self.queued.insert(id) {
            self.queue.push_back(id);
        }
    }
}

struct Inner {
    base: Instant,
    clock: Mutex<Clock>,
    tasks: Mutex<Tasks>,
    ready: Arc<Mutex<Ready>>,
}

/// A task's waker: puts the task back on the ready queue.
struct TaskWaker {
    id: u64,
    ready: Arc<Mutex<Ready>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        lock(&self.ready).push(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.ready).push(self.id);
    }
}

/// The simulated runtime. Cheap to clone; every clone shares the clock and the task queue.
#[derive(Clone)]
pub struct SimRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRuntime")
            .field("elapsed", &self.elapsed())
            .finish_non_exhaustive()
    }
}

impl Default for SimRuntime {
    fn default() -> Self {
        SimRuntime::new()
    }
}

impl SimRuntime {
    /// A runtime whose clock starts now (the base is the only real clock read; everything
    /// after it is simulated).
    pub fn new() -> SimRuntime {
        SimRuntime {
            inner: Arc::new(Inner {
                base: Instant::now(),
                clock: Mutex::default(),
                tasks: Mutex::default(),
                ready: Arc::default(),
            }),
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        lock(&self.inner.clock).now
    }

    /// The instant `elapsed` after the start.
    pub fn at(&self, elapsed: Duration) -> Instant {
        self.inner.base + elapsed
    }

    /// Simulated time since the start at `instant`.
    pub fn since_start(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.inner.base)
    }

    /// Polls every ready task, in the order they were woken, until none is ready. Returns
    /// how many polls that took. Panics when tasks keep each other ready for
    /// [`MAX_POLLS`] polls without the clock moving (a livelock).
    pub fn run_ready(&self) -> usize {
        let mut polls = 0;
        loop {
            assert!(
                polls < MAX_POLLS,
                "livelock: tasks stayed ready for {polls} polls at {:?}",
                self.elapsed()
            );
            let id = {
                let mut ready = lock(&self.inner.ready);
                let Some(id) = ready.queue.pop_front() else {
                    return polls;
                };
                ready.queued.remove(&id);
                id
            };
            // A task woken after it finished (or twice) is not there any more.
            let Some(mut fut) = lock(&self.inner.tasks).futures.remove(&id) else {
                continue;
            };
            polls += 1;
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: self.inner.ready.clone(),
            }));
            let mut cx = Context::from_waker(&waker);
            if fut.as_mut().poll(&mut cx).is_pending() {
                lock(&self.inner.tasks).futures.insert(id, fut);
            }
        }
    }

    /// The earliest deadline a task waits for.
    pub fn next_deadline(&self) -> Option<Duration> {
        let clock = lock(&self.inner.clock);
        clock
            .timers
            .values()
            .filter(|(_, waker)| waker.is_some())
            .map(|(deadline, _)| self.since_start(*deadline))
            .min()
    }

    /// Moves the clock to `to` (never backwards) and wakes every timer that is due.
    pub fn advance_to(&self, to: Duration) {
        let due: Vec<Waker> = {
            let mut clock = lock(&self.inner.clock);
            clock.now = clock.now.max(to);
            let now = self.inner.base + clock.now;
            clock
                .timers
                .values_mut()
                .filter(|(deadline, _)| *deadline <= now)
                .filter_map(|(_, waker)| waker.take())
                .collect()
        };
        for w in due {
            w.wake();
        }
    }

    /// Moves the clock to the earliest deadline a task waits for and wakes those timers;
    /// `false` when nobody waits for a timer.
    pub fn advance(&self) -> bool {
        match self.next_deadline() {
            Some(at) => {
                self.advance_to(at);
                true
            }
            None => false,
        }
    }

    /// Tasks not finished.
    pub fn live_tasks(&self) -> usize {
        lock(&self.inner.tasks).futures.len()
    }

    /// Drops every task (what a runtime does when it shuts down).
    pub fn shutdown(&self) {
        let tasks = std::mem::take(&mut lock(&self.inner.tasks).futures);
        drop(tasks);
        let mut ready = lock(&self.inner.ready);
        ready.queue.clear();
        ready.queued.clear();
    }
}

/// A timer of the simulated clock.
pub struct SimTimer {
    inner: Arc<Inner>,
    id: u64,
}

impl SimTimer {
    fn deadline(&self) -> Option<Instant> {
        lock(&self.inner.clock).timers.get(&self.id).map(|t| t.0)
    }
}

impl std::fmt::Debug for SimTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTimer")
            .field("deadline", &self.deadline())
            .finish()
    }
}

impl Future for SimTimer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut clock = lock(&self.inner.clock);
        let now = self.inner.base + clock.now;
        match clock.timers.get_mut(&self.id) {
            Some((deadline, _)) if *deadline <= now => Poll::Ready(()),
            Some((_, waker)) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(()),
        }
    }
}

impl Timer for SimTimer {
    fn reset(&mut self, deadline: Instant) {
        let due = {
            let mut clock = lock(&self.inner.clock);
            let now = self.inner.base + clock.now;
            let entry = clock.timers.entry(self.id).or_insert((deadline, None));
            entry.0 = deadline;
            if deadline <= now {
                entry.1.take()
            } else {
                None
            }
        };
        if let Some(w) = due {
            w.wake();
        }
    }
}

impl Drop for SimTimer {
    fn drop(&mut self) {
        lock(&self.inner.clock).timers.remove(&self.id);
    }
}

impl Runtime for SimRuntime {
    type Tcp = NoSocket;
    type Listener = NoSocket;
    type Unix = NoSocket;
    type Timer = SimTimer;
    type HyperTcp = speil_driver::io::HyperIo<Self::Tcp>;

    fn name(&self) -> &'static str {
        "simulated"
    }

    fn now(&self) -> Instant {
        self.inner.base + self.elapsed()
    }

    fn timer(&self, deadline: Instant) -> SimTimer {
        let mut clock = lock(&self.inner.clock);
        let id = clock.next_timer;
        clock.next_timer += 1;
        clock.timers.insert(id, (deadline, None));
        SimTimer {
            inner: self.inner.clone(),
            id,
        }
    }

    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        let id = {
            let mut tasks = lock(&self.inner.tasks);
            let id = tasks.next;
            tasks.next += 1;
            tasks.futures.insert(id, fut);
            id
        };
        lock(&self.inner.ready).push(id);
    }

    fn spawn_blocking<T, F>(&self, f: F) -> BoxFuture<'static, io::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        // Inline: simulated work takes no simulated time.
        let value = f();
        Box::pin(std::future::ready(Ok(value)))
    }

    fn connect(&self, _addr: SocketAddr) -> BoxFuture<'static, io::Result<NoSocket>> {
        Box::pin(std::future::ready(Err(no_sockets())))
    }

    fn listen(&self, _listener: std::net::TcpListener) -> io::Result<NoSocket> {
        Err(no_sockets())
    }

    fn listener_addr(&self, listener: &NoSocket) -> io::Result<SocketAddr> {
        match *listener {}
    }

    fn poll_accept(
        &self,
        listener: &NoSocket,
        _cx: &mut Context<'_>,
    ) -> Poll<io::Result<(NoSocket, SocketAddr)>> {
        match *listener {}
    }

    fn hyper_tcp(&self, tcp: Self::Tcp) -> Self::HyperTcp {
        speil_driver::io::hyper_io(tcp)
    }

    fn connect_unix(&self, _path: &Path) -> BoxFuture<'static, io::Result<NoSocket>> {
        Box::pin(std::future::ready(Err(no_sockets())))
    }

    fn poll_sendfile(
        &self,
        socket: &NoSocket,
        _file: &File,
        _offset: u64,
        _len: usize,
        _cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match *socket {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use speil_driver::RuntimeExt;

    use super::*;

    #[test]
    fn timers_fire_in_deadline_order_on_simulated_time() {
        let rt = SimRuntime::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        for (name, ms) in [("b", 30), ("a", 10), ("c", 20)] {
            let (rt2, log) = (rt.clone(), log.clone());
            rt.spawn(
                async move {
                    rt2.sleep(Duration::from_millis(ms)).await;
                    log.lock().unwrap().push((name, rt2.elapsed()));
                }
                .boxed(),
            );
        }
        rt.run_ready();
        assert!(log.lock().unwrap().is_empty());
        while rt.advance() {
            rt.run_ready();
        }
        let ms = Duration::from_millis;
        assert_eq!(
            *log.lock().unwrap(),
            vec![("a", ms(10)), ("c", ms(20)), ("b", ms(30))]
        );
        assert_eq!(rt.live_tasks(), 0);
    }

    #[test]
    fn a_reset_timer_fires_at_its_new_deadline() {
        let rt = SimRuntime::new();
        let fired = Arc::new(AtomicUsize::new(0));
        let mut timer = rt.timer(rt.at(Duration::from_secs(10)));
        timer.reset(rt.at(Duration::from_secs(3)));
        let f = fired.clone();
        let rt2 = rt.clone();
        rt.spawn(
            async move {
                timer.await;
                f.store(rt2.elapsed().as_millis() as usize, Ordering::SeqCst);
            }
            .boxed(),
        );
        rt.run_ready();
        assert_eq!(rt.next_deadline(), Some(Duration::from_secs(3)));
        assert!(rt.advance());
        rt.run_ready();
        assert_eq!(fired.load(Ordering::SeqCst), 3000);
        assert!(!rt.advance(), "nobody waits any more");
    }

    #[test]
    #[should_panic(expected = "livelock")]
    fn tasks_that_keep_waking_each_other_are_a_livelock() {
        let rt = SimRuntime::new();
        rt.spawn(
            futures::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            })
            .boxed(),
        );
        rt.run_ready();
    }

    #[test]
    fn sockets_are_refused() {
        let rt = SimRuntime::new();
        let r = futures::executor::block_on(rt.connect("192.0.2.1:5000".parse().unwrap()));
        assert_eq!(r.err().map(|e| e.to_string()), Some(NO_SOCKETS.to_owned()));
        let r = futures::executor::block_on(rt.connect_unix(Path::new("/nowhere")));
        assert_eq!(r.err().map(|e| e.to_string()), Some(NO_SOCKETS.to_owned()));
    }
}
