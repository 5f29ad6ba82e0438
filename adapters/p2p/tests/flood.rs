//! A rogue swarm against one node: thousands of provider records and more connections than
//! the node admits. The node's store and per-peer state stay within their bounds, its own
//! announcements still go out, and lookups keep answering.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use speil_driver::Runtime;
use speil_p2p::{Config, ConnectionBounds, Handle, Keypair, StoreLimits};

on_every_runtime!(a_rogue_swarm_cannot_grow_a_node);

/// `127.0.2.<last>`: this test's own block of loopback addresses.
fn flood_config(last: u8) -> Config {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 2, last)), 0);
    let mut config = Config::new(Keypair::generate_ed25519(), addr);
    config.rebootstrap_backoff =
        speil_core::backoff::Backoff::new(Duration::from_millis(50), Duration::from_millis(500), 1);
    config.bootstrap_timeout = Duration::from_secs(3);
    config
}

/// Keys of the rogue's flood.
fn rogue_key(n: usize) -> speil_core::Key {
    speil_core::Key::tag("rogue.example", "flood", &format!("v{n}"))
}

const MAX_RECORDS: usize = 300;
const MAX_INCOMING: u32 = 12;
const FLOOD: usize = 1000;
const HOLDERS: u8 = 24;

async fn a_rogue_swarm_cannot_grow_a_node<R: Runtime>(rt: R) {
    // The node under attack, with small bounds so that the flood goes past them quickly.
    let mut cfg = flood_config(1);
    cfg.store = StoreLimits {
        max_records: MAX_RECORDS,
        ..StoreLimits::default()
    };
    cfg.connections = ConnectionBounds {
        max_established_incoming: MAX_INCOMING,
        ..ConnectionBounds::default()
    };
    let (victim, victim_addr) = start(&rt, cfg).await;

    // A member announces a key before the flood.
    let mut cfg = flood_config(2);
    cfg.bootstrap = Some(static_to(&victim, &victim_addr));
    let (member, _) = start(&rt, cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(15), || member.is_ready()).await);
    member.advertise(vec![key(1)]).unwrap();
    assert!(
        wait_until(&rt, Duration::from_secs(10), || victim.stored_records()
            >= 1)
        .await,
        "the member's record never reached the node"
    );

    // The rogue announces thousands of keys: every one is an ADD_PROVIDER to the node.
    let mut cfg = flood_config(3);
    cfg.bootstrap = Some(static_to(&victim, &victim_addr));
    let (rogue, _) = start(&rt, cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(15), || rogue.is_ready()).await);
    rogue
        .advertise((0..FLOOD).map(rogue_key).collect())
        .unwrap();

    // The store fills to its bound and no further.
    assert!(
        wait_until(&rt, Duration::from_secs(60), || victim.stored_records()
            >= MAX_RECORDS)
        .await,
        "the flood never filled the store: {} records",
        victim.stored_records()
    );
    assert!(
        wait_until(&rt, Duration::from_secs(60), || rogue.active_queries() == 0).await,
        "the rogue's publications never ended"
    );
    assert_eq!(victim.stored_records(), MAX_RECORDS);

    // More peers than the node admits connect and stay: the ones beyond the bound are
    // refused. The node has at most the admitted incoming connections plus the ones it
    // dialled itself (to the member and the rogue).
    let mut holders: Vec<Handle> = Vec::new();
    for i in 0..HOLDERS {
        let mut cfg = flood_config(10 + i);
        cfg.bootstrap = Some(static_to(&victim, &victim_addr));
        let (h, _) = start(&rt, cfg).await;
        holders.push(h);
    }
    assert!(
        wait_until(&rt, Duration::from_secs(20), || {
            holders.iter().filter(|h| h.connected_peers() > 0).count() >= MAX_INCOMING as usize - 2
        })
        .await,
        "the holders never connected"
    );
    assert!(
        victim.connected_peers() <= MAX_INCOMING as usize + 2,
        "{} peers connected to the node",
        victim.connected_peers()
    );
    let refused = holders.iter().filter(|h| h.connected_peers() == 0).count();
    assert!(refused > 0, "every holder got a connection");
    assert!(
        victim.known_peers() <= MAX_INCOMING as usize + 2 + victim.routing_table_size(),
        "{} peers tracked",
        victim.known_peers()
    );

    // The node's own lookups still answer while the holders stay.
    let found = find_provider(&rt, &victim, &key(1), Duration::from_secs(20)).await;
    assert_eq!(found.map(|p| p.peer), Some(member.local_peer_id()));

    // Once the holders leave, a new client joins through the node and finds the member's key
    // through it, and the node's own new announcement goes out although its store is full.
    for h in &holders {
        h.shutdown();
    }
    let mut cfg = flood_config(4);
    cfg.bootstrap = Some(static_to(&victim, &victim_addr));
    let (client, _) = start(&rt, cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(15), || client.is_ready()).await);
    let found = find_provider(&rt, &client, &key(1), Duration::from_secs(20)).await;
    assert_eq!(
        found.map(|p| p.peer),
        Some(member.local_peer_id()),
        "the member's key was not found through the flooded node"
    );
    victim.advertise(vec![key(2)]).unwrap();
    let found = find_provider(&rt, &client, &key(2), Duration::from_secs(20)).await;
    assert_eq!(found.map(|p| p.peer), Some(victim.local_peer_id()));

    for h in [client, rogue, member, victim] {
        h.shutdown();
    }
}
