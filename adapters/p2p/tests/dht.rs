//! Nodes on real TCP (127.0.0.x) advertising, finding and withdrawing keys.

mod common;

use std::time::Duration;

use common::*;
use speil_driver::{Runtime, RuntimeExt as _};
use speil_p2p::Handle;

// Each test below, on tokio and on smol.
on_every_runtime!(
    ten_nodes_find_each_others_providers,
    withdrawn_key_expires_while_advertised_key_is_republished,
    lookup_cancel_and_stop,
    advertised_addresses_follow_the_listen_address,
    dual_stack_listens_on_both_families,
    specific_ipv4_and_ipv6_addresses_are_advertised_and_dialled,
    one_family_missing_is_not_fatal_but_a_specific_ip_is,
);

/// Ten nodes; each advertises one key; every node finds the provider of another node's key,
/// with that node's IP, and never itself.
async fn ten_nodes_find_each_others_providers<R: Runtime>(rt: R) {
    let (first, first_addr) = start(&rt, config(101, 0)).await;
    let mut nodes: Vec<(Handle, u8)> = vec![(first.clone(), 101)];
    for i in 1..10u8 {
        let mut cfg = config(101 + i, 0);
        cfg.bootstrap = Some(static_to(&first, &first_addr));
        let (node, _) = start(&rt, cfg).await;
        nodes.push((node, 101 + i));
    }
    for (node, last) in &nodes {
        assert!(
            wait_until(&rt, Duration::from_secs(20), || node.is_ready()).await,
            "node 127.0.0.{last} not ready"
        );
    }
    for (i, (node, _)) in nodes.iter().enumerate() {
        node.advertise(vec![key(i)]).unwrap();
    }
    for (i, (node, _)) in nodes.iter().enumerate() {
        let j = (i + 3) % nodes.len();
        let (provider_node, provider_last) = &nodes[j];
        let found = find_provider(&rt, node, &key(j), Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("node {i} did not find the provider of key {j}"));
        assert_eq!(
            found.peer,
            provider_node.local_peer_id(),
            "node {i}, key {j}"
        );
        assert_eq!(found.ips, vec![ip(*provider_last)], "node {i}, key {j}");
    }
    // The provider's own lookup never yields itself.
    let (own, _) = &nodes[4];
    let mine = lookup_all(&rt, own, &key(4), 3, Duration::from_secs(10)).await;
    assert!(
        mine.iter().all(|p| p.peer != own.local_peer_id()),
        "{mine:?}"
    );
    // A key nobody advertised yields nothing, and the stream ends.
    let none = lookup_all(&rt, &nodes[0].0, &key(999), 3, Duration::from_secs(15)).await;
    assert!(none.is_empty(), "{none:?}");
    // The debug snapshot shows peers with their advertised addresses.
    let peers = nodes[0].0.peers();
    assert!(!peers.is_empty());
    assert!(peers.iter().all(|p| !p.addrs.is_empty()));
    assert_eq!(nodes[0].0.connected_peers(), peers.len());
    for (node, _) in &nodes {
        node.shutdown();
    }
}

/// A withdrawn key stops being found once its records expire; a key still advertised is
/// republished and stays found past the record TTL.
async fn withdrawn_key_expires_while_advertised_key_is_republished<R: Runtime>(rt: R) {
    let ttl = Duration::from_secs(3);
    let short = |last| {
        let mut cfg = config(last, 0);
        cfg.provider_record_ttl = ttl;
        cfg.provider_publication_interval = Duration::from_secs(1);
        cfg
    };
    let (a, a_addr) = start(&rt, short(111)).await;
    let mut nodes = vec![a.clone()];
    for last in 112..115 {
        let mut cfg = short(last);
        cfg.bootstrap = Some(static_to(&a, &a_addr));
        nodes.push(start(&rt, cfg).await.0);
    }
    for node in &nodes {
        assert!(wait_until(&rt, Duration::from_secs(20), || node.is_ready()).await);
    }
    let provider = &nodes[1];
    let seeker = &nodes[3];
    let (gone, kept) = (key(1), key(2));
    provider
        .advertise(vec![gone.clone(), kept.clone()])
        .unwrap();
    for k in [&gone, &kept] {
        let found = find_provider(&rt, seeker, k, Duration::from_secs(15)).await;
        assert_eq!(found.map(|p| p.peer), Some(provider.local_peer_id()));
    }
    provider.withdraw(vec![gone.clone()]).unwrap();
    let withdrawn_at = std::time::Instant::now();
    // Gone within the TTL (plus slack), for every other node.
    let mut expired = false;
    while withdrawn_at.elapsed() < ttl * 3 {
        let mut any = false;
        for node in nodes
            .iter()
            .filter(|n| n.local_peer_id() != provider.local_peer_id())
        {
            any |= !lookup_all(&rt, node, &gone, 1, Duration::from_secs(5))
                .await
                .is_empty();
        }
        if !any {
            expired = true;
            break;
        }
        rt.sleep(Duration::from_millis(200)).await;
    }
    assert!(
        expired,
        "withdrawn key still found {:?} after withdrawal",
        withdrawn_at.elapsed()
    );
    // Well past the TTL of the first publication, the kept key is still found.
    rt.sleep((ttl + Duration::from_secs(1)).saturating_sub(withdrawn_at.elapsed()))
        .await;
    let found = lookup_all(&rt, seeker, &kept, 1, Duration::from_secs(5)).await;
    assert_eq!(
        found.first().map(|p| p.peer),
        Some(provider.local_peer_id()),
        "advertised key lost after its TTL"
    );
    for node in &nodes {
        node.shutdown();
    }
}

/// Dropping a lookup cancels it; a handle of a stopped node reports it.
async fn lookup_cancel_and_stop<R: Runtime>(rt: R) {
    let (a, _) = start(&rt, config(121, 0)).await;
    let stream = a.lookup(&key(1), 3).unwrap();
    drop(stream);
    a.shutdown();
    assert!(wait_until(&rt, Duration::from_secs(5), || !a.is_running()).await);
    assert!(matches!(
        a.advertise(vec![key(1)]),
        Err(speil_p2p::Error::Stopped)
    ));
    assert!(a.lookup(&key(1), 1).is_err());
    assert!(!a.is_ready());
}

/// Listening on an unspecified address advertises every interface address except loopback;
/// listening on a loopback IP advertises it (listen-as-listened).
async fn advertised_addresses_follow_the_listen_address<R: Runtime>(rt: R) {
    let mut cfg = config(1, 0);
    cfg.listen = vec!["0.0.0.0:0".parse().unwrap()];
    let (any, _) = start(&rt, cfg).await;
    assert!(
        wait_until(&rt, Duration::from_secs(5), || any
            .listen_addrs()
            .iter()
            .any(|a| speil_p2p::ip_of(a).is_some_and(|ip| ip.is_loopback())))
        .await,
        "{:?}",
        any.listen_addrs()
    );
    let advertised = any.advertised_addrs();
    assert!(
        advertised.iter().all(
            |a| speil_p2p::ip_of(a).is_some_and(|ip| !ip.is_loopback() && !ip.is_unspecified())
        ),
        "{advertised:?}"
    );
    any.shutdown();

    let (lo, addr) = start(&rt, config(181, 0)).await;
    assert_eq!(lo.advertised_addrs(), vec![addr]);
    lo.shutdown();
}

/// `:PORT` listens on both families: the IPv4 and the IPv6 wildcard each get a listener, and
/// neither family's loopback is advertised.
async fn dual_stack_listens_on_both_families<R: Runtime>(rt: R) {
    let mut cfg = config(1, 0);
    cfg.listen = speil_p2p::dual_stack(0);
    let (any, _) = start(&rt, cfg).await;
    let both = wait_until(&rt, Duration::from_secs(5), || {
        let addrs = any.listen_addrs();
        let v4 = addrs
            .iter()
            .any(|a| speil_p2p::ip_of(a) == Some("127.0.0.1".parse().unwrap()));
        let v6 = addrs
            .iter()
            .any(|a| speil_p2p::ip_of(a) == Some("::1".parse().unwrap()));
        v4 && v6
    })
    .await;
    assert!(both, "listen addresses {:?}", any.listen_addrs());
    let advertised = any.advertised_addrs();
    assert!(
        advertised
            .iter()
            .all(|a| speil_p2p::ip_of(a).is_some_and(|ip| {
                !ip.is_loopback() && !ip.is_unspecified() && !ip.to_string().starts_with("fe80")
            })),
        "{advertised:?}"
    );
    any.shutdown();
}

/// Specific IPs of both families are listened on and advertised as listened, and a peer
/// reaches the node over IPv6.
async fn specific_ipv4_and_ipv6_addresses_are_advertised_and_dialled<R: Runtime>(rt: R) {
    let mut cfg = config(183, 0);
    cfg.listen.push("[::1]:0".parse().unwrap());
    let (a, _) = start(&rt, cfg).await;
    let v6 = wait_for(&rt, Duration::from_secs(5), || {
        a.advertised_addrs()
            .into_iter()
            .find(|m| speil_p2p::ip_of(m).is_some_and(|ip| ip.is_ipv6()))
    })
    .await
    .expect("an IPv6 address is advertised");
    assert_eq!(a.advertised_addrs().len(), 2, "{:?}", a.advertised_addrs());
    let mut cfg = config(184, 0);
    cfg.listen = vec!["[::1]:0".parse().unwrap()];
    cfg.bootstrap = Some(static_to(&a, &v6));
    let (b, _) = start(&rt, cfg).await;
    assert!(
        wait_until(&rt, Duration::from_secs(10), || b.is_ready()
            && a.is_ready())
        .await,
        "nodes did not join over IPv6"
    );
    a.shutdown();
    b.shutdown();
}

/// A wildcard family that cannot be listened on (here: its port is taken) is skipped, the
/// other family still listens; a specific IP that cannot be listened on fails the start.
async fn one_family_missing_is_not_fatal_but_a_specific_ip_is<R: Runtime>(rt: R) {
    let taken = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cfg = config(1, 0);
    cfg.listen = vec![
        "0.0.0.0:0".parse().unwrap(),
        std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
    ];
    let (node, _) = start(&rt, cfg).await;
    assert!(
        node.listen_addrs()
            .iter()
            .all(|a| speil_p2p::ip_of(a).is_some_and(|ip| ip.is_ipv4())),
        "{:?}",
        node.listen_addrs()
    );
    node.shutdown();

    let mut cfg = config(1, 0);
    cfg.listen = vec![
        "0.0.0.0:0".parse().unwrap(),
        std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ];
    assert!(matches!(
        speil_p2p::start(rt.clone(), cfg),
        Err(speil_p2p::Error::Listen { .. })
    ));
    let mut cfg = config(1, 0);
    cfg.listen = Vec::new();
    assert!(matches!(
        speil_p2p::start(rt.clone(), cfg),
        Err(speil_p2p::Error::NoListenAddress)
    ));
    drop(taken);
}
