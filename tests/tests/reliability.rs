//! Reliability on the real-component harness (real containerd, real `speil registry`, CRI
//! pulls): speil restarted under load, 1,000 concurrent requests on one node, and the start-up
//! races between speil and containerd. On both builds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use speil_core::Digest;
use speil_h1::Framing;
use speil_tests::cluster::{Cluster, ClusterKind, configure, wait_findable};
use speil_tests::rogue::Rogue;
use speil_tests::{Build, Generation, Harness, Ports, Speil, images};

/// `GET path` from `addr`, reading the body slowly (64 KiB every `pause`): `Ok` when the whole
/// body came and hashed to `digest`; an error when the connection ended before the body's
/// `Content-Length`, or when a complete body has the wrong bytes.
fn slow_get(addr: SocketAddr, path: &str, digest: &Digest, pause: Duration) -> Result<()> {
    ensure!(addr.ip().is_loopback());
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let parts = speil_tests::http::read_head(&mut s, &mut body)?;
    ensure!(parts.status == 200, "status {}", parts.status);
    let Framing::Length(length) = speil_h1::response_framing(&http::Method::GET, &parts)? else {
        bail!("a blob without Content-Length");
    };
    loop {
        if body.len() as u64 >= length {
            break;
        }
        std::thread::sleep(pause);
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => bail!("cut after {} of {length} bytes", body.len()),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    ensure!(body.len() as u64 == length, "more than Content-Length");
    ensure!(
        digest.verifies(&body),
        "a complete body with the wrong bytes"
    );
    Ok(())
}

/// The peer id a speil log names at start.
fn peer_id(s: &Speil) -> Result<String> {
    s.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["msg"] == "speil registry started")
        .and_then(|v| v["peer_id"].as_str().map(str::to_owned))
        .context("no peer id in the log")
}

/// SIGTERM while transfers run: they finish (the drain budget is 60 s), the listener closes at
/// once so new clients fall back, the process exits 0, and speil started again on the same
/// data dir rejoins with the same peer id.
async fn restarted_under_load(kind: ClusterKind) -> Result<()> {
    let mut c = Cluster::start_nodes(&kind.nodes(2))?;
    let reg = c.registry();
    let large = images::large()?;
    c.h.registry.push(large)?;
    c.h.nodes[0].cri_pull(&large.reference(&reg)).await?;
    wait_findable(&c.speils[1], large, &reg, Duration::from_secs(10))?;
    let before = peer_id(&c.speils[0])?;
    let layers = large.host_platform()?.layers.clone();
    let addr = c.speils[0].registry_addr();
    // Four slow clients of node 0's speil: each transfer takes a few seconds.
    let mut clients = Vec::new();
    for (i, layer) in layers.iter().cycle().take(4).enumerate() {
        let path = format!("/v2/{}/blobs/{layer}", large.name);
        let layer = layer.clone();
        clients.push(std::thread::spawn(move || {
            let pause = Duration::from_millis(2 + i as u64);
            slow_get(addr, &path, &layer, pause)
        }));
    }
    // Once the transfers are under way, SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.speils[0].metric("http_requests_inflight{handler=\"/v2/*\"}")? < 4.0 {
        ensure!(Instant::now() < deadline, "the transfers never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = c.speils[0].pid().context("speil pid")?.to_string();
    ensure!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    // New connections are refused while the old ones drain (containerd goes upstream).
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        ensure!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    for client in clients {
        client
            .join()
            .expect("client thread")
            .context("a transfer in flight at SIGTERM")?;
    }
    let code = c.speils[0].terminate(Duration::from_secs(30))?;
    assert_eq!(code, Some(0), "{}", c.speils[0].log_tail());

    // Started again, it rejoins under the same id and is found again.
    let ports = c.speils[0].ports;
    let node0 = c.h.nodes[0].address;
    c.speils[0] = Speil::start_build(kind.nodes(2)[0].1, &c.h.nodes[0], ports, node0, &[])?;
    c.speils[0].wait_ready(Duration::from_secs(20))?;
    assert_eq!(peer_id(&c.speils[0])?, before);
    // Ready may mean "bootstrapped alone" (node 0 bootstraps from itself): node 1 has to find
    // it again (its own re-bootstrap backs off while node 0 is down) before the upstream goes.
    wait_findable(&c.speils[1], large, &reg, Duration::from_secs(20))?;
    c.h.registry.stop();
    c.h.nodes[1]
        .cri_pull(&large.reference(&reg))
        .await
        .with_context(|| c.speils[1].log_tail())?;
    Ok(())
}

/// One response read whole: status and body.
async fn get(addr: SocketAddr, path: String) -> Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let (parts, body) = speil_tests::http::split_response(buf)?;
    Ok((parts.status.as_u16(), body))
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// 1,000 requests at once (manifests and blobs by digest) on one node: every one answered
/// 200 with the right bytes within the time bound, the resident memory stays bounded, and
/// afterwards the open files are back where they were.
async fn a_thousand_requests_at_once(kind: ClusterKind) -> Result<()> {
    speil_tests::raise_fd_limit(4096)?;
    let c = Cluster::start_nodes(&kind.nodes(1))?;
    let reg = c.registry();
    let image = images::small()?;
    c.h.registry.push(image)?;
    c.h.nodes[0].cri_pull(&image.reference(&reg)).await?;
    let s = &c.speils[0];
    let pid = s.pid().context("speil pid")?;
    let addr = s.registry_addr();
    let p = image.host_platform()?;
    let mut wanted: Vec<(String, Digest)> = vec![(
        format!("/v2/{}/manifests/{}", image.name, p.manifest),
        p.manifest.clone(),
    )];
    for d in std::iter::once(&p.config).chain(p.layers.iter()) {
        wanted.push((format!("/v2/{}/blobs/{d}", image.name), d.clone()));
    }
    // Warm up once, then count the open files at rest.
    for (path, _) in &wanted {
        ensure!(get(addr, path.clone()).await?.0 == 200);
    }
    let rest = fds(pid)?;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (path, digest) = wanted[i % wanted.len()].clone();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(60), get(addr, path)).await;
            (r, digest)
        }));
    }
    let mut peak_rss = 0;
    let mut failures = Vec::new();
    for task in tasks {
        let (r, digest) = task.await?;
        peak_rss = peak_rss.max(rss_kib(pid)?);
        match r {
            Ok(Ok((200, body))) if digest.verifies(&body) => {}
            Ok(Ok((status, body))) => failures.push(format!(
                "{digest}: {status} {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Ok(Err(e)) => failures.push(format!("{digest}: {e:#}")),
            Err(_) => failures.push(format!("{digest}: no answer within 60 s")),
        }
    }
    let took = t.elapsed();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        peak_rss < 128 * 1024,
        "resident memory reached {peak_rss} KiB"
    );
    // No descriptor leaks: once the clients are gone, the count comes back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fds(pid)?;
        if now <= rest + 2 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{now} files open after the load, {rest} before"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// speil started before containerd's socket exists waits for it (it does not exit) and comes
/// up by itself once containerd runs; containerd pulling while speil is not up falls back to
/// the upstream; speil started afterwards serves what containerd pulled.
async fn start_up_races(kind: ClusterKind) -> Result<()> {
    let (_, build) = kind.nodes(1)[0];
    let mut h = Harness::start_generations(&[Generation::V1_6])?;
    let reg = h.registry.host();
    let small = images::small()?;
    h.registry.push(small)?;
    let ports = Ports::for_block(h.block.index());
    let address = h.nodes[0].address;

    // containerd is down when speil starts.
    h.nodes[0].kill()?;
    let mut s = Speil::start_build(build, &h.nodes[0], ports, address, &[])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log_text().contains("waiting for it") {
        ensure!(
            Instant::now() < deadline,
            "no wait logged: {}",
            s.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        TcpStream::connect_timeout(&s.registry_addr(), Duration::from_millis(200)).is_err(),
        "the registry port is open before containerd answers"
    );
    h.nodes[0].restart()?;
    s.wait_serving(Duration::from_secs(15))
        .with_context(|| s.log_tail())?;
    assert!(
        s.log_text().contains("containerd answers"),
        "{}",
        s.log_tail()
    );
    configure(&h.nodes[0], &s, &reg)?;

    // speil goes away; containerd pulls meanwhile: it falls back to the upstream.
    assert_eq!(s.terminate(Duration::from_secs(10))?, Some(0));
    h.nodes[0]
        .cri_pull(&small.reference(&reg))
        .await
        .context("a pull while speil is down")?;

    // speil comes back and serves what containerd pulled meanwhile.
    let s = Speil::start_build(build, &h.nodes[0], ports, address, &[])?;
    let mut s = s;
    s.wait_serving(Duration::from_secs(15))?;
    let layer = &small.host_platform()?.layers[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = speil_tests::http::request(
            s.registry_addr(),
            "GET",
            &format!("/v2/{}/blobs/{layer}", small.name),
            &[],
        )?;
        if r.status == 200 {
            assert!(layer.verifies(&r.body));
            break;
        }
        ensure!(Instant::now() < deadline, "status {}", r.status);
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Records the flood announces: the store's bound (100,000 records of other peers), then half
/// as many again, which the node must refuse.
const FLOOD: u64 = 100_000;
const FLOOD_MORE: u64 = FLOOD / 2;
/// Rogue identities, and dials of each: a node admits 4 connections per peer and 1,024
/// incoming connections, so 260 identities dialling 5 times each go past both bounds.
const ROGUES: usize = 260;
const DIALS: usize = 5;
const MAX_INCOMING: usize = 1024;

/// Waits until the node's `speil_dht_records` is `want` (the gauge follows the store).
async fn records_reach(node: &Speil, want: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = node.metric("speil_dht_records")?;
        if records == want as f64 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{records} records held, {want} expected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A DHT member that is not one — rogue identities in the test process, on a cluster without
/// a pre-shared key — takes every incoming connection the node admits and floods it with
/// provider records: each identity holds at most 4 connections and all of them at most
/// 1,024; the store stops at its bound (100,000 records of other peers) and more records are
/// refused; the resident memory stays bounded; a pull during the flood succeeds; and with the
/// upstream gone, a pull through the node is served by the peer that holds the image (its
/// lookups still answer) while the rogue holds its connections.
async fn a_dht_flood(kind: ClusterKind) -> Result<()> {
    speil_tests::raise_fd_limit(8192)?;
    let mut c = Cluster::start_nodes(&kind.nodes(2))?;
    let reg = c.registry();
    let (small, multi) = (images::small()?, images::multi()?);
    for image in [small, multi] {
        c.h.registry.push(image)?;
        c.h.nodes[0].cri_pull(&image.reference(&reg)).await?;
        wait_findable(&c.speils[1], image, &reg, Duration::from_secs(10))?;
    }
    let node = &c.speils[1];
    let pid = node.pid().context("speil pid")?;
    let idle = rss_kib(pid)?;
    let router = SocketAddr::new(node.address, node.ports.router);
    let rogue = Rogue::connect(router, ROGUES, DIALS, Duration::from_secs(60)).await?;
    // Connections over the node's bounds are closed right after their handshake.
    let within_bounds =
        |held: &[usize]| held.iter().all(|&n| n <= 4) && held.iter().sum::<usize>() <= MAX_INCOMING;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !within_bounds(&rogue.connections()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = rogue.connections();
    ensure!(
        within_bounds(&held),
        "connections held per rogue identity: {held:?}"
    );
    let total: usize = held.iter().sum();
    ensure!(
        total > MAX_INCOMING - 16,
        "the rogue got only {total} connections"
    );
    let connected = rss_kib(pid)?;

    let t = Instant::now();
    rogue.publish(0..FLOOD).await?;
    let took = t.elapsed();
    records_reach(node, FLOOD).await?;
    let full = rss_kib(pid)?;

    // More records, refused, while containerd pulls an image through the node (upstream
    // reachable: wherever the node finds it in time, the pull succeeds).
    let reference = small.reference(&reg);
    let (more, pull) = tokio::join!(
        rogue.publish(FLOOD..FLOOD + FLOOD_MORE),
        c.h.nodes[1].cri_pull(&reference)
    );
    more?;
    pull.with_context(|| c.speils[1].log_tail())?;
    let node = &c.speils[1];
    records_reach(node, FLOOD).await?;
    let after = rss_kib(pid)?;
    eprintln!(
        "resident memory: {idle} KiB idle, {connected} KiB with {total} rogue connections, \
         {full} KiB after {FLOOD} records ({took:?}), {after} KiB after {FLOOD_MORE} refused"
    );
    ensure!(
        after < 256 * 1024,
        "resident memory reached {after} KiB ({idle} KiB idle)"
    );
    // 50,000 refused records are not 50,000 log lines.
    let refusals = node
        .log_text()
        .lines()
        .filter(|l| l.contains("not stored"))
        .count();
    ensure!(refusals == 0, "{refusals} log lines about refused records");

    // The upstream gone, the store full and every incoming slot taken: the node's lookups
    // still find the peer.
    c.h.registry.stop();
    c.h.nodes[1]
        .cri_pull(&multi.reference(&reg))
        .await
        .with_context(|| c.speils[1].log_tail())?;
    let node = &c.speils[1];
    for layer in &multi.host_platform()?.layers {
        let source = speil_tests::cluster::source_of(node, layer.as_str());
        ensure!(source.starts_with("peer "), "{layer} came from {source}");
    }
    let held = rogue.connections();
    ensure!(
        within_bounds(&held),
        "connections held per rogue identity: {held:?}"
    );
    drop(rogue);
    Ok(())
}

speil_tests::scenarios!(
    [
        tokio_build => ClusterKind::Uniform(Generation::V1_6, Build::Tokio),
        smol_build => ClusterKind::Uniform(Generation::V1_6, Build::Smol),
    ],
    [
        restarted_under_load,
        a_thousand_requests_at_once,
        start_up_races,
        a_dht_flood
    ]
);
