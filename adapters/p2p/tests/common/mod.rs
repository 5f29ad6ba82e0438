//! Helpers shared by the integration tests: nodes on distinct loopback addresses, polling with
//! bounded waits.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use speil_core::Key;
use speil_p2p::bootstrap::{Bootstrap, StaticBootstrap};
use speil_p2p::{Config, Handle, Keypair, Multiaddr, Provider};

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
pub async fn start(config: Config) -> (Handle, Multiaddr) {
    let handle = speil_p2p::tokio_rt::start(config).expect("node starts");
    let addr = wait_for(Duration::from_secs(5), || {
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
pub async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `cond` holds, at most `limit`.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(limit, || cond().then_some(())).await.is_some()
}

/// Runs one lookup and collects what it yields within `limit`.
pub async fn lookup_all(
    handle: &Handle,
    key: &Key,
    count: usize,
    limit: Duration,
) -> Vec<Provider> {
    let mut stream = handle.lookup(key, count).expect("node running");
    let mut found = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        while let Some(p) = stream.next().await {
            found.push(p);
        }
    })
    .await;
    found
}

/// Repeats lookups until one yields a provider, at most `limit`.
pub async fn find_provider(handle: &Handle, key: &Key, limit: Duration) -> Option<Provider> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut stream = handle.lookup(key, 1).expect("node running");
        if let Ok(Some(p)) = tokio::time::timeout(left, stream.next()).await {
            return Some(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tag key for tests.
pub fn key(n: usize) -> Key {
    Key::tag("example.com", "test/image", &format!("v{n}"))
}
