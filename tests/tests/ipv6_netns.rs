//! IPv6-only and dual-stack clusters in network namespaces the test creates (DESIGN.md §4):
//! every speil on Spegel's default `:PORT` addresses, containerd 2.3.4 on every node (it reads
//! `[host.'http://[…]:p']` tables), the upstream registry named `registry.test` through the
//! namespaces' hosts files. One node pulls through the CRI, the upstream is stopped, the other
//! nodes pull the same images from their peers. Needs root; skipped loudly without the tools
//! (failed with `CI=true`).

use std::time::Duration;

use anyhow::{Context, Result};
use speil_tests::cluster::{source_of, wait_findable};
use speil_tests::netns::{Join, NsCluster, Stack, require_netns};
use speil_tests::{Generation, Speil, images};

/// `spegel_mirror_requests_total{cache="hit"}` summed over registries.
fn hits(s: &Speil) -> Result<f64> {
    Ok(s.metrics()?
        .lines()
        .filter(|l| l.starts_with("spegel_mirror_requests_total{") && l.contains("cache=\"hit\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The addresses node `i`'s debug page lists for its peers (multiaddrs, one string per peer).
fn peer_addrs(c: &NsCluster, i: usize) -> Result<String> {
    let state = c.debug_state(i)?;
    let peers = state["peers"]
        .as_array()
        .context("no peers in the debug state")?;
    Ok(peers
        .iter()
        .filter_map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join("\n"))
}

async fn pulls_from_peers_with_the_upstream_stopped(c: &mut NsCluster) -> Result<()> {
    let reg = c.registry_host();
    let small = images::small()?;
    let multi = images::multi()?;
    for image in [small, multi] {
        c.registry.push(image)?;
    }
    for image in [small, multi] {
        c.nodes[0].cri_pull(&image.reference(&reg)).await?;
    }
    for image in [small, multi] {
        wait_findable(&c.speils[1], image, &reg, Duration::from_secs(15))?;
    }
    c.registry.stop();
    for image in [small, multi] {
        c.nodes[1]
            .cri_pull(&image.reference(&reg))
            .await
            .with_context(|| c.speils[1].log_tail())?;
        c.nodes[2]
            .cri_pull(&image.digest_reference(&reg))
            .await
            .with_context(|| c.speils[2].log_tail())?;
    }
    for i in 1..c.speils.len() {
        assert!(hits(&c.speils[i])? > 0.0, "node {i} mirrored nothing");
        for layer in &small.host_platform()?.layers {
            let source = source_of(&c.speils[i], layer.as_str());
            assert!(
                source.starts_with("peer "),
                "node {i}: {layer} came from {source}"
            );
        }
    }
    Ok(())
}

/// Three IPv6-only nodes joined over the http bootstrap (URL with node 0's IPv6 address
/// unbracketed), mirror targets unbracketed IPv6 as the chart renders them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_cluster_pulls_from_peers() -> Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let mut c = NsCluster::start("a", Stack::Ipv6Only, Join::Http, 3, Generation::V2_3)?;
    // `:5001` listened on IPv6 and advertised the node's global address only (no loopback,
    // no link-local, no IPv4: the network has none).
    for i in 0..3 {
        let peers = peer_addrs(&c, i)?;
        assert!(peers.contains("/ip6/2001:db8::"), "node {i}: {peers}");
        assert!(!peers.contains("/ip6/fe80"), "node {i}: {peers}");
        assert!(!peers.contains("/ip6/::1/"), "node {i}: {peers}");
        assert!(!peers.contains("/ip4/"), "node {i}: {peers}");
    }
    pulls_from_peers_with_the_upstream_stopped(&mut c).await?;
    // The peer a blob came from is logged as a bracketed IPv6 registry address.
    let layer = images::small()?.host_platform()?.layers[0].clone();
    let source = source_of(&c.speils[1], layer.as_str());
    assert!(
        source.starts_with("peer [2001:db8::") && source.ends_with("]:5000"),
        "{source}"
    );
    Ok(())
}

/// Three dual-stack nodes joined over the dns bootstrap (a name with A and AAAA records of
/// every node), IPv4 mirror targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_cluster_pulls_from_peers() -> Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let mut c = NsCluster::start("b", Stack::Dual, Join::Dns, 3, Generation::V2_3)?;
    // `:5001` listened on both families: every peer is known by its IPv4 and its IPv6 address.
    for i in 0..3 {
        let peers = peer_addrs(&c, i)?;
        assert!(peers.contains("/ip4/10.0.0."), "node {i}: {peers}");
        assert!(peers.contains("/ip6/2001:db8::"), "node {i}: {peers}");
        assert!(!peers.contains("/ip4/127."), "node {i}: {peers}");
        assert!(!peers.contains("/ip6/fe80"), "node {i}: {peers}");
    }
    pulls_from_peers_with_the_upstream_stopped(&mut c).await?;
    Ok(())
}

/// Three IPv6-only nodes joined over the dns bootstrap: the name has AAAA records only, so
/// the peers dialled are IPv6 addresses from the system resolver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_cluster_joins_over_dns() -> Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let c = NsCluster::start("c", Stack::Ipv6Only, Join::Dns, 3, Generation::V2_3)?;
    for i in 0..3 {
        // Connections to the later nodes may still be under way: poll.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let peers = peer_addrs(&c, i)?;
            let known = peers.matches("/ip6/2001:db8::").count();
            if known == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {i} does not know both other nodes by IPv6: {peers}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
