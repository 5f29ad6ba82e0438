//! Helpers shared by the integration tests: nodes on distinct loopback addresses, polling with
//! bounded waits, and each test run on every runtime.
//!
//! A test is an `async fn name<R: Runtime>(rt: R)`; `on_every_runtime!(name, …)` makes a
//! `name::tokio` test (a multi-thread tokio runtime with two workers, as
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` builds it) and a `name::smol`
//! test (`Smol::block_on` with two executor threads) of each.

#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::future::Either;
use speil_core::Key;
use speil_driver::smol::Smol;
use speil_driver::tokio::Tokio;
use speil_driver::{Runtime, RuntimeExt as _};
use speil_p2p::bootstrap::{Bootstrap, StaticBootstrap};
use speil_p2p::{Config, Handle, Keypair, Multiaddr, Provider};

/// Runs `test` on a tokio runtime like `#[tokio::test]`'s multi-thread flavour.
pub fn on_tokio<F: Future<Output = ()>>(test: impl FnOnce(Tokio) -> F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(test(Tokio));
}

/// Runs `test` on smol with two executor threads.
pub fn on_smol<F: Future<Output = ()>>(test: impl FnOnce(Smol) -> F) {
    let rt = Smol::new();
    rt.block_on(2, test(rt.clone()));
}

/// `on_every_runtime!(a, b)`: tests `a::tokio`, `a::smol`, `b::tokio`, `b::smol` running the
/// generic test functions `a` and `b`.
#[macro_export]
macro_rules! on_every_runtime {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn tokio() {
                super::common::on_tokio(super::$test);
            }

            #[test]
            fn smol() {
                super::common::on_smol(super::$test);
            }
        }
    )*};
}

/// How long the tests wait between two looks at a condition.
const POLL: Duration = Duration::from_millis(20);

/// `fut`, or `None` once `limit` passed.
pub async fn timeout<R: Runtime, T>(
    rt: &R,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    match futures::future::select(pin!(fut), rt.sleep(limit)).await {
        Either::Left((done, _)) => Some(done),
        Either::Right(_) => None,
    }
}

/// `127.0.0.<last>`.
pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A configuration for a test node on `127.0.0.<last>:<port>` with short timers.
pub fn config(last: u8, port: u16) -> Config {
    let mut config = Config::new(Keypair::generate_ed25519(), SocketAddr::new(ip(last), port));
    config.rebootstrap_backoff =
        speil_core::backoff::Backoff::new(Duration::from_millis(50), Duration::from_millis(500), 1);
    config.bootstrap_timeout = Duration::from_secs(3);
    config
}

/// Starts a node and waits until it listens; returns it with its address.
pub async fn start<R: Runtime>(rt: &R, config: Config) -> (Handle, Multiaddr) {
    let handle = speil_p2p::start(rt.clone(), config).expect("node starts");
    let addr = wait_for(rt, Duration::from_secs(5), || {
        handle.listen_addrs().into_iter().next()
    })
    .await
    .expect("node listens within 5 s");
    (handle, addr)
}

/// The `/p2p/` address of a node.
pub fn p2p_addr(handle: &Handle, addr: &Multiaddr) -> String {
    format!("{addr}/p2p/{}", handle.local_peer_id())
}

/// A static bootstrap to one node.
pub fn static_to(handle: &Handle, addr: &Multiaddr) -> Arc<dyn Bootstrap> {
    Arc::new(StaticBootstrap::new(&[p2p_addr(handle, addr)]).expect("valid address"))
}

/// Polls `f` every 20 ms until it returns `Some`, at most `limit`.
pub async fn wait_for<R: Runtime, T>(
    rt: &R,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        rt.sleep(POLL).await;
    }
}

/// Waits until `cond` holds, at most `limit`.
pub async fn wait_until<R: Runtime>(
    rt: &R,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    wait_for(rt, limit, || cond().then_some(())).await.is_some()
}

/// Runs one lookup and collects what it yields within `limit`.
pub async fn lookup_all<R: Runtime>(
    rt: &R,
    handle: &Handle,
    key: &Key,
    count: usize,
    limit: Duration,
) -> Vec<Provider> {
    let mut stream = handle.lookup(key, count).expect("node running");
    let mut found = Vec::new();
    timeout(rt, limit, async {
        while let Some(p) = stream.next().await {
            found.push(p);
        }
    })
    .await;
    found
}

/// Repeats lookups until one yields a provider, at most `limit`.
pub async fn find_provider<R: Runtime>(
    rt: &R,
    handle: &Handle,
    key: &Key,
    limit: Duration,
) -> Option<Provider> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut stream = handle.lookup(key, 1).expect("node running");
        if let Some(Some(p)) = timeout(rt, left, stream.next()).await {
            return Some(p);
        }
        rt.sleep(Duration::from_millis(50)).await;
    }
}

/// A tag key for tests.
pub fn key(n: usize) -> Key {
    Key::tag("example.com", "test/image", &format!("v{n}"))
}
