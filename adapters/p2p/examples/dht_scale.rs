//! DHT scale check: 50 nodes in one process on 127.0.1.x, each advertising some keys, then
//! lookups of random keys from random nodes. Prints the time to the first provider (p50, p99)
//! and the total. Bounded in time; stops by itself.
//!
//! `cargo run --release -p speil-p2p --example dht_scale [-- NODES KEYS_PER_NODE LOOKUPS]`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::{Rng as _, SeedableRng as _};
use speil_core::Key;
use speil_p2p::bootstrap::StaticBootstrap;
use speil_p2p::{Config, Handle, Keypair};

/// Longest wait for one lookup's first provider.
const LOOKUP_LIMIT: Duration = Duration::from_secs(5);
/// Longest the whole run may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn key(node: usize, n: usize) -> Key {
    Key::tag("example.com", &format!("node{node}/image{n}"), "latest")
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("arguments are numbers"))
        .unwrap_or(default)
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let nodes_n = arg(1, 50).clamp(2, 250);
    let keys_per_node = arg(2, 20);
    let lookups = arg(3, 1000);
    match tokio::time::timeout(RUN_LIMIT, run(nodes_n, keys_per_node, lookups)).await {
        Ok(()) => {}
        Err(_) => {
            eprintln!("gave up after {RUN_LIMIT:?}");
            std::process::exit(1);
        }
    }
}

async fn run(nodes_n: usize, keys_per_node: usize, lookups: usize) {
    let started = Instant::now();
    let mut nodes: Vec<Handle> = Vec::new();
    let mut seed_addr = String::new();
    for i in 0..nodes_n {
        let mut config = Config::new(Keypair::generate_ed25519(), SocketAddr::new(node_ip(i), 0));
        config.rebootstrap_backoff = speil_core::backoff::Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
            1,
        );
        if i > 0 {
            config.bootstrap = Some(Arc::new(
                StaticBootstrap::new(&[seed_addr.clone()]).expect("seed address"),
            ));
        }
        let node = speil_p2p::start(speil_driver::tokio::Tokio, config).expect("node starts");
        if i == 0 {
            assert!(wait_until(Duration::from_secs(5), || !node.listen_addrs().is_empty()).await);
            seed_addr = format!("{}/p2p/{}", node.listen_addrs()[0], node.local_peer_id());
        }
        nodes.push(node);
    }
    let all_ready = wait_until(Duration::from_secs(30), || {
        nodes.iter().all(|n| n.is_ready())
    })
    .await;
    assert!(all_ready, "not every node became ready");
    let joined = started.elapsed();
    // Let the routing tables fill (Kademlia bootstrap queries).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let table: usize = nodes.iter().map(|n| n.routing_table_size()).sum();

    let advertise_start = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        node.advertise((0..keys_per_node).map(|n| key(i, n)).collect())
            .expect("node running");
    }
    // Publication is asynchronous: measure lookups once every node's queries are done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = wait_until(Duration::from_secs(120), || {
        nodes.iter().all(|n| n.active_queries() == 0)
    })
    .await;
    assert!(quiet, "publication did not finish");
    let settled = advertise_start.elapsed();

    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    println!("nodes: {nodes_n}, keys per node: {keys_per_node}, lookups: {lookups}");
    println!(
        "joined (all ready): {joined:.2?}; mean routing table size: {:.1}",
        table as f64 / nodes_n as f64
    );
    println!("advertise until every publication query finished: {settled:.2?}");
    let quiet = measure(&nodes, &mut rng, lookups, keys_per_node).await;
    quiet.print("steady state");

    // The same lookups while every node publishes a second batch of keys (as after a restart
    // or at republication time).
    for (i, node) in nodes.iter().enumerate() {
        node.advertise(
            (0..keys_per_node)
                .map(|n| key(i, keys_per_node + n))
                .collect(),
        )
        .expect("node running");
    }
    let busy = measure(&nodes, &mut rng, lookups, keys_per_node).await;
    busy.print("during publication of another batch");
    println!("whole run: {:.2?}", started.elapsed());
    for node in &nodes {
        node.shutdown();
    }
}

struct Stats {
    latencies: Vec<Duration>,
    failures: usize,
    wrong: usize,
    total: Duration,
}

impl Stats {
    fn print(&self, phase: &str) {
        println!(
            "{phase}: time to first provider p50 {:.2?}, p99 {:.2?}, max {:.2?}; {} found, {} not found within {LOOKUP_LIMIT:?}, {} wrong; total {:.2?}",
            percentile(&self.latencies, 0.50),
            percentile(&self.latencies, 0.99),
            self.latencies.last().copied().unwrap_or_default(),
            self.latencies.len(),
            self.failures,
            self.wrong,
            self.total,
        );
    }
}

/// Sequential lookups of random keys (advertised by another node) from random nodes.
async fn measure(
    nodes: &[Handle],
    rng: &mut rand::rngs::SmallRng,
    lookups: usize,
    keys_per_node: usize,
) -> Stats {
    let n = nodes.len();
    let mut stats = Stats {
        latencies: Vec::with_capacity(lookups),
        failures: 0,
        wrong: 0,
        total: Duration::ZERO,
    };
    let start = Instant::now();
    for _ in 0..lookups {
        let from = rng.random_range(0..n);
        let mut owner = rng.random_range(0..n - 1);
        if owner >= from {
            owner += 1;
        }
        let k = key(owner, rng.random_range(0..keys_per_node));
        let t = Instant::now();
        let mut stream = nodes[from].lookup(&k, 1).expect("node running");
        match tokio::time::timeout(LOOKUP_LIMIT, stream.next()).await {
            Ok(Some(p)) => {
                stats.latencies.push(t.elapsed());
                if p.peer != nodes[owner].local_peer_id() || p.ips != vec![node_ip(owner)] {
                    stats.wrong += 1;
                }
            }
            _ => stats.failures += 1,
        }
    }
    stats.total = start.elapsed();
    stats.latencies.sort();
    stats
}

fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i + 1) as u8))
}
