//! Joining a cluster: identity kept across restarts, the pre-shared key, and each bootstrap
//! kind.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use speil_driver::{Runtime, RuntimeExt as _};
use speil_p2p::bootstrap::{DnsBootstrap, HostsResolver, HttpBootstrap, SystemResolver};
use speil_p2p::{PreSharedKey, identity};

// Each test below, on tokio and on smol.
on_every_runtime!(
    restart_keeps_peer_id,
    psk_keeps_outsiders_out,
    rebootstraps_until_the_seed_appears,
    dns_bootstrap_joins,
    http_bootstrap_joins,
    routing_table_empties_and_refills,
    lone_node_is_ready,
);

/// How long one `/id` exchange may take (the registry's value).
const ID_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A node restarted with the same data dir keeps its peer id (key file mode 0600), and rejoins.
async fn restart_keeps_peer_id<R: Runtime>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested/data");
    let (seed, seed_addr) = start(&rt, config(131, 0)).await;

    let mut cfg = config(132, 0);
    cfg.keypair = identity::load_or_generate(&data_dir).unwrap();
    cfg.bootstrap = Some(static_to(&seed, &seed_addr));
    let (node, _) = start(&rt, cfg).await;
    let first_id = node.local_peer_id();
    assert!(wait_until(&rt, Duration::from_secs(15), || node.is_ready()).await);
    let mode = std::fs::metadata(data_dir.join("private.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    node.shutdown();
    assert!(wait_until(&rt, Duration::from_secs(5), || !node.is_running()).await);

    let mut cfg = config(132, 0);
    cfg.keypair = identity::load_or_generate(&data_dir).unwrap();
    cfg.bootstrap = Some(static_to(&seed, &seed_addr));
    let (again, _) = start(&rt, cfg).await;
    assert_eq!(again.local_peer_id(), first_id);
    assert!(wait_until(&rt, Duration::from_secs(15), || again.is_ready()).await);
    // The seed sees the restarted node under the same id.
    assert!(
        wait_until(&rt, Duration::from_secs(10), || seed
            .peers()
            .iter()
            .any(|p| p.peer == first_id))
        .await
    );

    // A corrupt key file is an error, not a new identity.
    std::fs::write(data_dir.join("private.key"), b"garbage").unwrap();
    assert!(identity::load_or_generate(&data_dir).is_err());
    again.shutdown();
    seed.shutdown();
}

/// Only nodes holding the cluster's pre-shared key can join.
async fn psk_keeps_outsiders_out<R: Runtime>(rt: R) {
    let psk = PreSharedKey::new([42u8; 32]);
    let with_psk = |last, psk: Option<PreSharedKey>| {
        let mut cfg = config(last, 0);
        cfg.psk = psk;
        cfg
    };
    let (seed, seed_addr) = start(&rt, with_psk(141, Some(psk))).await;

    let mut member = with_psk(142, Some(psk));
    member.bootstrap = Some(static_to(&seed, &seed_addr));
    let (member, _) = start(&rt, member).await;

    let mut outsider = with_psk(143, None);
    outsider.bootstrap = Some(static_to(&seed, &seed_addr));
    let (outsider, _) = start(&rt, outsider).await;

    let mut wrong = with_psk(144, Some(PreSharedKey::new([7u8; 32])));
    wrong.bootstrap = Some(static_to(&seed, &seed_addr));
    let (wrong, _) = start(&rt, wrong).await;

    assert!(wait_until(&rt, Duration::from_secs(15), || member.is_ready()).await);
    // The outsiders keep trying (backoff capped at 500 ms in tests) and never get in.
    rt.sleep(Duration::from_secs(3)).await;
    for node in [&outsider, &wrong] {
        assert!(!node.is_ready());
        assert_eq!(node.connected_peers(), 0);
    }
    let seed_peers: Vec<_> = seed.peers().into_iter().map(|p| p.peer).collect();
    assert_eq!(seed_peers, vec![member.local_peer_id()]);
    for node in [&seed, &member, &outsider, &wrong] {
        node.shutdown();
    }
}

/// A node whose static bootstrap peer is not up yet keeps retrying and joins once it is.
async fn rebootstraps_until_the_seed_appears<R: Runtime>(rt: R) {
    let port = free_port(&[151]);
    let seed_cfg = config(151, port);
    let seed_addr: speil_p2p::Multiaddr = format!("/ip4/127.0.0.151/tcp/{port}").parse().unwrap();
    let seed_id = seed_cfg.keypair.public().to_peer_id();

    let mut cfg = config(152, 0);
    cfg.bootstrap = Some(Arc::new(
        speil_p2p::bootstrap::StaticBootstrap::new(&[format!("{seed_addr}/p2p/{seed_id}")])
            .unwrap(),
    ));
    let (node, _) = start(&rt, cfg).await;
    rt.sleep(Duration::from_secs(1)).await;
    assert!(!node.is_ready());
    let (seed, _) = start(&rt, seed_cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(15), || node.is_ready()).await);
    assert!(node.peers().iter().any(|p| p.peer == seed_id));
    node.shutdown();
    seed.shutdown();
}

/// `dns` bootstrap: a name resolved from a hosts map, dialled without peer ids.
async fn dns_bootstrap_joins<R: Runtime>(rt: R) {
    let port = free_port(&[161, 162, 163, 164]);
    let (a, _) = start(&rt, config(161, port)).await;
    let (b, _) = start(&rt, config(162, port)).await;
    let hosts = HostsResolver::parse(
        "127.0.0.161 speil.test\n127.0.0.162 speil.test\n127.0.0.164 speil.test\n",
    )
    .unwrap();
    let mut cfg = config(163, port);
    // 127.0.0.164 has no node: one dead address among the lowest three must not matter.
    cfg.bootstrap = Some(Arc::new(
        DnsBootstrap::new("speil.test", port, Arc::new(hosts)).excluding(&[ip(163)]),
    ));
    let (node, _) = start(&rt, cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(15), || node.is_ready()).await);
    let ids: Vec<_> = node.peers().into_iter().map(|p| p.peer).collect();
    assert!(
        wait_until(&rt, Duration::from_secs(10), || {
            let ids: Vec<_> = node.peers().into_iter().map(|p| p.peer).collect();
            ids.contains(&a.local_peer_id()) && ids.contains(&b.local_peer_id())
        })
        .await,
        "{ids:?}"
    );
    // An unknown name is an error the driver logs and retries; the node is simply not ready.
    let mut lonely = config(165, 0);
    lonely.bootstrap = Some(Arc::new(DnsBootstrap::new(
        "nowhere.test",
        port,
        Arc::new(HostsResolver::new()),
    )));
    let (lonely, _) = start(&rt, lonely).await;
    rt.sleep(Duration::from_millis(500)).await;
    assert!(!lonely.is_ready());
    for node in [&a, &b, &node, &lonely] {
        node.shutdown();
    }
}

/// `http` bootstrap: one node serves `/id`, a new node fetches it (by IP and by name).
async fn http_bootstrap_joins<R: Runtime>(rt: R) {
    let (seed, _) = start(&rt, config(171, 0)).await;
    let (id_addr, server) = speil_p2p::serve_id(
        rt.clone(),
        SocketAddr::new(ip(171), 0),
        seed.clone(),
        ID_EXCHANGE_TIMEOUT,
    )
    .unwrap();

    // The served document names the seed and its advertised (loopback, as listened) address.
    let resolver = Arc::new(SystemResolver::new(rt.clone()));
    let fetch = HttpBootstrap::new(
        &format!("http://{id_addr}/id"),
        resolver.clone(),
        speil_p2p::connector(rt.clone()),
    )
    .unwrap();
    let peers = speil_p2p::Bootstrap::peers(&fetch).await.unwrap();
    assert_eq!(
        peers,
        vec![speil_p2p::BootstrapPeer::Known {
            peer: seed.local_peer_id(),
            addrs: seed.advertised_addrs(),
        }]
    );

    let mut hosts = HostsResolver::new();
    hosts.insert("seed.test", ip(171));
    let mut cfg = config(172, 0);
    cfg.bootstrap = Some(Arc::new(
        HttpBootstrap::new(
            &format!("http://seed.test:{}/id", id_addr.port()),
            Arc::new(hosts),
            speil_p2p::connector(rt.clone()),
        )
        .unwrap(),
    ));
    let (node, _) = start(&rt, cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(15), || node.is_ready()).await);
    assert!(node.peers().iter().any(|p| p.peer == seed.local_peer_id()));

    // Other paths are 404s, which the fetcher reports as an error.
    let wrong = HttpBootstrap::new(
        &format!("http://{id_addr}/nope"),
        resolver,
        speil_p2p::connector(rt.clone()),
    )
    .unwrap();
    assert!(speil_p2p::Bootstrap::peers(&wrong).await.is_err());
    server.abort();
    node.shutdown();
    seed.shutdown();
}

/// A port free on every given 127.0.0.x (checked by binding).
fn free_port(lasts: &[u8]) -> u16 {
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind((ip(lasts[0]), 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if lasts
            .iter()
            .all(|l| std::net::TcpListener::bind((ip(*l), port)).is_ok())
        {
            return port;
        }
    }
    panic!("no free port");
}

/// When every peer is gone the routing table empties and the node is no longer ready; it
/// bootstraps again and is ready once its bootstrap peer is back.
async fn routing_table_empties_and_refills<R: Runtime>(rt: R) {
    let port = free_port(&[191]);
    let seed_cfg = config(191, port);
    let seed_id = seed_cfg.keypair.public().to_peer_id();
    let (seed, seed_addr) = start(&rt, seed_cfg.clone()).await;
    let mut cfg = config(192, 0);
    cfg.bootstrap = Some(static_to(&seed, &seed_addr));
    let (node, _) = start(&rt, cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(15), || node.is_ready()).await);

    seed.shutdown();
    assert!(
        wait_until(&rt, Duration::from_secs(10), || !node.is_ready()).await,
        "routing table still holds {} peers",
        node.routing_table_size()
    );
    assert_eq!(node.connected_peers(), 0);

    // The seed comes back with the same identity and address.
    let (seed, _) = start(&rt, seed_cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(15), || node.is_ready()).await);
    assert!(node.peers().iter().any(|p| p.peer == seed_id));
    node.shutdown();
    seed.shutdown();
}

/// A bootstrap source naming only this node (one-node cluster) makes it ready, as in Spegel;
/// a second node then joins it.
async fn lone_node_is_ready<R: Runtime>(rt: R) {
    // http: the node's own /id.
    let id_port = free_port(&[201]);
    let mut cfg = config(201, 0);
    cfg.bootstrap = Some(Arc::new(
        HttpBootstrap::new(
            &format!("http://127.0.0.201:{id_port}/id"),
            Arc::new(HostsResolver::new()),
            speil_p2p::connector(rt.clone()),
        )
        .unwrap(),
    ));
    let (first, first_addr) = start(&rt, cfg).await;
    let (_, server) = speil_p2p::serve_id(
        rt.clone(),
        SocketAddr::new(ip(201), id_port),
        first.clone(),
        ID_EXCHANGE_TIMEOUT,
    )
    .unwrap();
    assert!(wait_until(&rt, Duration::from_secs(10), || first.is_ready()).await);
    assert_eq!(first.routing_table_size(), 0);

    // dns: a name resolving to this node only.
    let port = free_port(&[202]);
    let mut hosts = HostsResolver::new();
    hosts.insert("one.test", ip(202));
    let mut cfg = config(202, port);
    cfg.bootstrap = Some(Arc::new(
        DnsBootstrap::new("one.test", port, Arc::new(hosts)).excluding(&[ip(202)]),
    ));
    let (lone, _) = start(&rt, cfg).await;
    assert!(wait_until(&rt, Duration::from_secs(10), || lone.is_ready()).await);

    // A name resolving to nobody is not "alone".
    let mut cfg = config(203, 0);
    cfg.bootstrap = Some(Arc::new(DnsBootstrap::new(
        "none.test",
        port,
        Arc::new(HostsResolver::new()),
    )));
    let (nobody, _) = start(&rt, cfg).await;
    rt.sleep(Duration::from_millis(500)).await;
    assert!(!nobody.is_ready());

    // A second node joins the first; both have a routing table entry then.
    let mut cfg = config(204, 0);
    cfg.bootstrap = Some(static_to(&first, &first_addr));
    let (second, _) = start(&rt, cfg).await;
    assert!(
        wait_until(&rt, Duration::from_secs(10), || second.routing_table_size()
            > 0)
        .await
    );
    assert!(
        wait_until(&rt, Duration::from_secs(10), || first.routing_table_size()
            > 0)
        .await
    );
    server.abort();
    for node in [&first, &lone, &nobody, &second] {
        node.shutdown();
    }
}
